"""The serving forward: the Qwen2 decoder over one packed row, with each layer's matmuls fused.

transformers' modules are where the weights live (loading, training and the model card's padded
forward use them); serving runs this instead, over the same tensors. Per layer it makes three matmuls
where transformers makes seven: q, k and v are one weight, and gate and up another. The fused weights
are the only copy: the modules' own parameters become views into them, so memory does not grow.
The last layer runs its queries, attention output and MLP at the separators' rows alone: the head reads
nothing else, and every other row contributes only its keys and values. The scores are the same.

On CPU the matmuls go to oneDNN, as in vLLM's CPU build and in what torch's compiler emits for CPU
linears: on this project's AMD machines MKL's fp32 GEMM, which `F.linear` calls, runs 15-25% below
oneDNN's rate at these shapes (loadtest/bench_forward.py times the whole forward both ways). The rest
is torch's: its fused RMSNorm and service.prm.attention. The rotary cosines and sines are the model's
own rotary module's, computed once for every position it can see and then looked up per token.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from service.prm.attention import packed_attention
from service.prm.packing import PackedBatch


class PackedForward:
    """Positive-class probability at every separator of a packed batch, in fp32."""

    def __init__(self, model: nn.Module):
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.backbone, self.head = model.model, model.score
        self.cos, self.sin = _rotary_tables(self.backbone, config.max_position_embeddings)
        self.layers = [_FusedLayer(layer) for layer in self.backbone.layers]
        self.matmuls = ONEDNN if _use_onednn(model) else TORCH

    @torch.inference_mode()
    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        x = self.backbone.embed_tokens(batch.input_ids[0])
        positions = batch.position_ids[0]
        cos, sin = (t.index_select(0, positions)[:, None] for t in (self.cos, self.sin))  # (rows, 1, head_dim)
        *layers, last = self.layers
        for number, layer in enumerate(layers):
            x = self._layer(number, layer, x, cos, sin, batch)
        x = self._last_layer(len(layers), last, x, cos, sin, batch)
        hidden = _rms_norm(x.index_select(0, batch.separator_query), self.backbone.norm)
        return torch.softmax(self.head(hidden.float()), dim=-1)[:, 1]

    @torch.inference_mode()
    def compile_kernels(self, max_rows: int) -> int:
        """Run each of a layer's matmuls once at every row bucket up to `max_rows`; returns how many buckets.

        oneDNN compiles a kernel per shape and keeps it, keyed by the calling thread's thread count too, so
        each engine worker calls this before it takes work: no batch then waits for a compile, and the
        memory the kernels hold is there from the start instead of growing under the first traffic.
        """
        bucket = self.matmuls.bucket
        if bucket is None:
            return 0
        layer, matmuls = self.layers[0], self.matmuls
        hidden = layer.o_weight.shape[0]
        buckets = sorted({bucket(rows) for rows in range(1, max_rows + 1)})
        for rows in buckets:
            x = layer.o_weight.new_zeros(rows, hidden)
            for weight, bias in ((layer.qkv_weight, layer.qkv_bias), (layer.kv_weight, layer.kv_bias)):
                matmuls.linear(x, weight, bias)
            matmuls.linear(x, layer.q_weight, layer.q_bias)
            matmuls.linear_add(x.new_zeros(rows, self.heads * self.head_dim), layer.o_weight, x)
            matmuls.linear_add(matmuls.gated(x, layer), layer.down_weight, x)
        return len(buckets)

    def _layer(self, number: int, layer: "_FusedLayer", x, cos, sin, batch: PackedBatch) -> torch.Tensor:
        rows = batch.rows
        qkv = self.matmuls.linear(_rms_norm(x, layer.attention_norm), layer.qkv_weight, layer.qkv_bias)
        qkv = qkv.view(rows, self.heads + 2 * self.kv_heads, self.head_dim)
        rotated = _rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)  # queries and keys at once
        query, key = rotated[:, : self.heads], rotated[:, self.heads :]
        value = qkv[:, self.heads + self.kv_heads :]
        heads = (t.transpose(0, 1)[None] for t in (query, key, value))  # (1, heads, rows, head_dim)
        attended = packed_attention(number, *heads, layer.scaling, batch).reshape(rows, -1)
        return self._mlp(layer, self.matmuls.linear_add(attended, layer.o_weight, x))

    def _last_layer(self, number: int, layer: "_FusedLayer", x, cos, sin, batch: PackedBatch) -> torch.Tensor:
        """The layer at the separators' rows only: every row's keys and values, but queries, attention
        output and MLP where the head reads them. On the test bed's 4-layer shape, a fifth of the FLOPs."""
        rows, selected = batch.rows, batch.query_rows
        normed = _rms_norm(x, layer.attention_norm)
        kv = self.matmuls.linear(normed, layer.kv_weight, layer.kv_bias).view(rows, 2 * self.kv_heads, self.head_dim)
        key, value = _rotate(kv[:, : self.kv_heads], cos, sin), kv[:, self.kv_heads :]
        query = self.matmuls.linear(normed.index_select(0, selected), layer.q_weight, layer.q_bias)
        query = _rotate(query.view(-1, self.heads, self.head_dim), cos[selected], sin[selected])
        heads = (t.transpose(0, 1)[None] for t in (query, key, value))
        attended = packed_attention(number, *heads, layer.scaling, batch, separators_only=True)
        attended = attended.reshape(selected.shape[0], self.heads * self.head_dim)
        return self._mlp(layer, self.matmuls.linear_add(attended, layer.o_weight, x.index_select(0, selected)))

    def _mlp(self, layer: "_FusedLayer", x: torch.Tensor) -> torch.Tensor:
        gated = self.matmuls.gated(_rms_norm(x, layer.mlp_norm), layer)
        return self.matmuls.linear_add(gated, layer.down_weight, x)


