"""The two evaluations end to end: load the PRM as `prm serve` would, score, report, write files."""

import json
from dataclasses import dataclass
from pathlib import Path

from service.config import Dtype, ServeConfig
from service.jobs.evaluate import bon, plots, processbench
from service.jobs.evaluate.scoring import score_items
from service.jobs.inputs import InputError
from service.prm.loading import LoadedPRM, load_prm
from service.store import open_store, resolve_model


@dataclass(frozen=True)
class ModelSpec:
    """Which PRM to evaluate and where, with the same meaning as `prm serve`'s options."""

    model: str | None
    store: str | None = ServeConfig.store
    device: str = ServeConfig.device
    dtype: Dtype = ServeConfig.dtype
    max_batch_tokens: int | None = ServeConfig.max_batch_tokens

    def load(self) -> LoadedPRM:
        source, name = resolve_model(self.model, open_store(self.store))
        return load_prm(source, device=self.device, dtype=self.dtype, name=name)


def run_processbench(
    model: ModelSpec,
    data: list[str],
    out: Path,
    threshold: float = 0.5,
    search_on: str | None = None,
    predictions: Path | None = None,
) -> dict:
    subsets = processbench.load_subsets(data)
    if search_on is not None and search_on not in subsets:
        raise InputError(f"--search-threshold {search_on!r} is not a subset (subsets: {', '.join(subsets)})")
    prm = model.load()
    scores = {
        name: score_items(
            prm,
            [(item["id"], processbench.as_scoring_input(item)) for item in items],
            model.max_batch_tokens,
            desc=name,
        )
        for name, items in subsets.items()
    }
    if search_on is not None:
        threshold = processbench.search_threshold(subsets[search_on], scores[search_on])
    result = processbench.report(subsets, scores, threshold, search_on)
    result["model"], result["model_version"] = prm.name, prm.version
    _write_json(out, result)
    if predictions is not None:
        processbench.write_predictions(predictions, subsets, scores, threshold)
    return result


def run_bon(model: ModelSpec, data: str, out: Path, plots_dir: Path | None = None) -> dict:
    groups = bon.load_groups(data)
    prm = model.load()
    flat = iter(score_items(prm, bon.scoring_inputs(groups), model.max_batch_tokens, desc="candidates"))
    step_scores = [[next(flat) for _ in group.candidates] for group in groups]
    result = bon.report(groups, step_scores)
    result["model"], result["model_version"] = prm.name, prm.version
    plots_dir = plots_dir or out.parent
    plots_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = [
        str(plots.accuracy_plot(result, plots_dir / f"{out.stem}_accuracy.png")),
        str(plots.minimum_position_plot(step_scores, plots_dir / f"{out.stem}_min_position.png")),
    ]
    _write_json(out, result)
    return result


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
