"""Under load: hot reload fails no request; SIGTERM answers everything admitted and exits 0."""

import shutil
import signal
import threading
import time

import httpx
import pytest

from tests.checkpoints import build_random_checkpoint
from tests.helpers import Server, run_prm, tokenizer_corpus
from tests.model_card import ModelCardPRM

TOLERANCE = 1e-5


class Load:
    """`workers` threads posting items in turn until stopped; keeps every outcome."""

    def __init__(self, url: str, items: list[dict], workers: int = 6, headers: dict | None = None):
        self.url, self.items, self.outcomes, self.headers = url, items, [], headers
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def run(self, offset: int) -> None:
        index = offset
        with httpx.Client(timeout=60, headers=self.headers) as client:
            while not self.stopping.is_set():
                item = self.items[index % len(self.items)]
                try:
                    response = client.post(f"{self.url}/score_steps", json=item)
                    self.outcomes.append((item, response))
                except httpx.TransportError as error:
                    self.outcomes.append((item, error))
                    time.sleep(0.05)
                index += 1

    def stop(self) -> list:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        return self.outcomes


def bodies(items: list[dict]) -> list[dict]:
    return [{"problem": i["problem"], "steps": i["steps"]} for i in items]


def assert_each_answer_matches_its_version(outcomes: list, references: dict[str, ModelCardPRM]) -> None:
    """Every request got a 200 scored by the version it names, and every version answered some."""
    versions = set()
    for item, response in outcomes:
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        body = response.json()
        versions.add(body["model_version"])
        reference = references[body["model_version"]]
        assert body["step_scores"] == pytest.approx(reference.step_rewards(**item), abs=TOLERANCE)
    assert versions == set(references)


def test_reload_under_load_fails_nothing(tmp_path, checkpoint, processbench_items):
    live = shutil.copytree(checkpoint, tmp_path / "live")
    old = ModelCardPRM(live)
    server = Server("--model", str(live), env={"PRM_ADMIN_KEYS": "admin"}).wait_ready()
    try:
        old_version = httpx.get(f"{server.url}/ready").json()["model_version"]
        load = Load(server.url, bodies(processbench_items), headers={"Authorization": "Bearer admin"})
        time.sleep(1.0)
        retrained = build_random_checkpoint(tmp_path / "retrained", tokenizer_corpus(), seed=7)
        for file in retrained.glob("*.safetensors"):
            shutil.copy(file, live / file.name)
        new = ModelCardPRM(live)
        reloaded = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": "Bearer admin"}, timeout=60)
        time.sleep(1.0)
        outcomes = load.stop()
    finally:
        server.stop()
    assert reloaded.status_code == 200, reloaded.text
    new_version = reloaded.json()["model_version"]
    assert reloaded.json()["previous_version"] == old_version != new_version
    assert_each_answer_matches_its_version(outcomes, {old_version: old, new_version: new})


def test_sigterm_drains_admitted_requests_and_exits_zero(checkpoint, processbench_items):
    server = Server("--model", str(checkpoint), "--drain-timeout", "20").wait_ready()
    load = Load(server.url, bodies(processbench_items), workers=8)
    time.sleep(1.5)
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    outcomes = load.stop()
    assert code == 0, server.output()
    answered = [(item, r) for item, r in outcomes if isinstance(r, httpx.Response)]
    assert len(answered) > 8
    for _, response in answered:  # everything admitted was answered, and answered correctly
        assert response.status_code == 200, response.text
    refused = [r for _, r in outcomes if not isinstance(r, httpx.Response)]
    assert all(isinstance(error, httpx.TransportError) for error in refused)  # after the listener closed


def test_a_published_version_is_swapped_in_by_watch_under_load(tmp_path, checkpoint, processbench_items):
    store = tmp_path / "store"
    assert run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(store)).stdout.strip() == "v1"
    old = ModelCardPRM(store / "tiny" / "v1")
    server = Server("--store", str(store), "--watch", "0.2").wait_ready()  # no --model: the store's only model
    try:
        assert httpx.get(f"{server.url}/ready").json() == {"status": "ready", "model": "tiny", "model_version": "v1"}
        load = Load(server.url, bodies(processbench_items))
        time.sleep(1.0)
        retrained = build_random_checkpoint(tmp_path / "retrained", tokenizer_corpus(), seed=7)
        assert run_prm("publish", str(retrained), "--name", "tiny", "--store", str(store)).stdout.strip() == "v2"
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/ready").json()["model_version"] != "v2" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        outcomes = load.stop()
        card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    finally:
        server.stop()
    new = ModelCardPRM(store / "tiny" / "v2")
    assert (card["id"], card["version"]) == ("tiny", "v2")
    assert_each_answer_matches_its_version(outcomes, {"v1": old, "v2": new})


def test_admin_reload_takes_the_newest_version_unless_one_is_pinned(tmp_path, checkpoint):
    store = tmp_path / "store"
    for _ in range(2):
        run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(store))
    admin = {"Authorization": "Bearer admin"}
    newest = Server("--store", str(store), "--model", "tiny", env={"PRM_ADMIN_KEYS": "admin"})
    pinned = Server("--store", str(store), "--model", "tiny@v1", env={"PRM_ADMIN_KEYS": "admin"})
    try:
        newest.wait_ready(), pinned.wait_ready()
        run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(store))
        reloaded = httpx.post(f"{newest.url}/admin/reload", headers=admin, timeout=60).json()
        assert (reloaded["previous_version"], reloaded["model_version"]) == ("v2", "v3")
        reloaded = httpx.post(f"{pinned.url}/admin/reload", headers=admin, timeout=60).json()
        assert (reloaded["previous_version"], reloaded["model_version"]) == ("v1", "v1")
    finally:
        newest.stop(), pinned.stop()


def test_a_version_that_does_not_load_leaves_the_old_one_serving(tmp_path, checkpoint):
    store = tmp_path / "store"
    run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(store))
    server = Server("--store", str(store), "--watch", "0.2").wait_ready()
    try:
        damaged = shutil.copytree(checkpoint, tmp_path / "damaged")
        for weights in damaged.glob("*.safetensors"):  # as a bad disk or an interrupted copy would leave them
            weights.write_bytes(weights.read_bytes()[:100])
        assert run_prm("publish", str(damaged), "--name", "tiny", "--store", str(store)).stdout.strip() == "v2"
        time.sleep(3)
        ready = httpx.get(f"{server.url}/ready").json()
        scored = httpx.post(f"{server.url}/score_steps", json={"problem": "1+1?", "steps": ["2"]}, timeout=30)
    finally:
        server.stop()
    log = server.output()
    assert ready["model_version"] == "v1" and scored.status_code == 200, log
    assert log.count("a new version is in the store: reloading") == 1  # tried once, not every 0.2 s
