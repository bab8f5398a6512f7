"""`prm synth`: a synthetic arithmetic-reasoning world with exact per-step labels.

Each problem is a short story about one quantity that changes a few times; its exact
solution takes one step per change and a closing `\\boxed{}` step. A faulty solution
has one injected error, after which the arithmetic goes on correctly from the wrong
value (as a policy's would), so the first wrong step is known exactly:

- `calculation`: a wrong result (`23 + 15 = 37`);
- `copy`: a wrong number taken from the problem or an earlier step (`23 + 51 = 74`);
- `operation`: the wrong operation (`23 - 15 = 8` where the story adds);
- `slip`: a wrong result that the next step silently ignores, so the final answer is still
  right but the process is not (the case ProcessBench's flawed-correct-answer rate measures).

The world is small enough for a tiny model trained on a laptop CPU to learn, and its labels
are exact, which makes it the bundled demo PRM's training and held-out test data.
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Omar", "Rosa", "Sam"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards", "stamps", "cookies"]
ERROR_KINDS = ("calculation", "copy", "operation", "slip")


@dataclass
class Event:
    """One change to the quantity: how the story tells it and how a step computes it."""

    story: str
    phrase: str  # how the solution's step for it begins, restating the story's numbers
    operation: str  # "+", "-", "*", "/"
    operand: int
    group: tuple[int, int] | None = None  # (count, size) when the operand is itself a product


@dataclass
class Problem:
    id: str
    text: str
    start: int
    events: list[Event]
    name: str
    item: str
    answer: int = 0
    values: list[int] = field(default_factory=list)  # the quantity after each event


@dataclass
class Solution:
    steps: list[str]
    label: int  # the first wrong step, -1 if none
    final_answer: int
    kind: str | None = None


def apply(value: int, operation: str, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand, "/": value // operand}[operation]


def make_problem(rng: random.Random, problem_id: str) -> Problem:
    """A story of 2 to 4 changes whose running value stays a positive integer below 1000."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(10, 40)
    value, events, values = start, [], []
    for _ in range(rng.randint(2, 4)):
        event = _make_event(rng, value, name, item)
        value = apply(value, event.operation, event.operand)
        events.append(event)
        values.append(value)
    story = " ".join(event.story for event in events)
    text = f"{name} has {start} {item}. {story} How many {item} does {name} have now?"
    return Problem(problem_id, text, start, events, name, item, value, values)


def _make_event(rng: random.Random, value: int, name: str, item: str) -> Event:
    choices = ["add", "group", "times"] if value < 12 else ["add", "sub", "group", "times", "half"]
    if value % 2 or value < 12:
        choices = [c for c in choices if c != "half"]
    if value > 40:
        choices = [c for c in choices if c != "times"]
    kind = rng.choice(choices)
    if kind == "add":
        amount = rng.randint(2, 20)
        verb, doing = rng.choice(
            [("buys", "buying"), ("finds", "finding"), ("is given", "being given"), ("wins", "winning")]
        )
        return Event(
            f"Then {name} {verb} {amount} more {item}.", f"After {doing} {amount} more, {name} has", "+", amount
        )
    if kind == "sub":
        amount = rng.randint(2, min(20, value - 5))
        verb, doing = rng.choice(
            [("gives away", "giving away"), ("loses", "losing"), ("sells", "selling"), ("uses", "using")]
        )
        return Event(f"Then {name} {verb} {amount} {item}.", f"After {doing} {amount}, {name} has", "-", amount)
    if kind == "group":
        count, size = rng.randint(2, 5), rng.randint(2, 6)
        story = f"Then {name} gets {count} bags with {size} {item} in each bag."
        return Event(story, f"With the bags, {name} has", "+", count * size, (count, size))
    if kind == "times":
        factor = rng.choice([2, 3])
        word, doing = {2: ("doubles", "Doubling"), 3: ("triples", "Tripling")}[factor]
        return Event(f"Then {name} {word} the number of {item}.", f"{doing} them, {name} has", "*", factor)
    return Event(f"Then {name} gives half of the {item} to a friend.", f"After giving half away, {name} has", "/", 2)


