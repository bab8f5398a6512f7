"""Padding-free batches: many sequences concatenated into one row.

Linear layers see one dense row (no padding FLOPs); attention runs per sequence,
through `varlen_attn` on CUDA and scaled-dot-product attention per segment elsewhere.
Both give each sequence exactly the attention it would get alone.
"""

import inspect
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from service.prm.formatting import EncodedItem

ATTENTION_NAME = "prm_packed"


@dataclass(frozen=True)
class PackedBatch:
    """A packed row and where each sequence and separator sits in it."""

    input_ids: torch.Tensor  # (1, total_tokens)
    position_ids: torch.Tensor  # (1, total_tokens), restarting at 0 for every sequence
    bounds: list[tuple[int, int]]  # [start, end) of every sequence in the row
    cu_seqlens: torch.Tensor  # (n + 1,) int32 cumulative lengths, for varlen kernels
    max_length: int
    separator_index: torch.Tensor  # (total_separators,) positions in the row
    separator_counts: list[int]  # separators per sequence, in order

    def to(self, device: torch.device) -> "PackedBatch":
        """The tensors on `device`; copies from pinned memory overlap with compute."""
        return replace(
            self,
            **{
                name: getattr(self, name).to(device, non_blocking=True)
                for name in ("input_ids", "position_ids", "cu_seqlens", "separator_index")
            },
        )


def pack(items: list[EncodedItem]) -> PackedBatch:
    """Concatenate encoded items into one row (on the host; pinned when CUDA exists)."""
    ids: list[int] = []
    positions: list[int] = []
    separators: list[int] = []
    bounds: list[tuple[int, int]] = []
    for item in items:
        start = len(ids)
        ids.extend(item.input_ids)
        positions.extend(range(len(item)))
        separators.extend(start + p for p in item.separator_positions)
        bounds.append((start, len(ids)))
    cumulative = [0] + [end for _, end in bounds]
    pin = torch.cuda.is_available()
    return PackedBatch(
        input_ids=_tensor([ids], torch.long, pin),
        position_ids=_tensor([positions], torch.long, pin),
        bounds=bounds,
        cu_seqlens=_tensor(cumulative, torch.int32, pin),
        max_length=max(len(item) for item in items),
        separator_index=_tensor(separators, torch.long, pin),
        separator_counts=[len(item.separator_positions) for item in items],
    )


def _tensor(data: list, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    tensor = torch.tensor(data, dtype=dtype)
    return tensor.pin_memory() if pin else tensor


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    packed: PackedBatch | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence; (1, heads, T, d) in, (1, T, heads, d) out."""
    if packed is None:
        raise RuntimeError(f"the {ATTENTION_NAME} attention needs a PackedBatch passed as `packed=`")
    if query.is_cuda and _varlen_attn is not None:
        out = _varlen_attn(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            packed.cu_seqlens,
            packed.cu_seqlens,
            packed.max_length,
            packed.max_length,
            scale=scaling,
            enable_gqa=True,
            **_VARLEN_CAUSAL,
        )
        return out.unsqueeze(0), None
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
            enable_gqa=True,
        )
        for start, end in packed.bounds
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _load_varlen() -> tuple[object | None, dict]:
    """torch's flash varlen kernel, and how this torch version asks it to be causal."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    return varlen_attn, causal


_varlen_attn, _VARLEN_CAUSAL = _load_varlen()
AttentionInterface.register(ATTENTION_NAME, packed_attention)
