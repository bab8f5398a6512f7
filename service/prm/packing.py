"""Padding-free batches: many sequences concatenated into one row, shared prefixes computed once.

Linear layers see one dense row (no padding FLOPs, but for the few rows that round it up to
the matmuls' row bucket, when they ask for one). Attention runs per segment
(service.prm.attention): each sequence attends causally to its own tokens and, when it
continues a prefix that other sequences in the batch share (the same problem and system
prompt, a partial solution), to that prefix's keys and values, which are computed only
once. Every sequence gets exactly the attention it would get alone. Only the separators' rows
leave the last layer (the head reads nothing else), so the batch says which rows those are.
"""

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from service.config import MIN_SHARED_PREFIX
from service.prm.formatting import EncodedItem
from service.prm.prefix_cache import Hit, KeptBuffers

PADDING_TOKEN = 0  # any id in the vocabulary: padding rows attend only to themselves and nothing reads them


@dataclass(frozen=True)
class Segment:
    """Rows [start, end) attend causally to themselves, after all rows of `context` (a shared prefix)."""

    start: int
    end: int
    context: tuple[int, int] | None = None
    hit: int | None = None  # the context is this hit's kept prefix (PackedBatch.hits), past the row
    keep: int | None = None  # the segment ends the whole of this item, whose keys and values the cache keeps


@dataclass(frozen=True)
class PackedBatch:
    """A packed row, its segments, and where each item's separators sit in it."""

    input_ids: torch.Tensor  # (1, rows)
    position_ids: torch.Tensor  # (1, rows): a continuation's positions go on from its prefix
    segments: list[Segment]
    separator_index: torch.Tensor  # rows of every item's computed separators, items in input order
    separator_counts: list[int]  # computed separators per item, in input order
    # The last layer computes only the rows the head reads: `query_rows` (every separator once, ascending),
    # `query_spans[segment]` (the segment's range of them) and `separator_query` (separator_index's rows
    # as positions in query_rows).
    query_rows: torch.Tensor
    query_spans: list[tuple[int, int]]
    separator_query: torch.Tensor
    requested_tokens: int  # what the items would cost unshared
    # For varlen kernels: queries are the row, segment by segment; keys/values are the rows
    # `kv_index` gathers (each segment's context, then itself), or the row itself if None.
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_length_q: int
    max_length_k: int
    kv_index: torch.Tensor | None
    # Across requests (service.prm.prefix_cache): keys/values rows go on past the packed row with each
    # hit's kept prefix, in this order, so a segment's context may lie there; the step scores at separators
    # inside a hit come with it (`cached_scores`, before the item's computed ones).
    hits: list[Hit] = field(default_factory=list)
    cached_scores: list[list[float]] = field(default_factory=list)
    # Items the cache keeps: attention writes each one's whole keys and values, layer by layer, into
    # `kept[item]` (made by the scorer); None when nothing is kept. `masks`: per-segment masks it reuses.
    kept: dict[int, KeptBuffers] | None = None
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    padding: int = 0  # rows past the items' (a segment of their own, never read), see pack's `bucket`

    @property
    def rows(self) -> int:
        return self.input_ids.shape[1]

    @property
    def computed_tokens(self) -> int:
        return self.rows - self.padding

    @property
    def cached_tokens(self) -> int:
        return sum(hit.length for hit in self.hits)

    def to(self, device: torch.device) -> "PackedBatch":
        """The tensors on `device`; copies from pinned memory do not block the host."""
        names = (
            "input_ids",
            "position_ids",
            "separator_index",
            "query_rows",
            "separator_query",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "kv_index",
        )
        return replace(
            self,
            **{
                name: getattr(self, name).to(device, non_blocking=True)
                for name in names
                if getattr(self, name) is not None
            },
        )


