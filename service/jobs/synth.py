"""`prm synth`: a synthetic arithmetic-reasoning world with exact per-step labels.

Each problem is a short word problem about one quantity that changes two to four times; its exact
solution takes one step per change (two for a change that is itself a sum or a product of the story's
numbers, "12 red and 15 blue ones", "3 bags of 12") and a closing answer step. The world is written the
way people write such problems: many sentence templates per operation, names and objects from long
lists, "each", "per", "twice as many" and "split equally", facts in varied order, steps that restate or
combine ("So she has 23 - 6 = 17 left"), `×`, `*` or `x` for products, answers with and without
`\\boxed{}`, and numbers of one to three digits.

A faulty solution has one injected error, after which the arithmetic goes on correctly from the wrong
value (as a policy's would), so the first wrong step is known exactly:

- `calculation`: a wrong result, off in any digit (`34 + 10 = 54`, `47 + 38 = 75`, `23 + 15 = 37`);
- `copy`: a wrong number taken from the problem or an earlier step (`23 + 51 = 74`);
- `operation`: the wrong operation (`23 - 15 = 8` where the story adds);
- `slip`: a wrong result that the next step silently ignores, so the final answer is still right but
  the process is not (the case ProcessBench's flawed-correct-answer rate measures).

The world is small enough for a tiny model trained on a laptop CPU to learn, and its labels are exact,
which makes it the bundled demo PRM's training and held-out test data.
"""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

ERROR_KINDS = ("calculation", "copy", "operation", "slip")
SHE = [
    "Ava",
    "Chloe",
    "Emma",
    "Grace",
    "Ivy",
    "Lena",
    "Rosa",
    "Mia",
    "Nora",
    "Zoe",
    "Ruth",
    "Sofia",
    "Maya",
    "Elena",
    "Priya",
    "Hannah",
    "Lucy",
    "Amara",
    "Julia",
    "Clara",
    "Fatima",
    "Leah",
]
HE = [
    "Ben",
    "Dan",
    "Finn",
    "Hugo",
    "Jack",
    "Omar",
    "Sam",
    "Leo",
    "Noah",
    "Kenji",
    "Mateo",
    "Ravi",
    "Tom",
    "Paul",
    "Diego",
    "Felix",
    "Arjun",
    "Oscar",
    "Peter",
    "Yusuf",
    "Carlos",
    "Liam",
]
PEOPLE = [*((name, "she", "her", "her") for name in SHE), *((name, "he", "him", "his") for name in HE)]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "coins",
    "pencils",
    "shells",
    "cards",
    "stamps",
    "cookies",
    "crayons",
    "beads",
    "buttons",
    "cupcakes",
    "eggs",
    "flowers",
    "toys",
    "balloons",
    "candies",
    "oranges",
    "lemons",
    "pens",
    "rocks",
    "muffins",
    "tickets",
    "blocks",
    "cups",
    "socks",
    "bottles",
    "plums",
    "seashells",
    "postcards",
    "peaches",
    "ribbons",
    "bricks",
    "jars",
    "puzzles",
    "carrots",
    "potatoes",
    "nails",
]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets", "crates", "trays", "bundles", "bowls", "sacks"]
SYMBOLS = [("×", "÷"), ("*", "/"), ("x", "÷"), ("×", "/")]  # how a solution writes products and quotients
MAX_VALUE = 999
ANSWERS = [  # templates of the closing step
    "The answer is \\boxed{{{n}}}.",
    "The answer is {n}.",
    "So the answer is \\boxed{{{n}}}.",
    "{name} has \\boxed{{{n}}} {item} in the end.",
    "Therefore, the answer is {n}.",
    "Final answer: {n}",
]


@dataclass
class Person:
    name: str
    they: str
    them: str
    their: str


@dataclass
class Event:
    """One change to the quantity: how the story tells it and how a step may compute it.

    Step templates are filled with `{eq}` (the written computation, `left op right = result`) and `{r}` (its
    written result); everything else in them is fixed when the event is made."""

    story: str
    steps: list[str]
    operation: str  # "+", "-", "*", "/"
    operand: int
    part: tuple[int, str, int] | None = None  # (left, op, right) when the operand is itself a sub-result
    part_steps: list[str] = field(default_factory=list)  # templates of the sub-result's own step


