"""PNG plots of a best-of-N run (matplotlib, headless)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from service.jobs.evaluate.bon import minimum_position  # noqa: E402


def accuracy_plot(report: dict, path: Path) -> Path:
    """prm@N per aggregation as bars, maj@N / pass@N / pass@1 as reference lines."""
    figure, axes = plt.subplots(figsize=(6, 4))
    names = list(report["prm"])
    axes.bar(names, [report["prm"][name] or 0 for name in names], color="#4c72b0")
    for key, style in (("maj", "--"), ("pass", ":"), ("pass@1", "-.")):
        if report[key] is not None:
            axes.axhline(report[key], linestyle=style, color="#444", label=f"{key} {report[key]:.1f}")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"best-of-{report['n']} on {report['problems']} problems")
    axes.legend(loc="lower right")
    return _save(figure, path)


def minimum_position_plot(step_scores: list[list[list[float]]], path: Path) -> Path:
    """Where each response's lowest step score sits, counted from its last step (0 = the last step)."""
    from_end = [len(s) - 1 - minimum_position(s) for scores in step_scores for s in scores if s]
    figure, axes = plt.subplots(figsize=(6, 4))
    bins = range(0, max(from_end, default=0) + 2)
    axes.hist(from_end, bins=bins, align="left", rwidth=0.8, color="#55a868")
    axes.set_xlabel("steps before the last step (0 = the last step)")
    axes.set_ylabel("responses")
    axes.set_title("position of the minimum step score")
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
