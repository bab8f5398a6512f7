"""The engine: token-budget batches, order, optional batch wait, workers that compute batches at once, and a worker
that survives failures."""

import threading
import time
from collections import deque

import pytest
import torch

from service.engine import Engine
from service.engine.batching import take_batch
from service.metrics import Metrics
from service.prm.scorer import PackedScorer
from service.threads import size_this_threads_pool

TOLERANCE = 1e-5


def sample(histogram, suffix: str) -> float:
    return next(s.value for s in histogram.collect()[0].samples if s.name.endswith(suffix))


def test_engine_batches_under_the_token_budget_and_keeps_order(prm, encoded):
    budget = 2 * max(len(item) for item in encoded)
    metrics = Metrics()
    engine = Engine(PackedScorer(prm), metrics, max_batch_tokens=budget)
    futures = [engine.submit(encoded[:5]), engine.submit(encoded[5:])]  # queued before the worker starts
    engine.start()
    results = futures[0].result(timeout=30) + futures[1].result(timeout=30)
    engine.stop()
    expected = PackedScorer(prm).score(encoded).scores
    for got, want in zip(results, expected, strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE)
    assert sample(metrics.batch_sequences, "_sum") == len(encoded)
    assert 1 < sample(metrics.batch_sequences, "_count") < len(encoded)  # several per batch, several batches
    assert sample(metrics.batch_tokens, "_sum") == sum(len(item) for item in encoded)


class Overlap:
    """The real scorer, recording how many batches are inside it at once and each worker's torch thread count."""

    def __init__(self, scorer):
        self.scorer, self.inside, self.most, self.threads = scorer, 0, 0, set()
        self.overlaps = scorer.overlaps
        self.lock = threading.Lock()

    def launch(self, items):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.threads.add((threading.current_thread().name, torch.get_num_threads()))
        try:
            time.sleep(0.05)  # long enough for the other worker to take the next batch meanwhile
            return self.scorer.launch(items)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_compute_batches_at_once_each_with_its_own_threads(prm, encoded, workers):
    """One request of many batches wakes every worker; each sets its own thread count; scores are unchanged."""
    scorer = Overlap(PackedScorer(prm))
    shares = {0: 1, 1: 2}
    engine = Engine(
        scorer, Metrics(), max_batch_tokens=max(len(item) for item in encoded), workers=workers,
        on_worker_start=lambda number: size_this_threads_pool(shares[number]),
    )  # fmt: skip
    engine.start()
    try:
        results = engine.submit(encoded).result(timeout=60)
    finally:
        engine.stop()
    expected = PackedScorer(prm).score(encoded).scores
    for got, want in zip(results, expected, strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE)
    assert scorer.most == workers
    assert scorer.threads == {(f"prm-engine-{number}", shares[number]) for number in range(workers)}


def test_start_returns_once_every_worker_has_run_its_start_hook(prm):
    """Readiness waits for what the hook prepares (each worker's thread share and compiled kernels)."""
    done = []

    def slow_start(number: int) -> None:
        time.sleep(0.2 * (number + 1))
        done.append(number)

    engine = Engine(PackedScorer(prm), Metrics(), max_batch_tokens=512, workers=2, on_worker_start=slow_start)
    engine.start()
    try:
        assert sorted(done) == [0, 1]
    finally:
        engine.stop()


def test_take_batch_fills_the_budget_in_arrival_order():
    queue = deque(["a" * n for n in (3, 4, 2, 9, 1)])
    assert [len(x) for x in take_batch(queue, 9)] == [3, 4, 2]
    assert [len(x) for x in take_batch(queue, 5)] == [9]  # alone over budget: still served
    assert [len(x) for x in take_batch(queue, 5)] == [1]
    assert not queue