def pack(
    items: list[EncodedItem],
    min_shared_prefix: int = MIN_SHARED_PREFIX,
    hits: list[Hit | None] | None = None,
    keep: list[bool] | None = None,
    bucket: Callable[[int], int] | None = None,
) -> PackedBatch:
    """Lay items out in one row, each shared prefix once (0 disables sharing).

    `hits[i]`: a kept prefix that item i continues, so only its tokens after it are laid out; `keep[i]`:
    whether the cache keeps item i (attention writes its whole keys and values into `kept[i]`).
    `bucket(n)`: how many rows to run instead of n, for matmuls that compile a kernel per row count
    (service.prm.forward): the row is padded with a segment of its own, and the last layer's queries
    by repeating the last one.
    """
    hits = hits or [None] * len(items)
    keep = keep or [False] * len(items)
    ids: list[int] = []
    positions: list[int] = []
    segments: list[Segment | tuple[int, int, int, int]] = []  # (start, end, hit, item) until the row is complete
    separator_rows: list[list[int]] = [[] for _ in items]

    def append(tokens: list[int], first_position: int, context=None, item: int | None = None) -> int:
        start = len(ids)
        ids.extend(tokens)
        positions.extend(range(first_position, first_position + len(tokens)))
        segments.append(Segment(start, len(ids), context, keep=item if item is not None and keep[item] else None))
        return start

    used = [(index, hit) for index, hit in enumerate(hits) if hit is not None]
    for number, (index, hit) in enumerate(used):
        item = items[index]
        start = len(ids)
        ids.extend(item.input_ids[hit.length :])
        positions.extend(range(hit.length, len(item)))
        segments.append((start, len(ids), number, index))
        separator_rows[index] = [start + p - hit.length for p in item.separator_positions if p >= hit.length]
    misses = [index for index, hit in enumerate(hits) if hit is None]
    for prefix_length, members in _prefix_groups([items[i] for i in misses], min_shared_prefix):
        members = [misses[member] for member in members]
        if len(members) == 1:
            item = items[members[0]]
            start = append(item.input_ids, 0, item=members[0])
            separator_rows[members[0]] = [start + p for p in item.separator_positions]
            continue
        prefix_start = append(items[members[0]].input_ids[:prefix_length], 0)
        context = (prefix_start, prefix_start + prefix_length)
        for index in members:
            item = items[index]
            start = append(item.input_ids[prefix_length:], prefix_length, context, item=index)
            separator_rows[index] = [
                prefix_start + p if p < prefix_length else start + p - prefix_length for p in item.separator_positions
            ]

    padding = bucket(len(ids)) - len(ids) if bucket else 0
    if padding:
        append([PADDING_TOKEN] * padding, 0)
    # Kept prefixes lie past the row: hit `number` at rows [extension[number], + its length).
    extension = _cumulative([hit.length for _, hit in used], start=len(ids))
    segments = [s if isinstance(s, Segment) else _continuing(*s, extension, used, keep) for s in segments]
    query_lengths = [s.end - s.start for s in segments]
    context_lengths = [s.context[1] - s.context[0] if s.context else 0 for s in segments]
    key_lengths = [q + c for q, c in zip(query_lengths, context_lengths, strict=True)]
    shared = any(context_lengths)
    kv_rows = [row for s in segments for row in (*_rows(s.context), *range(s.start, s.end))] if shared else None
    pin = torch.cuda.is_available()
    cached_scores = [
        [hit.entry.scores[p] for p in item.separator_positions if p < hit.length] if hit else []
        for item, hit in zip(items, hits, strict=True)
    ]
    separator_index = [row for rows in separator_rows for row in rows]
    query_rows = sorted(set(separator_index))  # members of a group share the separators in its prefix
    if bucket and query_rows:
        query_rows += query_rows[-1:] * (bucket(len(query_rows)) - len(query_rows))
    query_of = {row: number for number, row in enumerate(query_rows)}
    return PackedBatch(
        input_ids=_tensor([ids], torch.long, pin),
        position_ids=_tensor([positions], torch.long, pin),
        segments=segments,
        separator_index=_tensor(separator_index, torch.long, pin),
        separator_counts=[len(rows) for rows in separator_rows],
        query_rows=_tensor(query_rows, torch.long, pin),
        query_spans=[(bisect_left(query_rows, s.start), bisect_left(query_rows, s.end)) for s in segments],
        separator_query=_tensor([query_of[row] for row in separator_index], torch.long, pin),
        requested_tokens=sum(len(item) for item in items),
        cu_seqlens_q=_tensor(_cumulative(query_lengths), torch.int32, pin),
        cu_seqlens_k=_tensor(_cumulative(key_lengths), torch.int32, pin),
        max_length_q=max(query_lengths),
        max_length_k=max(key_lengths),
        kv_index=_tensor(kv_rows, torch.long, pin) if shared else None,
        hits=[hit for _, hit in used],
        cached_scores=cached_scores,
        kept={} if any(keep) else None,
        padding=padding,
    )


def _continuing(start: int, end: int, number: int, item: int, extension: list[int], used, keep) -> Segment:
    """The segment of an item that continues hit `number`, whose kept prefix lies past the row."""
    context = (extension[number], extension[number] + used[number][1].length)
    return Segment(start, end, context, hit=number, keep=item if keep[item] else None)


def _prefix_groups(items: list[EncodedItem], min_shared_prefix: int) -> list[tuple[int, list[int]]]:
    """Groups of item indices with the token prefix they share (every member keeps >= 1 own token).

    Sorting the token ids puts items with long common prefixes next to each other; a group
    takes the next item while the shared prefix stays >= `min_shared_prefix` and sharing
    with it saves at least as many tokens as the group saved before.
    """
    if not min_shared_prefix:
        return [(0, [index]) for index in range(len(items))]
    order = sorted(range(len(items)), key=lambda index: items[index].input_ids)
    groups: list[tuple[int, list[int]]] = []
    for index in order:
        tokens = items[index].input_ids
        if groups:
            length, members = groups[-1]
            head = items[members[0]].input_ids
            if len(members) == 1:
                length = len(head) - 1
            shared = min(length, len(tokens) - 1, _common_prefix(head, tokens))
            if shared >= min_shared_prefix and len(members) * shared >= (len(members) - 1) * length:
                groups[-1] = (shared, [*members, index])
                continue
        groups.append((0, [index]))
    return groups


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _rows(span: tuple[int, int] | None) -> range:
    return range(*span) if span else range(0)


def _cumulative(lengths: list[int], start: int = 0) -> list[int]:
    total, out = start, [start]
    for length in lengths:
        total += length
        out.append(total)
    return out


def _tensor(data: list, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    tensor = torch.tensor(data, dtype=dtype)
    return tensor.pin_memory() if pin else tensor
