"""The data jobs' building blocks: answer extraction, grading in worker processes, problem loaders,
resumable outputs, shards and the judge's verdict parsing."""

import asyncio
import json
import time
from pathlib import Path

import pytest

from service.jobs.data.annotate_judge import judge_prompt, parse_verdict
from service.jobs.data.answers import Grader, extract_answer, last_boxed
from service.jobs.data.problems import load_problems
from service.jobs.data.resumable import JsonlOutput, Shard, pending
from service.jobs.inputs import InputError

FIXTURES = Path(__file__).parent / "fixtures"


def equal_or_hang(gold: str, prediction: str) -> bool:
    """A grader that never returns on "hang", as math-verify might on a pathological expression."""
    if prediction == "hang":
        time.sleep(3600)
    return gold == prediction


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$. Check: \\boxed{ 3 }.", "3"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{5} and then \\boxed{6", "5"),  # the last complete box
        ("\\fbox{12}", "12"),
        ("We get 4 apples. The answer is $72$.\n", "72"),
        ("The answer is: 1,000.", "1,000"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("48/2 = 24 and 48+24 = 1,072 clips", "1072"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_balances_braces():
    assert last_boxed("\\boxed{\\frac{a}{b}} text") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{") is None
    assert last_boxed("nothing") is None


def test_grader_uses_math_verify_gold_first():
    async def grade() -> list:
        async with Grader(workers=1) as grader:
            pairs = [
                ("18", "18.0"),
                ("\\frac{1}{2}", "0.5"),
                ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
                ("6+9i", "9i+6"),
                ("18", "17"),
                ("18", None),
                ("18", "\\frac{"),
            ]
            return [await grader.grade(gold, prediction) for gold, prediction in pairs]

    assert asyncio.run(grade()) == [True, True, True, True, False, False, False]


def test_a_grade_that_hangs_times_out_and_its_worker_is_replaced():
    async def grade() -> tuple:
        async with Grader(workers=1, timeout=2, function=f"{__name__}:equal_or_hang") as grader:
            before = await grader.grade("a", "a")
            worker = grader._all[0].process
            started = time.monotonic()
            hung = await grader.grade("a", "hang")
            waited = time.monotonic() - started
            after = await asyncio.gather(grader.grade("b", "b"), grader.grade("b", "c"))
            return before, hung, waited, after, worker.poll(), grader.timeouts, grader._all[0].process.poll()

    before, hung, waited, after, old_exit, timeouts, new_exit = asyncio.run(grade())
    assert (before, hung, after, timeouts) == (True, None, [True, False], 1)
    assert 2 <= waited < 10
    assert old_exit is not None and new_exit is None  # the stuck worker was killed; its replacement serves


def test_loaders_read_ours_gsm8k_and_math500(tmp_path):
    gsm8k = load_problems(FIXTURES / "gsm8k_test_head.jsonl")
    assert [(p["id"], p["answer"]) for p in gsm8k] == [("gsm8k-0", "18"), ("gsm8k-1", "3"), ("gsm8k-2", "70000")]
    assert gsm8k[0]["problem"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    math500 = load_problems(FIXTURES / "math500_test_sample.jsonl")
    assert [(p["id"], p["answer"]) for p in math500] == [
        ("test/intermediate_algebra/134.json", "-50"),
        ("test/algebra/1098.json", "6+9i"),
    ]
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"id": 7, "problem": "1+1?", "answer": 2}) + "\n\n")
    assert load_problems(ours) == [{"id": "7", "problem": "1+1?", "answer": "2"}]
    ours.write_text(json.dumps({"question": "no gold"}) + "\n")
    with pytest.raises(InputError, match="none of ours"):
        load_problems(ours)


def test_output_resumes_after_a_cut_write(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlOutput(path) as output:
        output.write({"id": "a", "x": 1})
        output.write({"id": "b", "x": "é"})
    complete = path.read_bytes()
    path.write_bytes(complete + b'{"id": "c", "x"')  # killed in the middle of a line

    with JsonlOutput(path) as output:
        assert output.done == {"a", "b"}
        assert path.read_bytes() == complete
        output.write({"id": "c", "x": 3})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]

    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(InputError, match="not resuming"):
        JsonlOutput(path)


def test_shards_partition_ids_deterministically(tmp_path):
    ids = [f"gsm8k-{i}/{j}" for i in range(50) for j in range(4)]
    parts = [[i for i in ids if i in Shard(index, 3)] for index in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(len(part) > 40 for part in parts)
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ["a", "b", "a", "c"]))
    assert [r["id"] for r in pending(path, Shard(0, 1), done={"b"})] == ["a", "c"]  # each id once


def test_judge_prompt_and_verdicts():
    prompt = judge_prompt("What is 1+1?", ["1+1 = 3.", "So 3."])
    assert "<paragraph_0>\n1+1 = 3.\n</paragraph_0>\n\n<paragraph_1>\nSo 3.\n</paragraph_1>" in prompt
    assert "\\boxed{-1}" in prompt and "What is 1+1?" in prompt
    assert parse_verdict("Paragraph 1 is wrong: \\boxed{0}... no, \\boxed{1}", 2) == 1
    assert parse_verdict("All fine. \\boxed{ -1 }", 2) == -1
    for critique in ("\\boxed{2}", "\\boxed{-2}", "\\boxed{1.5}", "\\boxed{\\text{1}}", "paragraph 1", ""):
        assert parse_verdict(critique, 2) is None
