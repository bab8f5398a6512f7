"""The serving forward (service.prm.forward): fused weights without a second copy, and its matmul choice.

Its scores against the model card, across batch compositions and with shared prefixes, are checked in
test_scoring, test_packing and test_prefix_cache, which all run through it.
"""

import copy
import threading

import pytest
import torch

from service.prm import forward
from service.prm.loading import load_prm
from service.prm.packing import pack

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def batch(encoded):
    return pack(encoded)


def test_fused_weights_are_the_only_copy(prm, checkpoint):
    fresh = load_prm(str(checkpoint), device="cpu", dtype="float32").model
    served = dict(prm.model.named_parameters())
    assert served.keys() == dict(fresh.named_parameters()).keys()
    for layer, fused in zip(prm.model.model.layers, prm.forward.layers, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        groups = (
            (fused.qkv_weight, [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            (fused.qkv_bias, [attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]),
            (fused.gate_up_weight, [mlp.gate_proj.weight, mlp.up_proj.weight]),
        )
        for whole, parts in groups:
            assert all(part.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr() for part in parts)
            assert torch.equal(torch.cat(list(parts)), whole)
    for name, parameter in fresh.named_parameters():  # every module still holds exactly its own weights
        assert torch.equal(served[name], parameter), name


def test_the_model_card_forward_over_the_fused_weights_gives_the_served_scores(prm, batch, encoded):
    served = prm.forward(batch)
    expected = []
    with torch.inference_mode():
        for item in encoded:
            logits = prm.model(torch.tensor([item.input_ids])).logits[0, item.separator_positions]
            expected.append(torch.softmax(logits, dim=-1)[:, 1])
    assert torch.allclose(served, torch.cat(expected), atol=TOLERANCE)


def test_cpu_float32_matmuls_go_to_onednn_and_agree_with_torch_default(prm, batch):
    """oneDNN's GEMMs with the residual add and the MLP's gate fused in, against torch's F.linear."""
    assert prm.forward.matmuls is forward.ONEDNN
    with_default = copy.copy(prm.forward)
    with_default.matmuls = forward.TORCH
    assert torch.allclose(prm.forward(batch), with_default(batch), atol=TOLERANCE)


def test_onednn_row_buckets_are_few_and_pad_little():
    """oneDNN keeps a kernel per row count it meets: the buckets bound how many, padding fewer than 16 rows or
    an eighth."""
    bucket = forward.ONEDNN.bucket
    counts = range(1, 8193)
    assert all(n <= bucket(n) < n + max(16, n / 8) for n in counts)
    assert len({bucket(n) for n in counts}) <= 60
    assert forward.TORCH.bucket is None


def test_compiled_row_buckets_leave_traffic_no_kernel_to_compile(prm, encoded, capfd):
    """After compile_kernels (what each engine worker runs before it takes work), batches of any size up to
    the budget make oneDNN compile nothing; a row count outside the buckets still would (the control).

    oneDNN keys its kernels by the thread count too: 3 threads, which no other test uses, start it cold."""
    bucket = prm.forward.matmuls.bucket
    batches = [pack(encoded[:count], bucket=bucket) for count in range(1, len(encoded) + 1)]
    batches = [batch for batch in batches if batch.rows <= 2048]
    assert len({batch.rows for batch in batches}) >= 3
    logs, buckets = {}, []

    def in_a_worker():
        torch.set_num_threads(3)
        buckets.append(prm.forward.compile_kernels(2048))
        capfd.readouterr()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
            for batch in batches:
                prm.forward(batch)
            logs["compiled"] = capfd.readouterr().out
            prm.forward(pack(encoded[:1], bucket=lambda rows: 2048 + 3))  # 2051 rows: no bucket
            logs["control"] = capfd.readouterr().out

    worker = threading.Thread(target=in_a_worker)
    worker.start()
    worker.join()
    assert buckets == [len({bucket(n) for n in range(1, 2049)})]
    assert "create:cache_hit,cpu,inner_product" in logs["compiled"]
    assert "cache_miss,cpu,inner_product" not in logs["compiled"]
    assert "cache_miss,cpu,inner_product" in logs["control"]
