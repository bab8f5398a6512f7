"""Score many solutions in process with the serving stack's packed scorer and token-budget batches."""

from collections import deque
from dataclasses import dataclass

from tqdm import tqdm

from service.config import batch_tokens
from service.engine.batching import take_batch
from service.jobs.inputs import InputError
from service.prm.formatting import EncodedItem, ScoringInput
from service.prm.loading import LoadedPRM
from service.prm.scorer import PackedScorer


class EncodeError(InputError):
    """An item the model cannot score as given (too long, separator inside); names the item."""


def score_items(
    prm: LoadedPRM, items: list[tuple[str, ScoringInput]], max_batch_tokens: int | None = None, desc: str = "scoring"
) -> list[list[float]]:
    """Step scores for `(item id, input)` pairs, in order.

    Everything is encoded before anything is scored, so a bad item fails the run at once, not after an hour.
    Items are sorted by length into batches (scores do not depend on batch composition) and put back in order.
    """
    encoded: list[EncodedItem] = []
    for item_id, item in items:
        try:
            encoded.append(prm.formatter.encode(item))
        except ValueError as error:
            raise EncodeError(f"item {item_id}: {error}") from error
    budget = batch_tokens(max_batch_tokens, prm.device.type)
    queue = deque(sorted((_Indexed(index, item) for index, item in enumerate(encoded)), key=len))
    scorer = PackedScorer(prm)
    scores: list[list[float]] = [[] for _ in encoded]
    with tqdm(total=len(encoded), desc=desc, unit="item") as progress:
        while queue:
            batch = take_batch(queue, budget)
            result = scorer.score([entry.item for entry in batch])
            for entry, item_scores in zip(batch, result.scores, strict=True):
                scores[entry.index] = item_scores
            progress.update(len(batch))
    return scores


@dataclass(frozen=True)
class _Indexed:
    index: int
    item: EncodedItem

    def __len__(self) -> int:
        return len(self.item)
