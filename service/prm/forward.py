"""The serving forward: the Qwen2 decoder over one packed row, with each layer's matmuls fused.

transformers' modules are where the weights live (loading, training and the model card's padded
forward use them); serving runs this instead, over the same tensors. Per layer it makes three matmuls
where transformers makes seven: q, k and v are one weight, and gate and up another. The fused weights
are the only copy: the modules' own parameters become views into them, so memory does not grow.

On CPU the matmuls go to oneDNN, as in vLLM's CPU build and in what torch's compiler emits for CPU
linears: on this project's AMD machines MKL's fp32 GEMM, which `F.linear` calls, runs 15-25% below
oneDNN's rate at these shapes (loadtest/bench_forward.py times the whole forward both ways). The rest
is torch's: its fused RMSNorm, the model's own rotary module, and service.prm.attention.
"""

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
        self.layers = [_FusedLayer(layer) for layer in self.backbone.layers]
        self.linear = _onednn_linear if _use_onednn(model) else F.linear

    @torch.inference_mode()
    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        backbone, rows = self.backbone, batch.computed_tokens
        x = backbone.embed_tokens(batch.input_ids[0])
        cos, sin = (t[0, :, None] for t in backbone.rotary_emb(x, batch.position_ids))  # (rows, 1, head_dim)
        for number, layer in enumerate(self.layers):
            qkv = self.linear(_rms_norm(x, layer.attention_norm), layer.qkv_weight, layer.qkv_bias)
            qkv = qkv.view(rows, self.heads + 2 * self.kv_heads, self.head_dim)
            rotated = _rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)  # queries and keys at once
            query, key = rotated[:, : self.heads], rotated[:, self.heads :]
            value = qkv[:, self.heads + self.kv_heads :]
            heads = (t.transpose(0, 1)[None] for t in (query, key, value))  # (1, heads, rows, head_dim)
            attended = packed_attention(number, *heads, layer.scaling, batch).reshape(rows, -1)
            x = x + self.linear(attended, layer.o_weight, None)
            gate, up = self.linear(_rms_norm(x, layer.mlp_norm), layer.gate_up_weight, None).chunk(2, dim=-1)
            x = x + self.linear(F.silu(gate) * up, layer.down_weight, None)
        hidden = _rms_norm(x.index_select(0, batch.separator_index), backbone.norm)
        return torch.softmax(self.head(hidden.float()), dim=-1)[:, 1]


class _FusedLayer:
    """One decoder layer's weights, q/k/v and gate/up each concatenated; the module keeps views of them."""

    def __init__(self, layer: nn.Module):
        attention, mlp = layer.self_attn, layer.mlp
        self.attention_norm, self.mlp_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.scaling = attention.scaling
        self.qkv_weight = _fuse(attention.q_proj, attention.k_proj, attention.v_proj, name="weight")
        self.qkv_bias = _fuse(attention.q_proj, attention.k_proj, attention.v_proj, name="bias")
        self.gate_up_weight = _fuse(mlp.gate_proj, mlp.up_proj, name="weight")
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


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers' Qwen2 applies it (rotate_half), to (rows, heads, head_dim)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _use_onednn(model: nn.Module) -> bool:
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and parameter.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
