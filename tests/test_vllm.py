"""`prm serve --vllm-url` in front of a real vLLM server (its CPU build, in its own venv), and this
service's /pooling against vLLM's own for the same requests.

The vLLM venv is `.venv-vllm` at the repository root (`.ci/run` installs it; ../shared/VLLM_CPU.md has the
recipe), or the interpreter named by PRM_TEST_VLLM_PYTHON. Without one these tests skip, saying so.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.checkpoints import build_random_checkpoint
from tests.helpers import REPO, Server, free_port, start_vllm_pooling, tokenizer_corpus, wait_until_answering
from tests.model_card import ModelCardPRM

VLLM_PYTHON = Path(os.environ.get("PRM_TEST_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON} (.ci/run makes one)")
TOLERANCE = 1e-4  # vLLM's CPU kernels against the model card's eager float32: 3e-6 seen


class VLLM:
    """`python -m vllm.entrypoints.openai.api_server` in pooling mode on loopback, tuned as its CPU docs say."""

    def __init__(self, checkpoint: Path, separator_id: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.checkpoint = checkpoint
        self.separator_id = separator_id
        self.process: subprocess.Popen | None = None

    def start(self) -> "VLLM":
        log = self.checkpoint.parent / f"vllm-{self.port}.log"
        self.log = log.open("w")  # noqa: SIM115 (closed in stop)
        self.process = start_vllm_pooling(VLLM_PYTHON, self.checkpoint, self.port, self.separator_id, self.log)
        wait_until_answering(f"{self.url}/health", self.process, log.read_text, timeout=300)  # 40-60 s here
        return self

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def vllm_checkpoint(tmp_path_factory) -> Path:
    """The Qwen2.5-Math-PRM layout with a head_dim vLLM's CPU attention takes (64)."""
    directory = tmp_path_factory.mktemp("vllm") / "prm"
    return build_random_checkpoint(
        directory, tokenizer_corpus(), hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=512, dtype=torch.float32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def upstream(vllm_checkpoint):
    reference = ModelCardPRM(vllm_checkpoint)
    server = VLLM(vllm_checkpoint, reference.tokenizer.convert_tokens_to_ids("<extra_0>")).start()
    yield server, reference
    server.stop()


@pytest.fixture(scope="module")
def front(upstream, vllm_checkpoint):
    vllm, _ = upstream
    server = Server("--model", str(vllm_checkpoint), "--vllm-url", vllm.url).wait_ready(timeout=120)
    yield server
    server.stop()


def test_the_front_scores_like_the_model_card(front, upstream, processbench_items):
    _, reference = upstream
    items = processbench_items[:6]
    body = {"items": [{"problem": item["problem"], "steps": item["steps"]} for item in items]}
    response = httpx.post(f"{front.url}/score_steps", json=body, timeout=120)
    assert response.status_code == 200, response.text
    for item, result in zip(items, response.json()["results"], strict=True):
        expected = reference.step_rewards(item["problem"], item["steps"])
        assert result["step_scores"] == pytest.approx(expected, abs=TOLERANCE)
    tokens = sum(reference.conversation(item["problem"], item["steps"]).shape[1] for item in items)
    assert response.json()["usage"]["tokens"] == tokens
    card = httpx.get(f"{front.url}/v1/models").json()["data"][0]
    assert card["device"] == f"vllm {upstream[0].url}"
    metrics = httpx.get(f"{front.url}/metrics").text
    assert 'prm_upstream_requests_total{outcome="success"}' in metrics and "prm_upstream_up 1.0" in metrics


def test_our_pooling_answers_as_vllms_own(upstream, vllm_checkpoint, processbench_items):
    vllm, reference = upstream
    texts = [reference.conversation_text(item["problem"], item["steps"]) for item in processbench_items[:3]]
    ids = [reference.tokenizer(text)["input_ids"] for text in texts]
    ours = Server("--model", str(vllm_checkpoint)).wait_ready()  # the in-process engine, not vLLM
    try:
        for given in (texts[0], texts, ids[0], ids):
            body = {"model": str(vllm_checkpoint), "input": given, "task": "token_classify"}
            theirs = httpx.post(f"{vllm.url}/pooling", json=body, timeout=120).json()
            mine = httpx.post(f"{ours.url}/pooling", json={**body, "model": None}, timeout=120).json()
            assert mine["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
            assert mine["usage"]["total_tokens"] == theirs["usage"]["total_tokens"]
            assert len(mine["data"]) == len(theirs["data"])
            for row, their_row in zip(mine["data"], theirs["data"], strict=True):
                assert row["index"] == their_row["index"] and row["object"] == their_row["object"]
                assert len(row["data"]) == len(their_row["data"])
                for pair, their_pair in zip(row["data"], their_row["data"], strict=True):
                    assert pair == pytest.approx(their_pair, abs=TOLERANCE)
    finally:
        ours.stop()


def test_a_model_vllm_does_not_serve_is_refused_at_start(upstream, vllm_checkpoint):
    vllm, _ = upstream
    server = Server("--model", str(vllm_checkpoint), "--vllm-url", vllm.url, "--vllm-model", "Qwen/other")
    code = server.process.wait(120)
    assert code == 1 and f"serves ['{vllm_checkpoint}'], not 'Qwen/other'" in server.output()


def test_health_follows_the_upstream_down_and_back(front, upstream, processbench_items):
    vllm, reference = upstream
    item = processbench_items[0]
    body = {"problem": item["problem"], "steps": item["steps"]}
    vllm.stop()
    deadline = time.monotonic() + 5
    while httpx.get(f"{front.url}/ready").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    ready = httpx.get(f"{front.url}/ready")
    started = time.monotonic()
    refused = httpx.post(f"{front.url}/score_steps", json=body, timeout=30)
    assert ready.status_code == 503 and "unreachable" in ready.json()["error"]
    assert refused.status_code == 503 and refused.json()["type"] == "upstream_unavailable"
    assert refused.headers["Retry-After"] and time.monotonic() - started < 3  # answered, not hung
    assert "prm_upstream_up 0.0" in httpx.get(f"{front.url}/metrics").text

    vllm.start()  # the same port: serving resumes by itself
    deadline = time.monotonic() + 10
    while httpx.get(f"{front.url}/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    scored = httpx.post(f"{front.url}/score_steps", json=body, timeout=60)
    assert scored.status_code == 200
    assert scored.json()["step_scores"] == pytest.approx(reference.step_rewards(**body), abs=TOLERANCE)
