"""`prm filter consensus`: keep a response only where Monte Carlo and the judge name the same first error.

This is the paper's consensus filtering: MC labels alone are noisy (a wrong step can still lead to the
right answer, and a right one can fail to), and keeping only what an independent judge confirms trades
volume for precision. Kept responses become TRL stepwise-supervision records: the steps up to and
including the first error, labelled true before it and false at it (all steps, all true, when there is none).

The output is rewritten whole on every run (to a temporary file, then renamed): the job is local and fast,
and a rerun gives the same file. The judge file is held in memory as ids and verdicts only; the MC file is
streamed.
"""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from service.jobs.inputs import InputError, read_jsonl


def stepwise_record(record: dict, first_error: int) -> dict:
    """TRL's stepwise-supervision format."""
    steps = record["steps"] if first_error == -1 else record["steps"][: first_error + 1]
    return {
        "id": record["id"],
        "prompt": record["problem"],
        "completions": steps,
        "labels": [index != first_error for index in range(len(steps))],
    }


def consensus(mc_path: Path, judge_path: Path, out_path: Path) -> dict:
    """Write the kept records to `out_path` and return the report."""
    verdicts: dict[str, tuple[int | None, str]] = {}
    for record in read_jsonl(judge_path):
        verdicts.setdefault(record["id"], (_first_error(record, "judge", judge_path), _digest(record["steps"])))

    matrix: Counter[tuple[int | None, int | None]] = Counter()
    mc_ids: set[str] = set()
    kept = disagreed = unparseable = right_answer_wrong_process = 0
    temporary = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(temporary, "w", encoding="utf-8") as out:
        for record in read_jsonl(mc_path):
            if record["id"] in mc_ids:
                continue
            mc_ids.add(record["id"])
            if record["id"] not in verdicts:
                continue
            judged, digest = verdicts[record["id"]]
            if digest != _digest(record["steps"]):
                raise InputError(
                    f"{record['id']} has different steps in {mc_path} and {judge_path}: "
                    "were both annotated from the same responses file?"
                )
            first_error = _first_error(record, "mc", mc_path)
            matrix[first_error, judged] += 1
            if judged is None or first_error is None:
                unparseable += 1
            elif judged != first_error:
                disagreed += 1
            else:
                kept += 1
                right_answer_wrong_process += bool(record.get("correct")) and first_error != -1
                out.write(json.dumps(stepwise_record(record, first_error), ensure_ascii=False) + "\n")
    os.replace(temporary, out_path)

    joined = sum(matrix.values())
    return {
        "mc_records": len(mc_ids),
        "judge_records": len(verdicts),
        "joined": joined,
        "kept": kept,
        "dropped_disagreement": disagreed,
        "dropped_unparseable": unparseable,
        "dropped_missing": len(mc_ids) + len(verdicts) - 2 * joined,
        "agreement_matrix": _nested(matrix),
        "right_answer_wrong_process": right_answer_wrong_process,
        "right_answer_wrong_process_share": right_answer_wrong_process / kept if kept else None,
    }


def _first_error(record: dict, annotation: str, path: Path) -> int | None:
    try:
        return record[annotation]["first_error"]
    except (KeyError, TypeError):
        raise InputError(
            f"{path}: {record.get('id')} has no {annotation}.first_error: is this the output of `prm annotate "
            f"{annotation}`?"
        ) from None


def _digest(steps: list[str]) -> str:
    return hashlib.sha1(json.dumps(steps).encode()).hexdigest()


def _nested(matrix: Counter) -> dict[str, dict[str, int]]:
    """{mc first error: {judge first error: count}}, positions in order, "null" (unparseable) last."""

    def order(value: int | None) -> float:
        return float("inf") if value is None else value

    rows: dict[str, dict[str, int]] = {}
    for mc, judged in sorted(matrix, key=lambda pair: (order(pair[0]), order(pair[1]))):
        rows.setdefault(json.dumps(mc), {})[json.dumps(judged)] = matrix[mc, judged]
    return rows
