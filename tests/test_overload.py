"""Beyond the queue bound requests are shed at once with 429 and Retry-After; admitted ones stay correct."""

import asyncio
from pathlib import Path

import httpx
import pytest

from service.engine import Engine, Overloaded
from service.metrics import Metrics
from service.prm.formatting import EncodedItem
from tests.helpers import Server


class NeverCalled:
    overlaps = True

    def launch(self, items):
        raise AssertionError("nothing should be scored")


def test_engine_refuses_work_beyond_the_queue_bound():
    engine = Engine(NeverCalled(), Metrics(), max_queue_tokens=10)  # not started: work stays queued
    item = EncodedItem(list(range(6)), [5])
    engine.submit([item])
    with pytest.raises(Overloaded):
        engine.submit([item])
    # a job larger than the bound is still admitted when nothing waits, so no input is unservable
    assert not Engine(NeverCalled(), Metrics(), max_queue_tokens=1).submit([item]).done()


def test_http_overload_is_shed_with_429(checkpoint, reference, processbench_items):
    server = Server("--model", str(checkpoint), "--max-queue-tokens", "1", "--max-batch-tokens", "256").wait_ready()
    work = processbench_items * 8

    async def blast():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/score_steps", json={"problem": i["problem"], "steps": i["steps"]}) for i in work)
            )

    try:
        asyncio.run(blast())  # warm the allocator and caches
        rss_before = rss_bytes(server.process.pid)
        responses = []
        for _ in range(3):  # several times capacity, for a bounded time
            responses += asyncio.run(blast())
        growth = rss_bytes(server.process.pid) - rss_before
    finally:
        server.stop()
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB under sustained overload"
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    for item, response in zip(work * 3, responses, strict=True):
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["type"] == "overloaded"
        else:
            expected = reference.step_rewards(item["problem"], item["steps"])
            assert response.json()["step_scores"] == pytest.approx(expected, abs=1e-5)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
