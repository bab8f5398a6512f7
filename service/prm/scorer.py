"""The narrow backend interface the engine drives, and its packed-transformers implementation.

A backend takes encoded sequences and returns one list of step scores per sequence.
`launch` returns before a GPU has finished, so the engine can prepare and enqueue the
next batch while this one runs; the returned `Pending` waits for the result. A scorer
whose `launch` computes the whole batch (on CPU) says so with `overlaps` False, and the
engine then answers its batch at once instead of after the next one. A vLLM-backed
scorer can sit behind the same `Scorer` protocol.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from service.config import MIN_SHARED_PREFIX
from service.prm.errors import DeviceOutOfMemory
from service.prm.formatting import EncodedItem
from service.prm.loading import LoadedPRM
from service.prm.packing import PackedBatch, pack
from service.prm.prefix_cache import KeptBuffers, PrefixCache


@dataclass(frozen=True)
class ScoredBatch:
    scores: list[list[float]]  # per item, in input order
    computed_tokens: int  # tokens run through the model; fewer than requested when prefixes are shared
    cached_tokens: int = 0  # tokens whose keys and values came from the prefix cache


Pending = Callable[[], ScoredBatch]


class Scorer(Protocol):
    overlaps: bool  # launch returns before the batch is computed, so the next one can be launched meanwhile

    def launch(self, items: list[EncodedItem]) -> Pending: ...


class PackedScorer:
    """One padding-free packed forward per batch, shared prefixes computed once, one device-to-host copy.

    With a `cache`, prefixes kept from earlier batches are not computed again (service.prm.prefix_cache).
    """

    def __init__(self, prm: LoadedPRM, min_shared_prefix: int = MIN_SHARED_PREFIX, cache: PrefixCache | None = None):
        self.prm = prm
        self.min_shared_prefix = min_shared_prefix
        self.cache = cache
        self.overlaps = prm.device.type == "cuda"  # a CPU forward is done when launch returns

    def launch(self, items: list[EncodedItem]) -> Pending:
        cache, hits, keep, lengths, used = self.cache, None, None, [], []
        if cache is not None:
            with cache.lock:  # another engine worker's insert must not evict a hit before it is pinned
                hits = [cache.lookup(item.input_ids) for item in items]
                used = [hit for hit in hits if hit is not None]
                cache.pin(used)  # never evicted while this batch reads them
            lengths = [
                cache.keep_length(item.input_ids, item.separator_positions, hit)
                for item, hit in zip(items, hits, strict=True)
            ]
            keep = [length > 0 for length in lengths]
        try:
            bucket = self.prm.forward.matmuls.bucket
            batch = pack(items, self.min_shared_prefix, hits, keep, bucket).to(self.prm.device)
            for index in (index for index, kept in enumerate(keep or []) if kept):
                batch.kept[index] = self._buffers(len(items[index]))
            probabilities = self.prm.forward(batch).to("cpu", non_blocking=True)
        except torch.OutOfMemoryError as error:
            if cache is not None:  # the cache yields its memory before a request fails
                cache.unpin(used)
                cache.clear()
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(str(error)) from error
        except BaseException:
            if cache is not None:
                cache.unpin(used)
            raise
        done = torch.cuda.Event() if probabilities.is_pinned() else None
        if done is not None:
            done.record()

        def result() -> ScoredBatch:
            if done is not None:
                done.synchronize()
            flat = probabilities.tolist()
            scores, start = [], 0
            for cached, count in zip(batch.cached_scores, batch.separator_counts, strict=True):
                scores.append(cached + flat[start : start + count])
                start += count
            if cache is not None:
                cache.unpin(used)  # what this batch read is copied into what it keeps: it may go now
                _keep(cache, items, lengths, batch, scores)
                cache.record(hit_tokens=batch.cached_tokens, miss_tokens=batch.requested_tokens - batch.cached_tokens)
            return ScoredBatch(scores, batch.computed_tokens, batch.cached_tokens)

        return result

    def _buffers(self, tokens: int) -> KeptBuffers:
        forward = self.prm.forward
        shape = (forward.kv_heads, tokens, forward.head_dim)
        return self.cache.buffers(len(forward.layers), shape, self.prm.dtype, self.prm.device)

    def score(self, items: list[EncodedItem]) -> ScoredBatch:
        return self.launch(items)()


def _keep(cache: PrefixCache, items: list[EncodedItem], lengths: list[int], batch: PackedBatch, scores) -> None:
    """Into the cache: each kept item's first `lengths` tokens, with its keys and values (the whole item's)."""
    for index, kept in (batch.kept or {}).items():
        item, length = items[index], lengths[index]
        separators = {p: score for p, score in zip(item.separator_positions, scores[index], strict=True) if p < length}
        cache.insert(item.input_ids[:length], kept, separators)
