"""The narrow backend interface the engine drives, and its packed-transformers implementation.

A backend takes encoded sequences and returns one list of step scores per sequence;
a vLLM-backed scorer can sit behind the same `Scorer` protocol.
"""

from dataclasses import dataclass
from typing import Protocol

from service.prm.formatting import EncodedItem
from service.prm.loading import LoadedPRM
from service.prm.packing import pack


@dataclass(frozen=True)
class ScoredBatch:
    scores: list[list[float]]  # per item, in input order
    computed_tokens: int  # tokens run through the model; fewer than requested when prefixes are shared


class Scorer(Protocol):
    def score(self, items: list[EncodedItem]) -> ScoredBatch: ...


class PackedScorer:
    """Scores a batch as one padding-free packed forward with shared prefixes; one device-to-host copy."""

    def __init__(self, prm: LoadedPRM):
        self.prm = prm

    def score(self, items: list[EncodedItem]) -> ScoredBatch:
        batch = pack(items).to(self.prm.device)
        flat = self.prm.model.step_scores(batch).cpu().tolist()
        scores, start = [], 0
        for count in batch.separator_counts:
            scores.append(flat[start : start + count])
            start += count
        return ScoredBatch(scores, batch.computed_tokens)
