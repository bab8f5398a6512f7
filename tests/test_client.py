"""The Python clients against the real server, and their retry policy against a scripted one."""

import asyncio
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service.client import AsyncPRMClient, PRMClient, PRMError
from tests.conftest import serve_in_thread

TOLERANCE = 1e-5


def test_sync_client(server, reference, processbench_items):
    item = processbench_items[1]
    expected = reference.step_rewards(item["problem"], item["steps"])
    with PRMClient(server.url) as prm:
        assert prm.score_steps(item["problem"], item["steps"]) == pytest.approx(expected, abs=TOLERANCE)
        batch = prm.score_batch([{"problem": item["problem"], "steps": item["steps"]}] * 2)
        assert batch[1] == pytest.approx(expected, abs=TOLERANCE)
        ranked = prm.rerank(item["problem"], [item["steps"], "\n\n".join(item["steps"])], aggregation="min")
        assert sorted(r["index"] for r in ranked) == [0, 1]
        assert ranked[0]["score"] == pytest.approx(min(expected), abs=TOLERANCE)
        with pytest.raises(PRMError) as error:
            prm.score_steps("p", [])
        assert (error.value.status, error.value.type) == (422, "invalid_request")


def test_async_client(server, reference, processbench_items):
    items = processbench_items[:4]

    async def run():
        async with AsyncPRMClient(server.url) as prm:
            return await asyncio.gather(*(prm.score_steps(i["problem"], i["steps"]) for i in items))

    for item, scores in zip(items, asyncio.run(run()), strict=True):
        assert scores == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=TOLERANCE)


@pytest.fixture
def overloaded_server():
    """A scripted stand-in that sheds the first two calls with 429 and Retry-After: 0.3."""
    app = FastAPI()
    calls = []

    @app.post("/score_steps")
    async def score_steps():
        calls.append(time.monotonic())
        if len(calls) <= 2:
            return JSONResponse(
                {"error": "busy", "type": "overloaded"}, status_code=429, headers={"Retry-After": "0.3"}
            )
        return {"step_scores": [0.25]}

    with serve_in_thread(app) as url:
        yield url, calls


def test_client_retries_429_honouring_retry_after(overloaded_server):
    url, calls = overloaded_server
    with PRMClient(url) as prm:
        assert prm.score_steps("p", ["a"]) == [0.25]
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.3 and calls[2] - calls[1] >= 0.3


def test_async_client_gives_up_after_max_retries(overloaded_server):
    url, calls = overloaded_server

    async def run():
        async with AsyncPRMClient(url, max_retries=1) as prm:
            await prm.score_steps("p", ["a"])

    with pytest.raises(PRMError) as error:
        asyncio.run(run())
    assert (error.value.status, error.value.type, len(calls)) == (429, "overloaded", 2)
