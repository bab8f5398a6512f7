"""Faults and abandoned work: slow batches, disconnects, deadlines, out of memory, a dying worker.

Faults are injected by wrapping the engine's backend (`engine.scorer`) of a real server running
in this process on loopback; everything else is the production path.
"""

import socket
import threading
import time

import httpx
import pytest

from service.api.app import create_app
from service.config import ServeConfig
from service.engine import DeadlineExceeded, Engine, EngineStopped
from service.metrics import Metrics
from service.prm.errors import DeviceOutOfMemory
from service.prm.formatting import ScoringInput
from service.prm.loading import load_prm
from service.prm.scorer import PackedScorer
from tests.helpers import serve_in_thread

TOLERANCE = 1e-5


class Slow:
    """Each batch takes `delay` seconds longer; remembers the sizes of the sequences it was given."""

    def __init__(self, scorer, delay: float):
        self.scorer, self.delay, self.seen = scorer, delay, []
        self.overlaps = scorer.overlaps

    def launch(self, items):
        self.seen.extend(len(item) for item in items)
        time.sleep(self.delay)
        return self.scorer.launch(items)


class OutOfMemoryAbove:
    """Raises the scorer's out-of-memory error for batches of more than `limit` tokens."""

    def __init__(self, scorer, limit: int):
        self.scorer, self.limit, self.batches = scorer, limit, []
        self.overlaps = scorer.overlaps

    def launch(self, items):
        tokens = sum(len(item) for item in items)
        if tokens > self.limit:
            raise DeviceOutOfMemory(f"injected: {tokens} tokens")
        self.batches.append(len(items))
        return self.scorer.launch(items)


class DiesOnFirstBatch:
    overlaps = True

    def launch(self, items):
        raise SystemExit("injected: the worker thread dies")


@pytest.fixture
def live(checkpoint):
    """`create_app` served by uvicorn on loopback in this process, so a test can wrap its backend. One engine
    worker: while it is inside a slow batch, later work waits in the queue."""
    app = create_app(ServeConfig(model=str(checkpoint), engine_workers=1))
    with serve_in_thread(app) as url:
        deadline = time.monotonic() + 60
        while not app.state.runtime.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        yield app, url


def body(item: dict) -> dict:
    return {"problem": item["problem"], "steps": item["steps"]}


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def in_background(url: str, payload: dict, headers: dict | None = None) -> tuple[threading.Thread, list]:
    result = []
    thread = threading.Thread(
        target=lambda: result.append(httpx.post(f"{url}/score_steps", json=payload, headers=headers, timeout=60))
    )
    thread.start()
    return thread, result


def test_disconnected_clients_work_is_dropped_not_computed(live, processbench_items):
    app, url = live
    engine = app.state.runtime.serving.engine
    slow = engine.scorer = Slow(engine.scorer, delay=1.0)
    busy, _ = in_background(url, body(processbench_items[0]))
    time.sleep(0.3)  # the worker is now inside the slow batch
    gone = body(processbench_items[11])
    raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    payload = httpx.Request("POST", f"{url}/score_steps", json=gone)
    head = "POST /score_steps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    raw.sendall(f"{head}{len(payload.read())}\r\n\r\n".encode() + payload.read())
    time.sleep(0.3)
    raw.close()
    busy.join()
    deadline = time.monotonic() + 10
    name = 'prm_dropped_sequences_total{reason="client_disconnected"}'
    while metric(url, name) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(url, name) == 1
    time.sleep(0.3)
    assert len(slow.seen) == 1  # only the first request's sequence ever reached the model


def test_deadline_header_drops_work_that_could_not_start(live, processbench_items):
    app, url = live
    engine = app.state.runtime.serving.engine
    engine.scorer = Slow(engine.scorer, delay=1.0)
    busy, first = in_background(url, body(processbench_items[0]))
    time.sleep(0.3)
    late = httpx.post(
        f"{url}/score_steps", json=body(processbench_items[1]), headers={"X-Request-Timeout": "0.2"}, timeout=60
    )
    busy.join()
    assert first[0].status_code == 200
    assert late.status_code == 504 and late.json()["type"] == "deadline_exceeded"
    assert metric(url, 'prm_dropped_sequences_total{reason="deadline_exceeded"}') == 1
    bad = httpx.post(f"{url}/score_steps", json=body(processbench_items[1]), headers={"X-Request-Timeout": "soon"})
    assert bad.status_code == 422 and "X-Request-Timeout" in bad.json()["error"]


