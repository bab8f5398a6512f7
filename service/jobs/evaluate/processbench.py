"""ProcessBench: can the PRM name the earliest wrong step?

The prediction for a solution is the first step scored below the threshold, or -1 when none is.
Per subset, as the official script reports it (percent): accuracy on erroneous items (exact index),
accuracy on correct items, and their harmonic mean F1; `avg_f1` is the plain mean over subsets.
"""

import json
from collections.abc import Iterable
from pathlib import Path

from service.jobs.evaluate.stats import harmonic_mean, percent
from service.jobs.inputs import InputError, load_hub_dataset, read_records
from service.prm.formatting import ScoringInput

HUB_DATASET = "Qwen/ProcessBench"
THRESHOLD_GRID = [round(0.01 * step, 2) for step in range(1, 100)]


def load_subsets(sources: list[str]) -> dict[str, list[dict]]:
    """Subsets by name: a file's stem, or each split of a Hub dataset (`Qwen/ProcessBench`: gsm8k, math, ...)."""
    subsets: dict[str, list[dict]] = {}
    for source in sources:
        if Path(source).is_file():
            subsets[Path(source).stem] = read_records(source)
            continue
        for split, rows in load_hub_dataset(source).items():
            subsets[split] = list(rows)
    for name, items in subsets.items():
        for item in items:
            missing = {"id", "problem", "steps", "label"} - item.keys()
            if missing:
                raise InputError(f"subset {name}: item {item.get('id')} lacks {sorted(missing)}")
    return subsets


def as_scoring_input(item: dict) -> ScoringInput:
    return ScoringInput(problem=item["problem"], steps=list(item["steps"]))


def first_below(step_scores: list[float], threshold: float) -> int:
    return next((index for index, score in enumerate(step_scores) if score < threshold), -1)


def subset_metrics(items: list[dict], predictions: list[int]) -> dict:
    """n, acc_error, acc_correct, f1 (percent) and the share of right-answer-wrong-process items flagged."""
    erroneous = [(item, p) for item, p in zip(items, predictions, strict=True) if item["label"] != -1]
    correct = [p for item, p in zip(items, predictions, strict=True) if item["label"] == -1]
    acc_error = percent(sum(p == item["label"] for item, p in erroneous), len(erroneous))
    acc_correct = percent(sum(p == -1 for p in correct), len(correct))
    flawed = [p for item, p in erroneous if item.get("final_answer_correct")]
    return {
        "n": len(items),
        "acc_error": acc_error,
        "acc_correct": acc_correct,
        "f1": harmonic_mean(acc_error, acc_correct),
        # flagged at all (any step below the threshold): the paper's point is that outcome-trained PRMs miss these
        "flawed_correct_answer_detection": percent(sum(p != -1 for p in flawed), len(flawed)) if flawed else None,
    }


def metrics_at(items: list[dict], scores: list[list[float]], threshold: float) -> dict:
    """`subset_metrics`, plus two that read the scores themselves:

    - `error_caught`: the share of erroneous items whose first wrong step scores below the threshold and below
      every step before it (a reranker or a search that prunes the lowest step acts on exactly this);
    - `by_generator`: per item `generator` (the policy in ProcessBench, the error kind in synthetic and
      hand-written sets), the share whose prediction is exact: the first wrong step, or -1 for a correct one.
    """
    predictions = [first_below(step_scores, threshold) for step_scores in scores]
    metrics = subset_metrics(items, predictions)
    caught = [
        step_scores[item["label"]] < min([threshold, *step_scores[: item["label"]]])
        for item, step_scores in zip(items, scores, strict=True)
        if item["label"] != -1
    ]
    metrics["error_caught"] = percent(sum(caught), len(caught))
    exact: dict[str, list[bool]] = {}
    for item, prediction in zip(items, predictions, strict=True):
        if "generator" in item:
            exact.setdefault(item["generator"], []).append(prediction == item["label"])
    if exact:
        metrics["by_generator"] = {kind: percent(sum(hits), len(hits)) for kind, hits in sorted(exact.items())}
    return metrics


def report(
    subsets: dict[str, list[dict]], scores: dict[str, list[list[float]]], threshold: float, searched_on: str | None
) -> dict:
    """The report for one threshold; `searched_on` names the subset the threshold was picked on, if any."""
    per_subset = {name: metrics_at(items, scores[name], threshold) for name, items in subsets.items()}
    f1s = [metrics["f1"] for metrics in per_subset.values() if metrics["f1"] is not None]
    result = {"threshold": threshold, "subsets": per_subset, "avg_f1": sum(f1s) / len(f1s) if f1s else None}
    if searched_on:
        result["threshold_searched_on"] = searched_on
    return result


def search_threshold(items: list[dict], scores: list[list[float]]) -> float:
    """The threshold on a 0.01 grid with the best F1 on one subset (ties: the one nearest 0.5)."""

    def quality(threshold: float) -> tuple[float, float]:
        f1 = metrics_at(items, scores, threshold)["f1"] or 0.0
        return f1, -abs(threshold - 0.5)

    return max(THRESHOLD_GRID, key=quality)


def write_predictions(
    path: Path, subsets: dict[str, list[dict]], scores: dict[str, list[list[float]]], threshold: float
) -> None:
    with path.open("w") as handle:
        for line in _prediction_lines(subsets, scores, threshold):
            handle.write(json.dumps(line) + "\n")


def _prediction_lines(subsets, scores, threshold) -> Iterable[dict]:
    for name, items in subsets.items():
        for item, step_scores in zip(items, scores[name], strict=True):
            yield {
                "subset": name,
                "id": item["id"],
                "label": item["label"],
                "prediction": first_below(step_scores, threshold),
                "step_scores": step_scores,
            }
