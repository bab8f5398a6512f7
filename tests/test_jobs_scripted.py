"""The data jobs' logic, exactly: `prm generate`, `annotate mc|judge` and `filter consensus` against a scripted
OpenAI-compatible server (tests/scripted_openai.py), plus resume, shards, retries and start-up errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.jobs.data.resumable import Shard
from service.jobs.train.scratch import train_tokenizer
from tests.checkpoints import SMOKE_TEST_CORPUS
from tests.helpers import free_port, serve_in_thread
from tests.scripted_openai import MODEL, scripted_app

RESPONSES = [
    ("a/0", "What is 7+7? #gold=14", "14", ["7+7 is 14.", "So \\boxed{14}."], True),
    ("a/1", "What is 7+7? #gold=14", "14", ["7+7 is 15. [wrong]", "So \\boxed{15}."], False),
    (
        "b/0",
        "What is half of 12, plus 1? #gold=7",
        "7",
        ["Half of 12 is 6. [shaky]", "6+1 = 8. [wrong]", "\\boxed{7}"],
        True,
    ),
    (
        "b/1",
        "What is half of 12, plus 1? #gold=7",
        "7",
        ["Half of 12 is 6.", "6+1 = 7. [judge-wrong]", "\\boxed{7}"],
        True,
    ),
    ("c/0", "What is 1+1? #gold=2 #judge=garbled", "2", ["1+1 = 2.", "\\boxed{2}"], True),
    ("c/1", "What is 1+1? #gold=2 #judge=99", "2", ["1+1 = 2.", "\\boxed{2}"], True),
]
K = 4


def prm(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(app, [str(arg) for arg in args])


def read(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return {record["id"]: record for record in records}


def write_responses(path: Path, rows=RESPONSES) -> Path:
    with open(path, "w") as file:
        for record_id, problem, answer, steps, correct in rows:
            record = {
                "id": record_id,
                "problem_id": record_id.split("/")[0],
                "problem": problem,
                "answer": answer,
                "steps": steps,
                "final_answer": answer if correct else "8",
                "correct": correct,
                "policy": MODEL,
            }
            file.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(SMOKE_TEST_CORPUS).save_pretrained(path)
    return path


@pytest.fixture
def server():
    application = scripted_app(max_n=3)
    with serve_in_thread(application) as url:
        yield f"{url}/v1", application.state.log


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, tokenizer_dir):
    """The six responses annotated once by both jobs: (responses, mc, judge, mc's CLI result, the server's log)."""
    directory = tmp_path_factory.mktemp("annotated")
    responses = write_responses(directory / "responses.jsonl")
    application = scripted_app(max_n=3)
    with serve_in_thread(application) as url:
        common = ["--in", responses, "--base-url", f"{url}/v1", "--model", MODEL, "--concurrency", 3]
        mc = prm(
            "annotate",
            "mc",
            *common,
            "--out",
            directory / "mc.jsonl",
            "--k",
            K,
            "--tokenizer",
            tokenizer_dir,
            "--grade-workers",
            1,
        )
        judge = prm("annotate", "judge", *common, "--out", directory / "judge.jsonl")
    assert mc.exit_code == 0, mc.output
    assert judge.exit_code == 0, judge.output
    return responses, directory / "mc.jsonl", directory / "judge.jsonl", mc, application.state.log


def test_generate_samples_n_per_problem_splits_steps_and_grades(server, tmp_path):
    url, log = server
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps({"id": "p1", "problem": "What is 7+7? #gold=14", "answer": "14"})
        + "\n"
        + json.dumps({"id": "p2", "problem": "What is 2*3? #gold=6", "answer": "6"})
        + "\n"
    )
    out = tmp_path / "responses.jsonl"
    result = prm(
        "generate",
        "--problems",
        problems,
        "--out",
        out,
        "--n",
        4,
        "--base-url",
        url,
        "--model",
        MODEL,
        "--grade-workers",
        1,
    )
    assert result.exit_code == 0, result.output

    records = read(out)
    assert sorted(records) == ["p1/0", "p1/1", "p1/2", "p1/3", "p2/0", "p2/1", "p2/2", "p2/3"]
    for problem_id, gold in (("p1", "14"), ("p2", "6")):
        for index in range(4):
            record = records[f"{problem_id}/{index}"]
            right = index % 2 == 0  # the scripted policy alternates
            assert record["steps"] == [
                "First step.",
                "Second step.",
                f"So the answer is \\boxed{{{gold if right else 'x'}}}.",
            ]
            assert record["final_answer"] == (gold if right else "x")
            assert record["correct"] is right
            assert record["problem_id"] == problem_id and record["answer"] == gold and record["policy"] == MODEL
    # The server returns at most 3 choices: n=4 is asked, then n=1 for the missing one.
    assert sorted(log) == [("policy", 1, 1)] * 2 + [("policy", 4, 3)] * 2
    assert "8 records written (0 already there), 0 failed; 8/8 completions in 4 requests" in result.output


def test_mc_counts_hits_per_step_and_stops_at_the_first_miss(annotated):
    responses, mc_path, _, result, log = annotated
    records = read(mc_path)
    expected = {
        "a/0": ([4, 4], -1),
        "a/1": ([0], 0),
        "b/0": ([2, 0], 1),  # [shaky]: half of the completions from it reach the answer
        "b/1": ([4, 4, 4], -1),
        "c/0": ([4, 4], -1),
        "c/1": ([4, 4], -1),
    }
    assert {key: (r["mc"]["correct"], r["mc"]["first_error"]) for key, r in records.items()} == expected
    assert all(record["mc"]["k"] == K for record in records.values())
    originals = read(responses)
    assert all({key: value for key, value in r.items() if key != "mc"} == originals[i] for i, r in records.items())
    # 12 annotated steps, each k=4 completions in two requests (3 choices, then 1).
    continuations = [entry for entry in log if entry[0] == "continue"]
    assert sorted(continuations) == [("continue", 1, 1)] * 12 + [("continue", 4, 3)] * 12
    assert "48/48 completions in 24 requests (0 retried)" in result.output


def test_judge_takes_the_boxed_index_and_never_guesses(annotated):
    _, _, judge_path, _, _ = annotated
    records = read(judge_path)
    verdicts = {key: record["judge"]["first_error"] for key, record in records.items()}
    assert verdicts == {"a/0": -1, "a/1": 0, "b/0": 1, "b/1": 1, "c/0": None, "c/1": None}
    assert records["c/0"]["judge"]["critique"] == "Every paragraph looks fine to me, I think."
    assert all(record["judge"]["model"] == MODEL for record in records.values())


def test_consensus_keeps_agreement_and_reports(annotated, tmp_path):
    _, mc_path, judge_path, _, _ = annotated
    judge_lines = judge_path.read_text().splitlines()
    partial_judge = tmp_path / "judge.jsonl"  # c/1 never judged: missing on one side
    partial_judge.write_text("".join(line + "\n" for line in judge_lines if json.loads(line)["id"] != "c/1"))
    out, report_path = tmp_path / "consensus.jsonl", tmp_path / "report.json"

    result = prm(
        "filter", "consensus", "--mc", mc_path, "--judge", partial_judge, "--out", out, "--report", report_path
    )
    assert result.exit_code == 0, result.output

    assert read(out) == {
        "a/0": {"id": "a/0", "prompt": RESPONSES[0][1], "completions": RESPONSES[0][3], "labels": [True, True]},
        "a/1": {"id": "a/1", "prompt": RESPONSES[1][1], "completions": RESPONSES[1][3][:1], "labels": [False]},
        "b/0": {"id": "b/0", "prompt": RESPONSES[2][1], "completions": RESPONSES[2][3][:2], "labels": [True, False]},
    }
    assert json.loads(report_path.read_text()) == {
        "mc_records": 6,
        "judge_records": 5,
        "joined": 5,
        "kept": 3,
        "dropped_disagreement": 1,
        "dropped_unparseable": 1,
        "dropped_missing": 1,
        "agreement_matrix": {"-1": {"-1": 1, "1": 1, "null": 1}, "0": {"0": 1}, "1": {"1": 1}},
        "right_answer_wrong_process": 1,  # b/0: its answer was graded right, its step 1 is wrong
        "right_answer_wrong_process_share": 1 / 3,
    }
    first = out.read_bytes()
    assert prm("filter", "consensus", "--mc", mc_path, "--judge", partial_judge, "--out", out).exit_code == 0
    assert out.read_bytes() == first  # a rerun rewrites the same file


def test_consensus_refuses_files_from_different_responses(annotated, tmp_path):
    _, mc_path, judge_path, _, _ = annotated
    changed = tmp_path / "judge.jsonl"
    records = [json.loads(line) for line in judge_path.read_text().splitlines()]
    records[0]["steps"] = ["something else"]
    changed.write_text("".join(json.dumps(record) + "\n" for record in records))
    result = prm("filter", "consensus", "--mc", mc_path, "--judge", changed, "--out", tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert "different steps" in result.output


def test_a_rerun_after_a_crash_finishes_without_duplicates(server, tmp_path):
    url, log = server
    responses = write_responses(tmp_path / "responses.jsonl")
    out = tmp_path / "judge.jsonl"
    args = ["annotate", "judge", "--in", responses, "--out", out, "--base-url", url, "--model", MODEL]
    assert prm(*args).exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1] + lines[2][:25])  # two records, then a write cut short

    log.clear()
    result = prm(*args)
    assert result.exit_code == 0, result.output
    assert "4 records written (2 already there), 0 failed" in result.output
    assert len(log) == 4  # only the missing records were asked for
    text = out.read_text()
    assert text.startswith(lines[0] + lines[1])
    assert sorted(read(out)) == sorted(row[0] for row in RESPONSES)

    log.clear()
    assert prm(*args).exit_code == 0
    assert log == [] and len(read(out)) == len(RESPONSES)  # nothing left to do


def test_generate_resumes_per_sample(server, tmp_path):
    url, log = server
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "problem": "What is 7+7? #gold=14", "answer": "14"}) + "\n")
    out = tmp_path / "responses.jsonl"
    args = [
        "generate",
        "--problems",
        problems,
        "--out",
        out,
        "--n",
        3,
        "--base-url",
        url,
        "--model",
        MODEL,
        "--grade-workers",
        1,
    ]
    assert prm(*args).exit_code == 0
    kept = [line for line in out.read_text().splitlines(keepends=True) if json.loads(line)["id"] != "p1/1"]
    out.write_text("".join(kept))
    log.clear()
    assert prm(*args).exit_code == 0
    assert log == [("policy", 1, 1)]
    assert sorted(read(out)) == ["p1/0", "p1/1", "p1/2"]


def test_shards_are_disjoint_and_cover_the_input(server, tmp_path):
    url, _ = server
    responses = write_responses(tmp_path / "responses.jsonl")
    parts = []
    for index in range(2):
        out = tmp_path / f"judge.{index}.jsonl"
        result = prm(
            "annotate",
            "judge",
            "--in",
            responses,
            "--out",
            out,
            "--base-url",
            url,
            "--model",
            MODEL,
            "--shard",
            f"{index}/2",
        )
        assert result.exit_code == 0, result.output
        parts.append(set(read(out)))
        assert parts[-1] == {row[0] for row in RESPONSES if row[0] in Shard(index, 2)}
    assert parts[0].isdisjoint(parts[1])
    assert parts[0] | parts[1] == {row[0] for row in RESPONSES}
    assert parts[0] and parts[1]

    for bad in ("2/2", "1", "a/b"):
        result = prm(
            "annotate",
            "judge",
            "--in",
            responses,
            "--out",
            tmp_path / "x.jsonl",
            "--base-url",
            url,
            "--model",
            MODEL,
            "--shard",
            bad,
        )
        assert result.exit_code == 2 and "--shard" in result.output


def test_transient_errors_are_retried_and_lasting_ones_fail_the_record(server, tmp_path):
    url, _ = server
    rows = [
        ("r/0", "What is 1+1? #gold=2 #fail=429", "2", ["1+1 = 2. [wrong]", "\\boxed{2}"], True),
        ("r/1", "What is 1+1? #gold=2 #fail=500", "2", ["1+1 = 2.", "\\boxed{2}"], True),
        ("r/2", "What is 1+1? #gold=2 #fail=always", "2", ["1+1 = 2.", "\\boxed{2}"], True),
    ]
    responses = write_responses(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "judge.jsonl"
    result = prm(
        "annotate", "judge", "--in", responses, "--out", out, "--base-url", url, "--model", MODEL, "--max-retries", 1
    )
    assert result.exit_code == 1
    assert "2 records written (0 already there), 1 failed" in result.output
    assert "2/3 completions in 6 requests (3 retried)" in result.output
    assert "r/2 failed: POST /chat/completions failed 2 times; the last time with HTTP 500" in result.output
    assert {key: record["judge"]["first_error"] for key, record in read(out).items()} == {"r/0": 0, "r/1": -1}


def test_unreachable_server_and_unknown_model_stop_the_job_clearly(server, tmp_path):
    url, _ = server
    responses = write_responses(tmp_path / "responses.jsonl")
    out = tmp_path / "judge.jsonl"
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    result = prm("annotate", "judge", "--in", responses, "--out", out, "--base-url", nowhere, "--model", MODEL)
    assert result.exit_code == 2
    assert f"cannot reach {nowhere}/models" in result.output

    result = prm("annotate", "judge", "--in", responses, "--out", out, "--base-url", url, "--model", "gpt-9")
    assert result.exit_code == 2
    assert f"does not serve a model named 'gpt-9'; it serves: {MODEL}" in result.output

    result = prm("annotate", "judge", "--in", responses, "--out", out, "--model", MODEL)
    assert result.exit_code == 2 and "--base-url" in result.output