def test_out_of_memory_splits_the_batch_and_reports_an_item_too_big(live, reference, processbench_items):
    app, url = live
    engine = app.state.runtime.serving.engine
    encoded_lengths = [
        len(app.state.runtime.serving.prm.formatter.encode(ScoringInput(i["problem"], i["steps"])))
        for i in processbench_items
    ]
    limit = max(encoded_lengths) + 1
    fault = engine.scorer = OutOfMemoryAbove(engine.scorer, limit)
    response = httpx.post(f"{url}/score_steps", json={"items": [body(i) for i in processbench_items]}, timeout=60)
    assert response.status_code == 200
    for item, result in zip(processbench_items, response.json()["results"], strict=True):
        assert result["step_scores"] == pytest.approx(
            reference.step_rewards(item["problem"], item["steps"]), abs=TOLERANCE
        )
    assert sum(fault.batches) == len(processbench_items) and metric(url, "prm_oom_splits_total") >= 1

    fault.limit = min(encoded_lengths) - 1
    too_big = httpx.post(f"{url}/score_steps", json=body(processbench_items[0]), timeout=60)
    assert too_big.status_code == 507
    assert too_big.json()["type"] == "device_out_of_memory" and "alone does not fit" in too_big.json()["error"]


def test_a_dead_worker_turns_readiness_off(live, processbench_items):
    app, url = live
    app.state.runtime.serving.engine.scorer = DiesOnFirstBatch()
    response = httpx.post(f"{url}/score_steps", json=body(processbench_items[0]), timeout=60)
    assert response.status_code == 503
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 503 and "worker died" in ready.json()["error"]
    assert httpx.post(f"{url}/score_steps", json=body(processbench_items[0])).status_code == 503


def test_engine_deadline_and_death_without_http(checkpoint, processbench_items):
    prm = load_prm(str(checkpoint))
    items = [prm.formatter.encode(ScoringInput(i["problem"], i["steps"])) for i in processbench_items[:2]]
    engine = Engine(PackedScorer(prm), Metrics())
    expired = engine.submit(items[:1], timeout=0.01)
    time.sleep(0.05)
    engine.start()
    with pytest.raises(DeadlineExceeded):
        expired.result(timeout=10)
    engine.stop()

    deaths = []
    dying = Engine(DiesOnFirstBatch(), Metrics(), on_worker_death=deaths.append)
    first = dying.submit(items[:1])
    dying.start()
    with pytest.raises(EngineStopped):
        first.result(timeout=10)
    assert len(deaths) == 1 and not dying.alive
    with pytest.raises(EngineStopped):
        dying.submit(items[:1])


def test_requests_beyond_the_in_flight_bound_get_429_at_once(live, processbench_items):
    from dataclasses import replace

    app, url = live
    runtime = app.state.runtime
    runtime.config = replace(runtime.config, max_concurrent_requests=1)
    runtime.serving.engine.scorer = Slow(runtime.serving.engine.scorer, delay=1.0)
    busy, first = in_background(url, body(processbench_items[0]))
    time.sleep(0.3)
    started = time.monotonic()
    shed = httpx.post(f"{url}/score_steps", json=body(processbench_items[1]), timeout=60)
    assert time.monotonic() - started < 0.5
    assert shed.status_code == 429 and shed.headers["Retry-After"] == "1" and shed.json()["type"] == "overloaded"
    busy.join()
    assert first[0].status_code == 200
    assert httpx.post(f"{url}/score_steps", json=body(processbench_items[1]), timeout=60).status_code == 200


def test_a_caller_cancelling_mid_batch_does_not_kill_the_worker(checkpoint, processbench_items):
    prm = load_prm(str(checkpoint))
    items = [prm.formatter.encode(ScoringInput(i["problem"], i["steps"])) for i in processbench_items[:2]]
    engine = Engine(Slow(PackedScorer(prm), delay=0.5), Metrics())
    engine.start()
    abandoned = engine.submit(items[:1])
    time.sleep(0.2)  # its batch is being computed
    assert abandoned.cancel()
    assert engine.submit(items[1:]).result(timeout=10)[0] == pytest.approx(
        PackedScorer(prm).score(items[1:]).scores[0], abs=TOLERANCE
    )
    assert engine.alive
    engine.stop()
