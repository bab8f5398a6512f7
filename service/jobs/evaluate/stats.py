"""Percentages as the evaluation reports print them."""


def percent(hits: int, total: int) -> float | None:
    """`hits` of `total` in percent; None when there is nothing to count (not 0, which would be a claim)."""
    return 100.0 * hits / total if total else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
