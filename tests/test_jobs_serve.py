"""The data jobs end to end through real models: a tiny random causal LM behind `transformers serve` (a real
OpenAI-compatible server process on loopback), and the same model in-process with `--backend transformers`.
Its answers are gibberish, so these check counts and the records' shape, not labels."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.checkpoints import SMOKE_TEST_CORPUS, build_random_causal_lm
from tests.helpers import free_port, wait_until_answering

FIXTURES = Path(__file__).parent / "fixtures"
PROBLEMS = FIXTURES / "gsm8k_test_head.jsonl"  # 3 problems
N, K = 2, 2


def prm(*args) -> None:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_random_causal_lm(tmp_path_factory.mktemp("policy") / "tiny-lm", SMOKE_TEST_CORPUS)


@pytest.fixture(scope="module")
def transformers_serve(policy):
    """`transformers serve` pinned to the tiny model; yields its /v1 URL."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read by the poll, closed with the fixture)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from transformers.cli.transformers import main; main()",
            "serve",
            str(policy),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    wait_until_answering(f"http://127.0.0.1:{port}/health", process, lambda: log.seek(0) or log.read(), timeout=120)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)
    log.close()


def check_pipeline(tmp_path: Path, policy: Path, backend: list, honours_n: bool) -> dict:
    """generate -> annotate mc -> annotate judge -> filter consensus; check what each wrote; return the report.

    `honours_n`: whether one request returns all k samples (transformers serve ignores `n`: then the client
    must notice and ask k times)."""
    model = ["--model", policy, *backend]
    responses, mc, judge, out = (tmp_path / name for name in ("responses", "mc", "judge", "consensus"))
    result = prm(
        "generate",
        "--problems",
        PROBLEMS,
        "--out",
        responses,
        "--n",
        N,
        "--max-tokens",
        24,
        "--temperature",
        1.0,
        "--grade-workers",
        1,
        *model,
    )
    assert f"{3 * N}/{3 * N} completions" in result.output
    generated = read(responses)
    assert sorted(r["id"] for r in generated) == [f"gsm8k-{p}/{i}" for p in range(3) for i in range(N)]
    golds = {"gsm8k-0": "18", "gsm8k-1": "3", "gsm8k-2": "70000"}
    for record in generated:
        assert record["answer"] == golds[record["problem_id"]]
        assert record["policy"] == str(policy)
        assert all(isinstance(step, str) and step and step == step.strip() for step in record["steps"])
        assert record["correct"] in (True, False) and (record["final_answer"] is not None or not record["correct"])

    result = prm(
        "annotate", "mc", "--in", responses, "--out", mc, "--k", K, "--max-tokens", 8, "--grade-workers", 1, *model
    )
    annotated = {r["id"]: r for r in read(mc)}
    assert sorted(annotated) == sorted(r["id"] for r in generated)
    steps = 0
    for record in annotated.values():
        counts, first_error = record["mc"]["correct"], record["mc"]["first_error"]
        assert record["mc"]["k"] == K and all(0 <= c <= K for c in counts)
        assert len(counts) <= len(record["steps"])
        assert first_error == (len(counts) - 1 if 0 in counts else -1)
        assert 0 not in counts[:-1] and (first_error != -1 or len(counts) == len(record["steps"]))
        steps += len(counts)
    requests = steps if honours_n else steps * K
    assert f"{steps * K}/{steps * K} completions in {requests} requests" in result.output

    prm("annotate", "judge", "--in", responses, "--out", judge, "--max-tokens", 8, *model)
    judged = {r["id"]: r for r in read(judge)}
    assert sorted(judged) == sorted(annotated)
    for record in judged.values():
        verdict = record["judge"]
        assert verdict["model"] == str(policy) and isinstance(verdict["critique"], str)
        assert verdict["first_error"] is None or -1 <= verdict["first_error"] < len(record["steps"])

    result = prm("filter", "consensus", "--mc", mc, "--judge", judge, "--out", out)
    report = json.loads(result.stdout)
    assert report["joined"] == 3 * N and report["kept"] == len(read(out))
    return report


def test_jobs_through_transformers_serve(transformers_serve, policy, tmp_path):
    check_pipeline(tmp_path, policy, ["--base-url", transformers_serve], honours_n=False)


def test_jobs_with_the_in_process_transformers_backend(policy, tmp_path):
    check_pipeline(
        tmp_path, policy, ["--backend", "transformers", "--device", "cpu", "--batch-size", 4], honours_n=True
    )
