"""The narrow backend interface the engine drives, and its packed-transformers implementation.

A backend takes encoded sequences and returns one list of step scores per sequence.
`launch` returns before a GPU has finished, so the engine can prepare and enqueue the
next batch while this one runs; the returned `Pending` waits for the result. A
vLLM-backed scorer can sit behind the same `Scorer` protocol.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from service.config import MIN_SHARED_PREFIX
from service.prm.errors import DeviceOutOfMemory
from service.prm.formatting import EncodedItem
from service.prm.loading import LoadedPRM
from service.prm.packing import pack


@dataclass(frozen=True)
class ScoredBatch:
    scores: list[list[float]]  # per item, in input order
    computed_tokens: int  # tokens run through the model; fewer than requested when prefixes are shared


Pending = Callable[[], ScoredBatch]


class Scorer(Protocol):
    def launch(self, items: list[EncodedItem]) -> Pending: ...


class PackedScorer:
    """One padding-free packed forward per batch, shared prefixes computed once, one device-to-host copy."""

    def __init__(self, prm: LoadedPRM, min_shared_prefix: int = MIN_SHARED_PREFIX):
        self.prm = prm
        self.min_shared_prefix = min_shared_prefix

    def launch(self, items: list[EncodedItem]) -> Pending:
        batch = pack(items, self.min_shared_prefix).to(self.prm.device)
        try:
            probabilities = self.prm.model.step_scores(batch).to("cpu", non_blocking=True)
        except torch.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(str(error)) from error
        done = torch.cuda.Event() if probabilities.is_pinned() else None
        if done is not None:
            done.record()

        def result() -> ScoredBatch:
            if done is not None:
                done.synchronize()
            flat = probabilities.tolist()
            scores, start = [], 0
            for count in batch.separator_counts:
                scores.append(flat[start : start + count])
                start += count
            return ScoredBatch(scores, batch.computed_tokens)

        return result

    def score(self, items: list[EncodedItem]) -> ScoredBatch:
        return self.launch(items)()
