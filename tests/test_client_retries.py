"""The clients ride out restarts, dead servers and overload, and give up when they should.

Real `prm serve` processes on loopback, really stopped and started; a scripted stand-in only where a
test must choose the server's answers (502, 504, 422).
"""

import asyncio
import logging
import signal
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service.client import AsyncPRMClient, PRMClient, PRMError
from tests.helpers import Server, free_port, serve_in_thread

TOLERANCE = 1e-5


def call_every(kind: str, urls, items: list[dict], interval: float, **settings) -> list:
    """Score `items` one call at a time, `interval` seconds apart, with the sync or async client.

    Returns each call's scores, or the exception it raised.
    """

    def outcome(call):
        try:
            return call()
        except PRMError as error:
            return error

    if kind == "sync":
        results = []
        with PRMClient(urls, **settings) as prm:
            for item in items:
                results.append(outcome(lambda item=item: prm.score_steps(item["problem"], item["steps"])))
                time.sleep(interval)
        return results

    async def run():
        results = []
        async with AsyncPRMClient(urls, **settings) as prm:
            for item in items:
                try:
                    results.append(await prm.score_steps(item["problem"], item["steps"]))
                except PRMError as error:
                    results.append(error)
                await asyncio.sleep(interval)
        return results

    return asyncio.run(run())


def in_thread(function, *args, **kwargs) -> tuple[threading.Thread, list]:
    result = []
    thread = threading.Thread(target=lambda: result.append(function(*args, **kwargs)))
    thread.start()
    return thread, result


def scoring_requests_seen(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    mine = 'prm_requests_total{endpoint="/score_steps"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(mine))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_120_calls_ride_out_a_rolling_restart_on_the_same_port(kind, checkpoint, reference, processbench_items):
    port = free_port()
    first = Server("--model", str(checkpoint), port=port).wait_ready()
    items = [processbench_items[i % 6] for i in range(120)]
    thread, result = in_thread(call_every, kind, first.url, items, 0.1)
    time.sleep(2)
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(30) == 0
    time.sleep(3)  # the new pod starts 3 s after the old one exited
    second = Server("--model", str(checkpoint), port=port)
    try:
        thread.join(180)
    finally:
        second.stop()
    outcomes = result[0]
    assert [o for o in outcomes if isinstance(o, Exception)] == []
    for item, scores in zip(items, outcomes, strict=True):
        assert scores == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=TOLERANCE)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_two_servers_one_killed_mid_run_the_survivor_takes_the_load(kind, checkpoint, processbench_items):
    doomed = Server("--model", str(checkpoint))
    survivor = Server("--model", str(checkpoint))
    doomed.wait_ready(), survivor.wait_ready()
    try:
        before = scoring_requests_seen(survivor.url)
        thread, result = in_thread(call_every, kind, f"{doomed.url},{survivor.url}", processbench_items * 4, 0.05)
        time.sleep(0.5)
        doomed.process.kill()
        doomed.process.wait(10)
        thread.join(120)
        served_by_survivor = scoring_requests_seen(survivor.url) - before
    finally:
        survivor.stop()
    outcomes = result[0]
    assert [o for o in outcomes if isinstance(o, Exception)] == []
    assert len(outcomes) == len(processbench_items) * 4
    # the survivor answered its half before the kill and every call after it
    assert served_by_survivor > len(outcomes) / 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_deadline_shorter_than_the_outage_raises_after_about_the_deadline(kind, caplog):
    nowhere = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="service.client"):
        [outcome] = call_every(kind, nowhere, [{"problem": "p", "steps": ["a"]}], 0, retry_timeout=1.5)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, PRMError) and (outcome.status, outcome.type) == (None, "unreachable")
    assert "ConnectError" in str(outcome) and isinstance(outcome.__cause__, Exception)
    assert 1.4 <= elapsed < 3.0
    retries = [r.getMessage() for r in caplog.records if r.name == "service.client"]
    assert retries and "ConnectError" in retries[0] and retries[0].endswith("retry 1")


@pytest.fixture
def scripted():
    """A stand-in whose answers the test lists: (status, Retry-After or None) per call, then 200."""
    app = FastAPI()
    answers: list[tuple[int, str | None]] = []
    calls: list[float] = []

    @app.post("/score_steps")
    async def score_steps():
        calls.append(time.monotonic())
        if answers:
            status, retry_after = answers.pop(0)
            headers = {"Retry-After": retry_after} if retry_after else None
            return JSONResponse({"error": f"scripted {status}", "type": "scripted"}, status, headers=headers)
        return {"step_scores": [0.25]}

    with serve_in_thread(app) as url:
        yield url, answers, calls


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_502_504_408_and_429_are_retried_and_retry_after_is_honoured(kind, scripted):
    url, answers, calls = scripted
    answers.extend([(502, None), (504, None), (408, None), (429, "0.3")])
    assert call_every(kind, url, [{"problem": "p", "steps": ["a"]}], 0) == [[0.25]]
    assert len(calls) == 5 and calls[4] - calls[3] >= 0.3


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_a_4xx_is_not_retried(kind, status, scripted):
    url, answers, calls = scripted
    answers.append((status, None))
    [outcome] = call_every(kind, url, [{"problem": "p", "steps": ["a"]}], 0)
    assert (outcome.status, outcome.type, str(outcome)) == (status, "scripted", f"{status} scripted: scripted {status}")
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_422_from_the_real_server_reaches_it_once(kind, server):
    before = scoring_requests_seen(server.url)
    [outcome] = call_every(kind, server.url, [{"problem": "p", "steps": []}], 0)
    assert (outcome.status, outcome.type) == (422, "invalid_request")
    assert scoring_requests_seen(server.url) - before == 1


def test_async_client_gives_up_after_max_retries(scripted):
    url, answers, calls = scripted
    answers.extend([(429, "0.1")] * 3)
    [outcome] = call_every("async", url, [{"problem": "p", "steps": ["a"]}], 0, max_retries=1)
    assert (outcome.status, outcome.type, len(calls)) == (429, "scripted", 2)
