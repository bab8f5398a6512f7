"""The Python clients against the real server (their retry policy: test_client_retries.py)."""

import asyncio

import pytest

from service.client import AsyncPRMClient, PRMClient, PRMError

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
