"""`prm synth`: deterministic, and every label is what the written arithmetic says."""

import json
import re

from service.jobs.synth import synthesize
from tests.helpers import FIXTURES

EQUATION = re.compile(r"(\d+) ([+\-×*x÷/]) (\d+) = (\d+)")  # `prm synth` writes × and ÷; people also * x /
PRODUCT, QUOTIENT = int.__mul__, int.__floordiv__
OPERATIONS = {"+": int.__add__, "-": int.__sub__, "×": PRODUCT, "*": PRODUCT, "x": PRODUCT, "÷": QUOTIENT}
OPERATIONS["/"] = QUOTIENT


def arithmetic_holds(step: str) -> bool:
    match = EQUATION.search(step)
    if not match:
        return True  # the answer step
    left, operation, right, result = match.groups()
    return OPERATIONS[operation](int(left), int(right)) == int(result)


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = synthesize(tmp_path / "a", train=50, heldout=20, bon_problems=3, bon_n=4, seed=7)
    second = synthesize(tmp_path / "b", train=50, heldout=20, bon_problems=3, bon_n=4, seed=7)
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes()
    assert synthesize(tmp_path / "c", 50, 20, 3, 4, seed=8)["train"].read_bytes() != first["train"].read_bytes()


def test_labels_match_the_written_solutions(tmp_path):
    paths = synthesize(tmp_path, train=400, heldout=400, bon_problems=10, bon_n=8, seed=0)
    heldout = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    kinds = {item["generator"] for item in heldout}
    assert kinds == {"synth-exact", "synth-calculation", "synth-copy", "synth-operation", "synth-slip"}
    assert 150 < sum(item["label"] == -1 for item in heldout) < 250  # balanced like ProcessBench
    for item in heldout:
        label, steps = item["label"], item["steps"]
        before = steps if label == -1 else steps[:label]
        assert all(arithmetic_holds(step) for step in before), item
        assert item["steps"][-1].startswith("The answer is \\boxed{")
        if item["generator"] in ("synth-calculation", "synth-slip"):
            assert not arithmetic_holds(steps[label]), item
        # a slip leaves the answer right; the other errors carry through to a wrong answer
        assert item["final_answer_correct"] == (label == -1 or item["generator"] == "synth-slip")

    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert {item["prompt"] for item in train}.isdisjoint(item["problem"] for item in heldout)
    for record in train:
        labels = record["labels"]
        assert len(labels) == len(record["completions"])
        if all(labels):
            continue
        first_error = labels.index(False)
        assert all(arithmetic_holds(step) for step in record["completions"][:first_error])
        # after a wrong step, a solution stays wrong unless it was a slip (wrong arithmetic, then back on track)
        assert all(labels[first_error + 1 :]) or not any(labels[first_error + 1 :])

    bon = [json.loads(line) for line in paths["bon"].read_text().splitlines()]
    assert len(bon) == 80 and len({record["problem_id"] for record in bon}) == 10
    for record in bon:
        assert record["correct"] == (record["final_answer"] == record["answer"])


def test_the_hand_written_set_is_sound_and_not_what_the_generator_writes(tmp_path):
    """tests/fixtures/handwritten_arith.jsonl: 40+ problems, each with a correct solution and a faulty one
    whose first wrong step is known, in sentences `prm synth` never writes (numbers aside)."""
    items = [json.loads(line) for line in (FIXTURES / "handwritten_arith.jsonl").read_text().splitlines()]
    problems: dict[str, list[dict]] = {}
    for item in items:
        problems.setdefault(item["problem"], []).append(item)
    assert len(problems) >= 40
    for solutions in problems.values():
        assert sum(s["label"] == -1 for s in solutions) == 1 and any(s["label"] != -1 for s in solutions)
    for item in items:
        label, steps = item["label"], item["steps"]
        assert all(arithmetic_holds(step) for step in (steps if label == -1 else steps[:label])), item
        assert item["generator"] != "hand-calculation" or not arithmetic_holds(steps[label]), item

    paths = synthesize(tmp_path, train=0, heldout=5000, bon_problems=0, bon_n=1, seed=0)
    synthetic = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]

    def shapes(texts):
        return {re.sub(r"\d+", "N", sentence) for text in texts for sentence in re.split(r"(?<=[.?!])\s+", text)}

    written = shapes(step for item in synthetic for step in item["steps"]) | shapes(i["problem"] for i in synthetic)
    by_hand = shapes(step for item in items for step in item["steps"]) | shapes(problems)
    assert by_hand & written <= {"The answer is N.", "The answer is \\boxed{N}."}, by_hand & written  # the answer steps