@pytest.mark.parametrize(("wait_ms", "batches"), [(0, 2), (400, 1)])
def test_max_wait_holds_a_partial_batch_for_more_work(prm, encoded, wait_ms, batches):
    metrics = Metrics()
    engine = Engine(PackedScorer(prm), metrics, max_batch_tokens=100_000, max_wait_ms=wait_ms)
    engine.start()
    first = engine.submit(encoded[:1])
    time.sleep(0.15)
    second = engine.submit(encoded[1:2])
    first.result(timeout=30), second.result(timeout=30)
    engine.stop()
    assert sample(metrics.batch_sequences, "_count") == batches


class FailsOnLongBatches:
    """Fault injection: a backend whose forward fails for batches with more than one sequence."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.overlaps = scorer.overlaps

    def launch(self, items):
        if len(items) > 1:
            raise RuntimeError("injected device fault")
        return self.scorer.launch(items)


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on(prm, encoded):
    engine = Engine(FailsOnLongBatches(PackedScorer(prm)), Metrics())
    failing = engine.submit(encoded[:3])
    engine.start()
    with pytest.raises(RuntimeError, match="injected device fault"):
        failing.result(timeout=30)
    alone = engine.submit(encoded[3:4]).result(timeout=30)
    engine.stop()
    assert alone[0] == pytest.approx(PackedScorer(prm).score(encoded[3:4]).scores[0], abs=TOLERANCE)


class FailsWhenCollected:
    """Fault injection: the error surfaces when the result is collected, as an asynchronous CUDA error does."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.overlaps = True  # as on a GPU: the error surfaces a batch later
        self.launches = 0

    def launch(self, items):
        self.launches += 1
        if self.launches == 1:

            def broken():
                raise RuntimeError("injected asynchronous fault")

            return broken
        return self.scorer.launch(items)


def test_a_fault_at_collection_fails_only_that_batch(prm, encoded):
    engine = Engine(FailsWhenCollected(PackedScorer(prm)), Metrics(), max_batch_tokens=1)
    first, second = engine.submit(encoded[:1]), engine.submit(encoded[1:2])  # one batch each
    engine.start()
    with pytest.raises(RuntimeError, match="asynchronous"):
        first.result(timeout=30)
    assert second.result(timeout=30)[0] == pytest.approx(PackedScorer(prm).score(encoded[1:2]).scores[0], abs=TOLERANCE)
    engine.stop()


class WaitsForAnAnswer:
    """The real CPU scorer, whose next launch waits until `answered` (a caller's future) is done."""

    def __init__(self, scorer):
        self.scorer, self.overlaps, self.answered, self.launches = scorer, scorer.overlaps, None, 0

    def launch(self, items):
        self.launches += 1
        if self.launches == 2:
            self.answered.result(timeout=10)  # held until the next batch is computed, it would time out here
        return self.scorer.launch(items)


def test_a_cpu_batch_is_answered_before_the_next_is_computed(prm, encoded):
    """A search loop's next request follows the answer: on CPU a batch must not wait for the next one."""
    scorer = WaitsForAnAnswer(PackedScorer(prm))
    assert not scorer.overlaps
    engine = Engine(scorer, Metrics(), max_batch_tokens=1)
    first, second = engine.submit(encoded[:1]), engine.submit(encoded[1:2])  # one batch each
    scorer.answered = first
    engine.start()
    try:
        assert second.result(timeout=30)[0] == pytest.approx(
            PackedScorer(prm).score(encoded[1:2]).scores[0], abs=TOLERANCE
        )
        assert first.result(timeout=1)
    finally:
        engine.stop()


def test_a_worker_that_wakes_to_only_abandoned_work_waits_for_more(prm, encoded):
    """Callers that went away (a load generator stopping mid-run) leave only cancelled work in the queue: the
    worker drops it and must go on waiting, not end, or the next request would never be answered."""
    engine = Engine(PackedScorer(prm), Metrics())
    abandoned = engine.submit(encoded[:2])
    assert abandoned.cancel()
    engine.start()  # the worker wakes to a queue that holds only the cancelled work
    try:
        later = engine.submit(encoded[2:3])
        assert later.result(timeout=30)[0] == pytest.approx(
            PackedScorer(prm).score(encoded[2:3]).scores[0], abs=TOLERANCE
        )
    finally:
        engine.stop()
