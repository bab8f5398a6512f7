"""The narrow backend interface the engine drives, and its packed-transformers implementation.

A backend takes encoded sequences and returns one list of step scores per sequence;
a vLLM-backed scorer can sit behind the same `Scorer` protocol.
"""

from typing import Protocol

from service.prm.formatting import EncodedItem
from service.prm.loading import LoadedPRM
from service.prm.packing import pack


class Scorer(Protocol):
    def score(self, items: list[EncodedItem]) -> list[list[float]]: ...


class PackedScorer:
    """Scores a batch as one padding-free packed forward; one device-to-host copy per batch."""

    def __init__(self, prm: LoadedPRM):
        self.prm = prm

    def score(self, items: list[EncodedItem]) -> list[list[float]]:
        batch = pack(items).to(self.prm.device)
        flat = self.prm.model.step_scores(batch).cpu().tolist()
        scores, start = [], 0
        for count in batch.separator_counts:
            scores.append(flat[start : start + count])
            start += count
        return scores