class _FusedLayer:
    """One decoder layer's weights, q/k/v and gate/up each concatenated; the module keeps views of them."""

    def __init__(self, layer: nn.Module):
        attention, mlp = layer.self_attn, layer.mlp
        self.attention_norm, self.mlp_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.scaling = attention.scaling
        self.qkv_weight = _fuse(attention.q_proj, attention.k_proj, attention.v_proj, name="weight")
        self.qkv_bias = _fuse(attention.q_proj, attention.k_proj, attention.v_proj, name="bias")
        self.gate_up_weight = _fuse(mlp.gate_proj, mlp.up_proj, name="weight")
        self.gate_weight, self.up_weight = self.gate_up_weight.chunk(2)  # views, for oneDNN's fused MLP
        queries = attention.q_proj.weight.shape[0]  # the last layer's queries and keys/values apart: views
        self.q_weight, self.kv_weight = self.qkv_weight[:queries], self.qkv_weight[queries:]
        self.q_bias, self.kv_bias = (
            (None, None) if self.qkv_bias is None else (self.qkv_bias[:queries], self.qkv_bias[queries:])
        )
        self.o_weight, self.down_weight = attention.o_proj.weight, mlp.down_proj.weight


def _fuse(*linears: nn.Linear, name: str) -> torch.Tensor | None:
    """One tensor of the linears' `name` parameters, stacked by output; each linear then holds a view of it."""
    parts = [getattr(linear, name) for linear in linears]
    if any(part is None for part in parts):  # no biases
        return None
    fused = torch.cat([part.detach() for part in parts])
    start = 0
    for linear, part in zip(linears, parts, strict=True):
        view = fused[start : start + part.shape[0]]
        setattr(linear, name, nn.Parameter(view, requires_grad=False))
        start += part.shape[0]
    return fused


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _rotary_tables(backbone: nn.Module, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, head_dim) cosines, and sines with rotate_half's sign folded into their first half.

    The rotary module's values are elementwise in the position, so a table of them is exact; inputs are
    never longer than `max_position_embeddings` (service.prm.formatting refuses them), so none grows it.
    """
    anchor = next(backbone.parameters())
    position_ids = torch.arange(positions, device=anchor.device)[None]
    with torch.inference_mode():
        cos, sin = (t[0] for t in backbone.rotary_emb(anchor, position_ids))
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' Qwen2 applies it, to (rows, heads, head_dim): x * cos +
    rotate_half(x) * sin, where rotate_half(x) * sin is the halves swapped times the signed sines, bit for bit."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


@dataclass(frozen=True)
class Matmuls:
    """The forward's matmuls: `linear`, `linear_add` (plus a residual) and `gated` (the MLP's silu(x W_gate)
    * (x W_up)). oneDNN fuses the residual add and the gate into its GEMMs as post-ops.

    `bucket`: the row counts to run them at (service.prm.packing pads batches to it), or None for any.
    oneDNN compiles and keeps a kernel for every row count it meets: without buckets that cost about
    0.3 ms per matmul at each new count and a server's memory grew without bound (+2.4 GiB over 1,200
    batches of ProcessBench items, against +16 MiB for torch's F.linear).
    """

    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    linear_add: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    gated: Callable[[torch.Tensor, _FusedLayer], torch.Tensor]
    bucket: Callable[[int], int] | None = None


def _torch_gated(x: torch.Tensor, layer: _FusedLayer) -> torch.Tensor:
    gate, up = F.linear(x, layer.gate_up_weight).chunk(2, dim=-1)
    return F.silu(gate) * up


TORCH = Matmuls(
    linear=F.linear,
    linear_add=lambda x, weight, residual: residual + F.linear(x, weight),
    gated=_torch_gated,
)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post_op: str = "none") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], "")


def _geometric_bucket(rows: int) -> int:
    """`rows` rounded up to a multiple of 16, or of 1/16 to 1/8 of itself when larger: at most 12.5% more
    rows (about 3% at the CPU budget's 2,048), 8 buckets per doubling, about 60 up to 8,192 rows."""
    step = max(16, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


ONEDNN = Matmuls(
    linear=_onednn,
    linear_add=lambda x, weight, residual: torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add"),
    gated=lambda x, layer: torch.ops.mkldnn._linear_pointwise.binary(
        x, _onednn(x, layer.gate_weight, None, "swish"), layer.up_weight, None, "mul"
    ),
    bucket=_geometric_bucket,
)


def _use_onednn(model: nn.Module) -> bool:
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and (parameter.dtype == torch.float32 or (parameter.dtype == torch.bfloat16 and _onednn_bf16()))
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn._linear_pointwise, "binary")
    )


def _onednn_bf16() -> bool:
    """oneDNN's bf16 GEMM needs AVX-512 (BF16 or AVX512BW): without it, as on AVX2-only AMD machines, it
    cannot create the primitive at all, and F.linear's own bf16 path serves instead."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