def solve(problem: Problem) -> list[tuple[str, str, int, str, int, int]]:
    """The exact computation: (kind, phrase, left, operation, right, result) per step, before the answer step."""
    computations, value = [], problem.start
    for event in problem.events:
        if event.group:
            count, size = event.group
            computations.append(("group", f"The {count} bags of {size} hold", count, "*", size, count * size))
        result = apply(value, event.operation, event.operand)
        computations.append(("total", event.phrase, value, event.operation, event.operand, result))
        value = result
    return computations


def render_step(problem: Problem, kind: str, phrase: str, left: int, operation: str, right: int, result: int) -> str:
    shown = {"*": "×", "/": "÷"}.get(operation, operation)
    return f"{phrase} {left} {shown} {right} = {result} {problem.item}."


def correct_solution(problem: Problem) -> Solution:
    steps = [render_step(problem, *computation) for computation in solve(problem)]
    steps.append(f"The answer is \\boxed{{{problem.answer}}}.")
    return Solution(steps, -1, problem.answer)


def faulty_solution(problem: Problem, rng: random.Random, kind: str) -> Solution:
    """Inject one error of `kind` at a random computation step and carry on from its result."""
    exact = solve(problem)
    at = rng.randrange(len(exact))
    steps, value, group_product, shown = [], problem.start, None, [problem.start]
    for index, (step_kind, phrase, left, operation, right, _) in enumerate(exact):
        if step_kind == "total":
            left = value
            if group_product is not None:
                right = group_product
        result = apply(left, operation, right)
        if index == at:
            written = _inject(rng, kind, problem, shown, step_kind, left, operation, right, result)
            left, operation, right, result = written
        steps.append(render_step(problem, step_kind, phrase, left, operation, right, result))
        carried = apply(left, operation, right) if kind == "slip" and index == at else result
        if step_kind == "group":
            group_product = carried
        else:
            value, group_product = carried, None
            shown.append(result)
    steps.append(f"The answer is \\boxed{{{value}}}.")
    return Solution(steps, at, value, kind)


def _inject(rng, kind, problem, shown, step_kind, left, operation, right, result) -> tuple[int, str, int, int]:
    """The step as the faulty solution writes it: (left, operation, right, result).

    `shown` holds the values of the quantity written so far, which a copy error may pick up.
    """
    if kind == "copy":
        earlier = set(shown) - {left}
        earlier = {n for n in earlier if n < left} if operation == "-" else earlier
        if step_kind == "total" and earlier and (operation == "/" or rng.random() < 0.5):
            left = rng.choice(sorted(earlier))  # an earlier value of the quantity instead of the current one
        elif operation == "*":
            right = rng.choice([n for n in range(2, 10) if n != right])
        elif operation in "+-":
            candidates = {e.operand for e in problem.events} | {problem.start}
            candidates = {n for n in candidates if n != right and (operation == "+" or n < left)}
            right = rng.choice(sorted(candidates)) if candidates and rng.random() < 0.5 else _wrong_number(rng, right)
            if operation == "-" and right >= left:
                return left, operation, right, _wrong_number(rng, result)
        else:
            return left, operation, right, _wrong_number(rng, result)
        return left, operation, right, apply(left, operation, right)
    if kind == "operation":
        wrong = {"+": "-" if right < left else "*", "-": "+", "*": "+", "/": "*"}[operation]
        if step_kind == "group":
            wrong = "+"
        if not (wrong == "*" and right > 9 and operation == "+"):
            return left, wrong, right, apply(left, wrong, right)
    return left, operation, right, _wrong_number(rng, result)  # calculation and slip


