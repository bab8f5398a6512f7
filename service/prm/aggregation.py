"""Solution-level scores from step scores, as used for best-of-N reranking."""

import math
from collections.abc import Callable
from typing import Literal

Aggregation = Literal["product", "min", "last", "mean", "max"]

AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "product": math.prod,  # the paper's best-of-N choice
    "min": min,
    "last": lambda scores: scores[-1],
    "mean": lambda scores: math.fsum(scores) / len(scores),
    "max": max,
}


def aggregate(step_scores: list[float], how: Aggregation) -> float:
    return AGGREGATIONS[how](step_scores)


def rank(solution_scores: list[float]) -> list[int]:
    """Indices by score, highest first; ties go to the lower index."""
    return sorted(range(len(solution_scores)), key=lambda index: (-solution_scores[index], index))