@dataclass
class Problem:
    id: str
    text: str
    start: int
    events: list[Event]
    person: Person
    item: str
    answer: int = 0
    values: list[int] = field(default_factory=list)  # the quantity after each event


@dataclass
class Solution:
    steps: list[str]
    label: int  # the first wrong step, -1 if none
    final_answer: int
    kind: str | None = None


@dataclass(frozen=True)
class Style:
    """A solution's own habits: which template of each step, which symbols, how the answer is given."""

    picks: tuple[int, ...]
    symbols: tuple[str, str]
    answer: str


def apply(value: int, operation: str, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand, "/": value // operand}[operation]


def make_problem(rng: random.Random, problem_id: str) -> Problem:
    """A story of 2 to 4 changes whose running value stays a positive integer of at most three digits."""
    person, item = Person(*rng.choice(PEOPLE)), rng.choice(ITEMS)
    size = rng.random()
    start = rng.randint(5, 60) if size < 0.6 else rng.randint(61, 150) if size < 0.85 else rng.randint(151, 500)
    value, events, values = start, [], []
    for _ in range(rng.randint(2, 4)):
        event = _make_event(rng, value, person, item)
        value = apply(value, event.operation, event.operand)
        events.append(event)
        values.append(value)
    text = _problem_text(rng, person, item, start, events)
    return Problem(problem_id, text, start, events, person, item, value, values)


def _problem_text(rng: random.Random, person: Person, item: str, start: int, events: list[Event]) -> str:
    name = person.name
    opening = rng.choice(
        [
            f"{name} has {start} {item}.",
            f"{name} starts with {start} {item}.",
            f"There are {start} {item} in {name}'s room.",
            f"At first, {name} owns {start} {item}.",
            f"{name} had {start} {item} on Monday.",
        ]
    )
    question = rng.choice(
        [
            f"How many {item} does {name} have now?",
            f"How many {item} does {person.they} have at the end?",
            f"How many {item} are there in the end?",
            f"What is the number of {item} {name} has now?",
            f"How many {item} does {name} end up with?",
        ]
    )
    story = " ".join(event.story for event in events)
    if rng.random() < 0.2:
        return f"{question} {opening} {story}"  # the question first
    return f"{opening} {story} {question}"


def _make_event(rng: random.Random, value: int, person: Person, item: str) -> Event:
    choices = ["add", "add", "sub", "sub", "pair", "group", "times", "split"]
    if value < 8:
        choices = ["add", "group"]
    if 2 * value > MAX_VALUE:
        choices = [c for c in choices if c != "times"]
    if not any(value % parts == 0 for parts in (2, 3, 4, 5)):
        choices = [c for c in choices if c != "split"]
    if value > MAX_VALUE - 20:
        choices = ["sub", "split"] if "split" in choices else ["sub"]
    makers = {"add": _add, "sub": _sub, "pair": _pair, "group": _group, "times": _times, "split": _split}
    return makers[rng.choice(choices)](rng, value, person, item, rng.choice(["Then", "Next,", "After that,", "Later,"]))


def _amount(rng: random.Random, most: int) -> int:
    return rng.randint(2, min(most, 25)) if rng.random() < 0.6 else rng.randint(2, max(2, most))


def _add(rng, value, person, item, then) -> Event:
    name, they, them = person.name, person.they, person.them
    amount = _amount(rng, min(250, MAX_VALUE - value))
    verb, doing = rng.choice(
        [("buys", "buying"), ("finds", "finding"), ("wins", "winning"), ("collects", "collecting"),
         ("picks up", "picking up"), ("makes", "making"), ("receives", "receiving"), ("earns", "earning")]
    )  # fmt: skip
    story = rng.choice(
        [
            f"{then} {name} {verb} {amount} more {item}.",
            f"{then} {they} {verb} another {amount}.",
            f"A friend gives {them} {amount} {item}.",
            f"Later that day, {name} {verb} {amount} {item}.",
            f"{name}'s aunt adds {amount} {item} to the pile.",
        ]
    )
    steps = [
        f"After {doing} {amount} more, {name} has {{eq}} {item}.",
        f"{name} now has {{eq}} {item}.",
        f"Adding the {amount} new ones gives {{eq}}.",
        f"So {they} has {{eq}} {item} now.",
        f"{{eq}}, so {name} has {{r}} {item}.",
        f"With {amount} more there are {{eq}} {item}.",
    ]
    return Event(story, steps, "+", amount)


def _sub(rng, value, person, item, then) -> Event:
    name, they, their = person.name, person.they, person.their
    amount = _amount(rng, min(250, value - 3))
    verb, doing = rng.choice(
        [("gives away", "giving away"), ("loses", "losing"), ("sells", "selling"), ("uses", "using"),
         ("eats", "eating"), ("donates", "donating"), ("breaks", "breaking"), ("trades away", "trading away")]
    )  # fmt: skip
    story = rng.choice(
        [
            f"{then} {name} {verb} {amount} {item}.",
            f"{then} {they} {verb} {amount} of them.",
            f"{amount} of the {item} get lost on the way home.",
            f"{name} {verb} {amount} {item} before lunch.",
            f"{name}'s brother takes {amount} {item} from {their} pile.",
        ]
    )
    steps = [
        f"After {doing} {amount}, {name} has {{eq}} {item}.",
        f"So {they} has {{eq}} left.",
        f"Taking away {amount} leaves {{eq}} {item}.",
        f"{name} has {{eq}} {item} left.",
        f"{{eq}}, so {they} has {{r}} {item} left.",
        f"Now there are {{eq}} {item}.",
    ]
    return Event(story, steps, "-", amount)


def _group(rng, value, person, item, then) -> Event:
    name, they = person.name, person.they
    count = rng.randint(2, 9) if rng.random() < 0.7 else rng.randint(10, 25)
    most = max(2, (MAX_VALUE - value) // count)
    size = rng.randint(2, min(12, most)) if rng.random() < 0.6 else rng.randint(2, min(50, most))
    box = rng.choice(CONTAINERS)
    story = rng.choice(
        [
            f"{then} {name} gets {count} {box} with {size} {item} in each.",
            f"{then} {they} buys {count} {box} of {size} {item}.",
            f"Each of the {count} {box} {name} receives holds {size} {item}.",
            f"{name} collects {size} {item} per day for {count} days.",
            f"{then} {name} opens {count} {box}, and every one has {size} {item} inside.",
        ]
    )
    group_steps = [
        f"The {count} {box} hold {{eq}} {item}.",
        f"{count} groups of {size} make {{eq}}.",
        f"That is {{eq}} new {item}.",
        f"{{eq}} {item} are added.",
    ]
    steps = [
        f"Together, {name} has {{eq}} {item}.",
        f"So {they} has {{eq}} {item} in all.",
        "In total that makes {eq}.",
        f"{{eq}}, so {name} has {{r}} {item}.",
    ]
    return Event(story, steps, "+", count * size, (count, "*", size), group_steps)


def _pair(rng, value, person, item, then) -> Event:
    """Two amounts that come or go together: their sum from the story's numbers first, then the total, as
    people write "12 + 15 = 27 new ones" and then "35 + 27 = 62"."""
    name, they = person.name, person.they
    adding = value < 20 or rng.random() < 0.6
    most = max(2, min(40, (MAX_VALUE - value if adding else value - 3) // 2))
    first, second = rng.randint(2, most), rng.randint(2, most)
    friend, other = rng.sample([n for n in SHE + HE if n != name], 2)
    if adding:
        story = rng.choice(
            [
                f"{then} {name} gets {first} {item} from {friend} and {second} from {other}.",
                f"{then} {they} buys {first} red {item} and {second} blue ones.",
                f"On Tuesday {name} finds {first} {item}, and on Wednesday {second} more.",
            ]
        )
        part_steps = [f"{name} gets {{eq}} new {item}.", "Both days bring {eq}.", f"That adds {{eq}} {item}."]
        steps = [f"Now {name} has {{eq}} {item}.", f"So {they} has {{eq}} in all.", f"{{eq}}, so {name} has {{r}}."]
        return Event(story, steps, "+", first + second, (first, "+", second), part_steps)
    story = rng.choice(
        [
            f"{then} {name} gives {first} {item} to {friend} and {second} to {other}.",
            f"{then} {they} loses {first} {item} on Monday and {second} on Tuesday.",
        ]
    )
    part_steps = [f"{name} gives away {{eq}} {item}.", f"Altogether {{eq}} {item} are gone."]
    steps = [f"{name} has {{eq}} {item} left.", f"That leaves {name} {{eq}} {item}.", f"{{eq}}, so {they} keeps {{r}}."]
    return Event(story, steps, "-", first + second, (first, "+", second), part_steps)


def _times(rng, value, person, item, then) -> Event:
    name, they = person.name, person.they
    factor = 2 if 3 * value > MAX_VALUE or rng.random() < 0.6 else 3
    story = {
        2: [f"{then} {name} doubles the number of {item}.", f"By the evening {they} has twice as many {item}.",
            f"{then} the number of {item} {name} owns doubles."],
        3: [f"{then} {name} triples the number of {item}.", f"By the evening {they} has three times as many {item}.",
            f"{then} {name}'s {item} triple in number."],
    }[factor]  # fmt: skip
    word = {2: "Twice", 3: "Three times"}[factor]
    steps = [
        f"{word} as many is {{eq}} {item}.",
        f"{name} now has {{eq}} {item}.",
        f"So {they} has {{eq}} {item}.",
        f"{{eq}}, so {name} ends up with {{r}} {item}.",
    ]
    return Event(rng.choice(story), steps, "*", factor)


def _split(rng, value, person, item, then) -> Event:
    name, they = person.name, person.they
    parts = rng.choice([parts for parts in (2, 3, 4, 5) if value % parts == 0])
    if parts == 2 and rng.random() < 0.5:
        halves = [f"{then} {name} gives half of the {item} to a friend.", f"{then} {they} sells half of them."]
        story = rng.choice(halves)
    else:
        story = rng.choice(
            [
                f"{then} {name} splits the {item} equally into {parts} piles and keeps one pile.",
                f"{then} {they} shares them equally among {parts} friends, {name} included, and keeps one share.",
            ]
        )
    steps = [
        f"Each share is {{eq}} {item}.",
        f"Splitting them gives {{eq}}, so {name} keeps {{r}}.",
        f"So {they} keeps {{eq}} {item}.",
        f"{name} is left with {{eq}} {item}.",
    ]
    return Event(story, steps, "/", parts)


def solve(problem: Problem) -> list[tuple[str, list[str], int, str, int, int]]:
    """The exact computation: (kind, templates, left, operation, right, result) per step, before the answer step."""
    computations, value = [], problem.start
    for event in problem.events:
        if event.part:
            left, operation, right = event.part
            computations.append(("part", event.part_steps, left, operation, right, apply(left, operation, right)))
        result = apply(value, event.operation, event.operand)
        computations.append(("total", event.steps, value, event.operation, event.operand, result))
        value = result
    return computations


def pick_style(problem: Problem, rng: random.Random) -> Style:
    picks = tuple(rng.randrange(len(templates)) for _, templates, *_ in solve(problem))
    return Style(picks, rng.choice(SYMBOLS), rng.choice(ANSWERS))


def render_step(template: str, style: Style, left: int, operation: str, right: int, result: int) -> str:
    shown = {"*": style.symbols[0], "/": style.symbols[1]}.get(operation, operation)
    equation = f"{left} {shown} {right} = {result}"
    step = template.format(eq=equation, r=result)
    return step[0].upper() + step[1:]


def answer_step(problem: Problem, style: Style, value: int) -> str:
    return style.answer.format(n=value, name=problem.person.name, item=problem.item)


def correct_solution(problem: Problem, rng: random.Random) -> Solution:
    style = pick_style(problem, rng)
    steps = [
        render_step(templates[pick], style, left, operation, right, result)
        for pick, (_, templates, left, operation, right, result) in zip(style.picks, solve(problem), strict=True)
    ]
    steps.append(answer_step(problem, style, problem.answer))
    return Solution(steps, -1, problem.answer)


def faulty_solution(problem: Problem, rng: random.Random, kind: str) -> Solution:
    """Inject one error of `kind` at a random computation step and carry on from its result.

    A draw that the rest of the solution would not carry exactly (a later split that no longer comes out
    even, a count below zero, or a wrong track that happens to reach the right answer) is drawn again, so
    the label stays exact; a wrong last result always carries."""
    style, computations = pick_style(problem, rng), len(solve(problem))
    for _ in range(50):
        if solution := _inject_at(problem, rng, kind, style, rng.randrange(computations)):
            return solution
    return _inject_at(problem, rng, "calculation", style, computations - 1)


def _inject_at(problem: Problem, rng: random.Random, kind: str, style: Style, at: int) -> Solution | None:
    steps, value, part, shown = [], problem.start, None, [problem.start]
    computations = zip(solve(problem), style.picks, strict=True)
    for index, ((step_kind, templates, left, operation, right, _), pick) in enumerate(computations):
        if step_kind == "total":
            left = value
            if part is not None:
                right = part
        if index > at and operation == "/" and left % right:
            return None
        result = apply(left, operation, right)
        if result < 0:
            return None
        if index == at:
            written = _inject(rng, kind, problem, shown, step_kind, left, operation, right, result)
            left, operation, right, result = written
        steps.append(render_step(templates[pick], style, left, operation, right, result))
        carried = apply(left, operation, right) if kind == "slip" and index == at else result
        if step_kind == "part":
            part = carried
        else:
            value, part = carried, None
            shown.append(result)
    if (value == problem.answer) != (kind == "slip"):
        return None
    steps.append(answer_step(problem, style, value))
    return Solution(steps, at, value, kind)


def _inject(rng, kind, problem, shown, step_kind, left, operation, right, result) -> tuple[int, str, int, int]:
    """The step as the faulty solution writes it: (left, operation, right, result).

    `shown` holds the values of the quantity written so far, which a copy error may pick up.
    """
    if kind == "copy":
        earlier = set(shown) - {left}
        earlier = {n for n in earlier if n < left} if operation == "-" else earlier
        if operation == "/":
            earlier = {n for n in earlier if n % right == 0}
        if step_kind == "total" and earlier and (operation == "/" or rng.random() < 0.5):
            left = rng.choice(sorted(earlier))  # an earlier value of the quantity instead of the current one
        elif operation == "*":
            right = rng.choice([n for n in range(2, 10) if n != right])
        elif operation in "+-":
            candidates = {e.operand for e in problem.events} | {problem.start}
            candidates = {n for n in candidates if n != right and (operation == "+" or n < left)}
            right = rng.choice(sorted(candidates)) if candidates and rng.random() < 0.5 else wrong_number(rng, right)
            if operation == "-" and right >= left:
                return left, operation, right, wrong_number(rng, result)
        else:
            return left, operation, right, wrong_number(rng, result)
        return left, operation, right, apply(left, operation, right)
    if kind == "operation":
        wrong = {"+": "-" if right < left else "*", "-": "+", "*": "+", "/": "*"}[operation]
        if step_kind == "part" and operation == "*":
            wrong = "+"
        if not (wrong == "*" and right > 9 and operation == "+"):
            return left, wrong, right, apply(left, wrong, right)
    return left, operation, right, wrong_number(rng, result)  # calculation and slip


def wrong_number(rng: random.Random, exact: int) -> int:
    """A plausible wrong result, off in any digit: a small slip in the last digit, a dropped or extra carry
    (off by ten or a hundred), one digit replaced, or two neighbouring digits swapped."""
    digits = str(exact)
    for _ in range(20):
        how = rng.random()
        if how < 0.3:
            wrong = exact + rng.choice([-1, 1]) * rng.randint(1, 5)
        elif how < 0.6:
            wrong = exact + rng.choice([-1, 1]) * rng.choice([10, 10, 20, 100])
        elif how < 0.85 or len(digits) < 2:
            position = rng.randrange(len(digits))
            replaced = rng.choice([d for d in "0123456789" if d != digits[position] and (position or d != "0")])
            wrong = int(digits[:position] + replaced + digits[position + 1 :])
        else:
            position = rng.randrange(len(digits) - 1)
            wrong = int(digits[:position] + digits[position + 1] + digits[position] + digits[position + 2 :])
        if 0 < wrong != exact:
            return wrong
    return exact + 1


def sample_solution(problem: Problem, rng: random.Random, error_rate: float) -> Solution:
    if rng.random() >= error_rate:
        return correct_solution(problem, rng)
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
