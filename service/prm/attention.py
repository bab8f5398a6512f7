"""The attention of packed batches, which the serving forward (service.prm.forward) calls in every layer.

Each segment of a PackedBatch attends causally to itself, after its shared prefix if it has one. On
CUDA one flash `varlen_attn` call covers all segments; elsewhere scaled-dot-product attention runs
per segment with the same semantics. In the last layer only the separators' queries matter (the head
reads nothing else); per segment they attend under a mask, each to the keys up to itself. Keys and
values the prefix cache keeps are written here, layer by layer, and kept prefixes are read here.
"""

import inspect

import torch
import torch.nn.functional as F

from service.prm.packing import PackedBatch, Segment


def packed_attention(
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    packed: PackedBatch,
    separators_only: bool = False,
) -> torch.Tensor:
    """Attention within each packed segment of layer `layer`; (1, heads, rows, d) in, (1, rows, heads, d) out.

    With `separators_only` (the last layer), `query` and the output hold the rows of `packed.query_rows`
    alone; keys and values are still every row's, and the cache still keeps them whole.
    """
    if query.is_cuda and _varlen_attn is not None:
        if packed.hits or packed.kept is not None:
            key, value = _with_cache(layer, key, value, packed)
        return _varlen(query, key, value, scaling, packed, separators_only)
    outputs = []
    for number, segment in enumerate(packed.segments):
        k, v, context = _segment_keys(layer, key, value, packed, segment)
        if not separators_only:
            q = query[:, :, segment.start : segment.end]
            if context:
                mask, causal = _context_mask(packed, number, segment, k.shape[2], query.device), False
            else:
                mask, causal = None, True
        else:
            first, end = packed.query_spans[number]
            if first == end:
                continue
            q = query[:, :, first:end]
            # Each separator sees the keys up to itself; none needs the segment's keys past the last one.
            limits = packed.query_rows[first:end] - segment.start + context
            keys = int(limits[-1]) + 1
            k, v = k[:, :, :keys], v[:, :, :keys]
            mask, causal = torch.arange(keys, device=query.device) <= limits[:, None], False
        outputs.append(
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=True)
        )
    return (torch.cat(outputs, dim=2) if outputs else query).transpose(1, 2)


def _segment_keys(
    layer: int, key: torch.Tensor, value: torch.Tensor, packed: PackedBatch, segment: Segment
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The keys and values `segment` attends to (its context's, then its own) and the context's length;
    when the cache keeps the segment's item, they are built straight into the cache's copy."""
    own = slice(segment.start, segment.end)
    kept = packed.kept[segment.keep] if segment.keep is not None else None
    if segment.context is None:
        k, v = key[:, :, own], value[:, :, own]
        if kept is not None:
            kept.keys[layer].copy_(k[0])
            kept.values[layer].copy_(v[0])
        return k, v, 0
    if segment.hit is None:  # a prefix shared in this batch, laid out in the row
        context_k, context_v = key[:, :, slice(*segment.context)], value[:, :, slice(*segment.context)]
    else:  # a prefix kept from an earlier batch
        hit = packed.hits[segment.hit]
        context_k, context_v = (t[layer][None, :, : hit.length] for t in (hit.entry.keys, hit.entry.values))
    k = torch.cat([context_k, key[:, :, own]], dim=2, out=None if kept is None else kept.keys[layer][None])
    v = torch.cat([context_v, value[:, :, own]], dim=2, out=None if kept is None else kept.values[layer][None])
    return k, v, context_k.shape[2]


def _context_mask(packed: PackedBatch, number: int, segment: Segment, keys: int, device) -> torch.Tensor:
    """Causal after the context, the same in every layer: made once per batch."""
    if number not in packed.masks:
        context = segment.context[1] - segment.context[0]
        ones = torch.ones(segment.end - segment.start, keys, dtype=torch.bool, device=device)
        packed.masks[number] = ones.tril(diagonal=context)
    return packed.masks[number]


def _with_cache(layer: int, key, value, packed: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """For the varlen kernel: keys and values with the kept prefixes appended past the row (where segments'
    contexts point), after copying this layer's keys and values of each item the cache keeps into its copy."""
    if packed.hits:
        key = torch.cat([key, *(hit.entry.keys[layer][None, :, : hit.length] for hit in packed.hits)], dim=2)
        value = torch.cat([value, *(hit.entry.values[layer][None, :, : hit.length] for hit in packed.hits)], dim=2)
    for segment in packed.segments:
        if segment.keep is not None:
            kept = packed.kept[segment.keep]
            spans = [*([segment.context] if segment.context else []), (segment.start, segment.end)]
            torch.cat([key[0, :, a:b] for a, b in spans], dim=1, out=kept.keys[layer])
            torch.cat([value[0, :, a:b] for a, b in spans], dim=1, out=kept.values[layer])
    return key, value


def _varlen(query, key, value, scaling: float, packed: PackedBatch, separators_only: bool = False) -> torch.Tensor:
    """One flash varlen call; with seqlen_k > seqlen_q its causal mask is bottom-right aligned,
    so a continuation sees its whole prefix. The kernel takes whole segments of queries, so with
    `separators_only` the other rows' queries are zeros, computed and dropped."""
    if separators_only:
        rows = (*query.shape[:2], packed.rows, query.shape[3])
        every = query.new_zeros(rows).index_copy_(2, packed.query_rows, query)
        return _varlen(every, key, value, scaling, packed).index_select(1, packed.query_rows)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (rows, heads, d), dense
    if packed.kv_index is not None:
        k, v = k.index_select(0, packed.kv_index), v.index_select(0, packed.kv_index)
    if not _VARLEN_GQA and k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    out = _varlen_attn(
        q,
        k,
        v,
        packed.cu_seqlens_q,
        packed.cu_seqlens_k,
        packed.max_length_q,
        packed.max_length_k,
        scale=scaling,
        **_VARLEN_OPTIONS,
    )
    return out.unsqueeze(0)


def _load_varlen() -> tuple[object | None, dict, bool]:
    """torch's flash varlen kernel (torch >= 2.10) and the keywords this version takes for causal and GQA."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}, False
    parameters = inspect.signature(varlen_attn).parameters
    options = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    gqa = "enable_gqa" in parameters
    if gqa:
        options["enable_gqa"] = True
    return varlen_attn, options, gqa


_varlen_attn, _VARLEN_OPTIONS, _VARLEN_GQA = _load_varlen()
