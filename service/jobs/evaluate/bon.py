"""Best-of-N: does picking the candidate the PRM likes best beat majority voting?

Inputs are groups of N candidate solutions to one problem with known correctness, either the
Qwen2.5-Math test-bed format (`question`, `gt`, `code` = N responses, `pred` = their answers,
`score` = N correctness flags) or `prm generate` records grouped by `problem_id`.
"""

from collections import Counter
from dataclasses import dataclass

from service.jobs.evaluate.stats import percent
from service.jobs.inputs import read_records
from service.prm.aggregation import AGGREGATIONS, rank
from service.prm.formatting import ScoringInput, split_steps

REPORTED_AGGREGATIONS = ("product", "min", "last", "mean")


@dataclass(frozen=True)
class Candidate:
    steps: list[str]
    answer: str | None  # the extracted final answer, for majority voting
    correct: bool


@dataclass(frozen=True)
class Group:
    problem_id: str
    problem: str
    candidates: list[Candidate]


def load_groups(source: str) -> list[Group]:
    records = read_records(source)
    if records and "code" in records[0]:
        return [_test_bed_group(index, record) for index, record in enumerate(records)]
    by_problem: dict[str, list[dict]] = {}
    for record in records:
        by_problem.setdefault(record["problem_id"], []).append(record)
    return [
        Group(
            problem_id,
            rows[0]["problem"],
            [Candidate(list(row["steps"]), row.get("final_answer"), bool(row.get("correct"))) for row in rows],
        )
        for problem_id, rows in by_problem.items()
    ]


def _test_bed_group(index: int, record: dict) -> Group:
    answers = record.get("pred") or [None] * len(record["code"])
    candidates = [
        Candidate(split_steps(text), answer, bool(flag))
        for text, answer, flag in zip(record["code"], answers, record["score"], strict=True)
    ]
    return Group(str(record.get("idx", index)), record["question"], candidates)


def scoring_inputs(groups: list[Group]) -> list[tuple[str, ScoringInput]]:
    return [
        (f"{group.problem_id}/{index}", ScoringInput(problem=group.problem, steps=candidate.steps))
        for group in groups
        for index, candidate in enumerate(group.candidates)
    ]


def majority_correct(group: Group) -> bool:
    """Whether the most common extracted answer is right (ties: the answer seen first)."""
    votes = Counter(candidate.answer for candidate in group.candidates if candidate.answer is not None)
    if not votes:
        return False
    winner = max(votes, key=lambda answer: (votes[answer], -_first_index(group, answer)))
    return next(candidate.correct for candidate in group.candidates if candidate.answer == winner)


def _first_index(group: Group, answer: str) -> int:
    return next(index for index, candidate in enumerate(group.candidates) if candidate.answer == answer)


def report(groups: list[Group], step_scores: list[list[list[float]]]) -> dict:
    """Percentages: prm@N per aggregation, maj@N, pass@N, pass@1 and the share of minima on the last step."""
    sizes = {len(group.candidates) for group in groups}
    picked = {
        how: [
            group.candidates[rank([AGGREGATIONS[how](s) for s in scores])[0]].correct
            for group, scores in zip(groups, step_scores, strict=True)
        ]
        for how in REPORTED_AGGREGATIONS
    }
    all_candidates = [candidate for group in groups for candidate in group.candidates]
    multi_step = [s for scores in step_scores for s in scores if len(s) > 1]
    return {
        "n": sizes.pop() if len(sizes) == 1 else sorted(sizes),
        "problems": len(groups),
        "prm": {how: percent(sum(hits), len(hits)) for how, hits in picked.items()},
        "maj": percent(sum(majority_correct(group) for group in groups), len(groups)),
        "pass": percent(sum(any(c.correct for c in group.candidates) for group in groups), len(groups)),
        "pass@1": percent(sum(c.correct for c in all_candidates), len(all_candidates)),
        # among responses of two or more steps: a PRM drifting toward outcome judging puts its minimum last
        "min_at_last_step": percent(sum(minimum_position(s) == len(s) - 1 for s in multi_step), len(multi_step)),
    }


def minimum_position(scores: list[float]) -> int:
    return min(range(len(scores)), key=lambda index: (scores[index], index))
