"""The serving forward against the one it replaced, on the same packed batches (no HTTP, no queue).

In one run, interleaved rounds over the same batches (ProcessBench items packed at the CPU budget):
  transformers   transformers' Qwen2 modules with the packed attention, the forward before
                 service.prm.forward (seven matmuls a layer, MKL's GEMM on CPU)
  fused+mkl      service.prm.forward with torch's default matmuls (F.linear: MKL on CPU)
  fused          service.prm.forward as it serves (oneDNN's matmuls on CPU, residual adds and the MLP's
                 gate fused into them)

Scores are checked against the first way before timing. Prints tokens/s (median over rounds) and each
way's ratio to `transformers` (median of per-round ratios).

    python loadtest/bench_forward.py
    python loadtest/bench_forward.py --data ../shared/data/processbench/math.json --rounds 9
    python loadtest/bench_forward.py --profile   # where the time goes (loadtest/profile_vllm.py: vLLM's)
"""

import argparse
import copy
import statistics
import time
from collections import deque

import torch
from common import add_items_arguments, encoded_items
from transformers import AttentionInterface

from service.config import batch_tokens
from service.engine.batching import take_batch
from service.prm import forward
from service.prm.attention import packed_attention
from service.prm.loading import load_prm
from service.prm.packing import PackedBatch, pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_items_arguments(parser, items=96)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--profile", action="store_true", help="then print torch.profiler's table of `fused`")
    args = parser.parse_args()

    prm = load_prm(str(args.model), device=args.device, dtype=args.dtype)
    queue = deque(encoded_items(prm, args))
    batches = []
    while queue:
        batches.append(pack(take_batch(queue, batch_tokens(None, prm.device.type))).to(prm.device))
    tokens = sum(batch.computed_tokens for batch in batches)

    with_mkl = copy.copy(prm.forward)
    with_mkl.matmuls = forward.TORCH
    ways = {"transformers": transformers_forward(prm.model), "fused+mkl": with_mkl, "fused": prm.forward}
    reference = [ways["transformers"](batch) for batch in batches]
    print(f"{len(batches)} batches, {tokens} tokens, {prm.device} {prm.dtype}, torch threads {torch.get_num_threads()}")
    for name, run in ways.items():
        diff = max((run(batch) - want).abs().max().item() for batch, want in zip(batches, reference, strict=True))
        print(f"{name:14s} max |diff| from transformers {diff:.1e}")

    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, run in ways.items():
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            if prm.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
    print(f"\n{'way':14s} {'tokens/s':>10s} {'vs transformers':>16s}")
    for name, times in seconds.items():
        ratio = statistics.median(b / a for a, b in zip(times, seconds["transformers"], strict=True))
        print(f"{name:14s} {tokens / statistics.median(times):10.0f} {ratio:15.2f}x")
    if args.profile:
        from torch.profiler import profile

        with profile() as profiler:
            for batch in batches:
                prm.forward(batch)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def transformers_forward(model):
    """Step scores through transformers' own modules, the packed attention registered as their kernel."""

    def kernel(module, query, key, value, attention_mask, scaling, packed=None, **_):
        return packed_attention(module.layer_idx, query, key, value, scaling, packed), None

    AttentionInterface.register("prm_packed", kernel)
    model.set_attn_implementation("prm_packed")
    masks = {layer_type: None for layer_type in set(model.config.layer_types)}

    @torch.inference_mode()
    def run(batch: PackedBatch) -> torch.Tensor:
        hidden = model.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=masks,
            use_cache=False,
            packed=batch,
        ).last_hidden_state[0]
        return torch.softmax(model.score(hidden.index_select(0, batch.separator_index).float()), dim=-1)[:, 1]

    return run


if __name__ == "__main__":
    main()