def _wrong_number(rng: random.Random, exact: int) -> int:
    """A plausible slip: off by one to five, so the last digit is wrong (a carry error keeps the last digit
    and is left out: the demo model is too small to learn carries in its CPU budget)."""
    for _ in range(20):
        wrong = exact + rng.choice([-1, 1]) * rng.randint(1, 5)
        if wrong > 0:
            return wrong
    return exact + 1


def sample_solution(problem: Problem, rng: random.Random, error_rate: float) -> Solution:
    if rng.random() >= error_rate:
        return correct_solution(problem)
    kind = rng.choices(ERROR_KINDS, weights=[0.35, 0.25, 0.25, 0.15])[0]
    return faulty_solution(problem, rng, kind)


def stepwise_record(problem: Problem, solution: Solution, record_id: str) -> dict:
    """TRL stepwise supervision with every step labelled, as Math-Shepherd's records are.

    Here the labels are exact, not estimated: steps before the first error are right, the first error is
    wrong, and so is every later step of a solution on a wrong track (its answer can no longer be reached);
    after a slip the solution is back on track, so the later steps are right.
    """
    if solution.label == -1:
        labels = [True] * len(solution.steps)
    else:
        back_on_track = solution.kind == "slip"
        labels = [
            index < solution.label or (index > solution.label and back_on_track) for index in range(len(solution.steps))
        ]
    return {"id": record_id, "prompt": problem.text, "completions": solution.steps, "labels": labels}


def processbench_item(problem: Problem, solution: Solution, item_id: str) -> dict:
    return {
        "id": item_id,
        "generator": f"synth-{solution.kind or 'exact'}",
        "problem": problem.text,
        "steps": solution.steps,
        "final_answer_correct": solution.final_answer == problem.answer,
        "label": solution.label,
    }


def response_record(problem: Problem, solution: Solution, response_id: str) -> dict:
    """The `prm generate` record shape, so a synthetic best-of-N set runs through `prm eval bon`."""
    return {
        "id": response_id,
        "problem_id": problem.id,
        "problem": problem.text,
        "answer": str(problem.answer),
        "steps": solution.steps,
        "final_answer": str(solution.final_answer),
        "correct": solution.final_answer == problem.answer,
        "policy": f"synth-{solution.kind or 'exact'}",
    }


def synthesize(
    out_dir: Path, train: int, heldout: int, bon_problems: int, bon_n: int, seed: int, error_rate: float = 0.5
) -> dict[str, Path]:
    """Write train.jsonl (TRL stepwise), heldout.jsonl (ProcessBench items) and bon.jsonl (responses).

    Held-out and best-of-N problems never share a text with training problems. A share `error_rate` of the
    training solutions is faulty (each has a single negative step, so more of them means more signal); the
    held-out set is half faulty, like ProcessBench.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh_problem(prefix: str, index: int) -> Problem:
        while True:
            problem = make_problem(rng, f"{prefix}-{index}")
            if problem.text not in seen:
                seen.add(problem.text)
                return problem

    paths = {"train": out_dir / "train.jsonl", "heldout": out_dir / "heldout.jsonl", "bon": out_dir / "bon.jsonl"}
    with paths["heldout"].open("w") as handle:
        for index in range(heldout):
            problem = fresh_problem("heldout", index)
            solution = sample_solution(problem, rng, error_rate=0.5)
            handle.write(json.dumps(processbench_item(problem, solution, problem.id)) + "\n")
    with paths["bon"].open("w") as handle:
        for index in range(bon_problems):
            problem = fresh_problem("bon", index)
            for sample in range(bon_n):
                solution = sample_solution(problem, rng, error_rate=0.6)
                handle.write(json.dumps(response_record(problem, solution, f"{problem.id}/{sample}")) + "\n")
    with paths["train"].open("w") as handle:
        for index in range(train):
            problem = fresh_problem("train", index)
            solution = sample_solution(problem, rng, error_rate)
            handle.write(json.dumps(stepwise_record(problem, solution, problem.id)) + "\n")
    return paths
