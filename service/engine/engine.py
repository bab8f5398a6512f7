"""The engine: callers submit encoded sequences, worker threads batch and score them.

Only the workers touch the model, so the event loop never blocks on a forward pass. Results come back
through `concurrent.futures.Future`, which asyncio code awaits with `asyncio.wrap_future`. Each worker
takes the next batch from one shared queue: one worker on a GPU; on a CPU several can compute batches at
once, each with its own share of the threads (`on_worker_start` sizes them), so that a thread preempted by
the HTTP work or a neighbour stalls only its own pool, not every parallel region of one pool of all threads.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from service.engine.batching import take_batch
from service.metrics import Metrics
from service.prm.errors import DeviceOutOfMemory
from service.prm.formatting import EncodedItem
from service.prm.scorer import Pending, Scorer

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Admitting the work would exceed the queue bound; the caller should retry later."""


class EngineStopped(RuntimeError):
    """The engine is shutting down (or its worker died) and takes no more work."""


class DeadlineExceeded(RuntimeError):
    """The work had not started when the caller's deadline passed, so it was dropped."""


@dataclass
class _Job:
    """One caller's sequences; its future resolves when every sequence is scored."""

    size: int
    future: Future = field(default_factory=Future)
    results: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class _Work:
    job: _Job
    index: int
    item: EncodedItem
    enqueued_at: float
    deadline: float | None  # perf_counter time after which unstarted work is dropped

    def __len__(self) -> int:
        return len(self.item)


class Engine:
    def __init__(
        self,
        scorer: Scorer,
        metrics: Metrics,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 0.0,
        max_queue_tokens: int = 0,
        on_worker_death: Callable[[BaseException], None] | None = None,
        workers: int = 1,
        on_worker_start: Callable[[int], None] | None = None,
    ):
        """`max_wait_ms` > 0 holds a partial batch that long for more work; `max_queue_tokens` 0 = unbounded.

        `on_worker_death` is called if a worker thread ever dies (a bug), so the process can stop
        reporting ready and exit rather than hang with a dead worker. `on_worker_start(n)` runs first in
        worker n's thread (where thread-local settings such as torch's thread count take effect).
        """
        self.scorer = scorer
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_tokens = max_queue_tokens
        self._queue: deque[_Work] = deque()
        self._taken: dict[int, list[_Work]] = {}  # by worker: out of the queue, not answered (failed if one dies)
        self._queued_tokens = 0
        self._condition = threading.Condition()
        self._stopping = False
        self.on_worker_death = on_worker_death
        self.on_worker_start = on_worker_start
        self.worker_error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(number,), name=f"prm-engine-{number}", daemon=True)
            for number in range(workers)
        ]
        self._started = [threading.Event() for _ in range(workers)]

    def start(self) -> None:
        """Start the workers; returns once each has run `on_worker_start` (or died)."""
        for thread in self._threads:
            thread.start()
        for started in self._started:
            started.wait()

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def alive(self) -> bool:
        return self.worker_error is None

    def submit(self, items: list[EncodedItem], timeout: float | None = None, tokens: int | None = None) -> Future:
        """Queue `items` (`tokens` long in all, if the caller has counted); the future yields their step scores
        in the same order.

        Work not started within `timeout` seconds is dropped with `DeadlineExceeded`; cancelling
        the future (the client went away) drops the work that has not started.
        """
        job = _Job(size=len(items))
        if not items:
            job.future.set_result([])
            return job.future
        tokens = sum(len(item) for item in items) if tokens is None else tokens
        now = time.perf_counter()
        with self._condition:
            if self._stopping or self.worker_error is not None:
                raise EngineStopped("the engine is shutting down")
            if self.max_queue_tokens and self._queue and self._queued_tokens + tokens > self.max_queue_tokens:
                raise Overloaded(f"{self._queued_tokens} tokens are queued; the bound is {self.max_queue_tokens}")
            deadline = now + timeout if timeout else None
            self._queue.extend(_Work(job, index, item, now, deadline) for index, item in enumerate(items))
            self._queued_tokens += tokens
            self._publish_queue()
            self._condition.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish queued work, then end the worker threads (`timeout`: for all of them together)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _run(self, number: int) -> None:
        try:
            try:
                if self.on_worker_start:
                    self.on_worker_start(number)
            finally:
                self._started[number].set()
            self._loop(number)
        except BaseException as error:  # a bug: never let the worker vanish silently
            log.critical("engine worker %d died", number, exc_info=error)
            died = EngineStopped(f"the engine worker died: {error!r}")
            with self._condition:
                self.worker_error = error
                for work in [*self._queue, *(work for taken in self._taken.values() for work in taken)]:
                    _settle(work.job.future, error=died)
                self._queue.clear()
                self._condition.notify_all()  # the other workers stop too
            if self.on_worker_death:
                self.on_worker_death(error)

    def _loop(self, number: int) -> None:
        """Launch the next batch before collecting the one in flight, so the device never waits for the host.

        A scorer that computes a batch inside `launch` (`overlaps` off: the CPU) has nothing to overlap, and
        its batch is answered at once: held until the next one is computed, its callers would wait for both
        (a search loop or an RL group, whose next request follows the answer, would wait twice as long).
        """
        in_flight, overlaps = None, self.scorer.overlaps
        while True:
            batch = self._next_batch(wait=in_flight is None)
            if batch is None and in_flight is None:
                return
            self._taken[number] = [*(batch or []), *(in_flight[0] if in_flight else [])]
            launched = self._launch(batch) if batch else None
            if in_flight is not None:
                self._finish(*in_flight)
            in_flight = launched
            if not overlaps and in_flight is not None:
                self._finish(*in_flight)
                in_flight = None

    def _next_batch(self, wait: bool) -> list[_Work] | None:
        """The next batch; None when the engine stops, or at once when `wait` is off and nothing is queued.

        Work whose callers went away is dropped here; if that was all there was, a waiting worker waits again
        (returning None then would end it while the engine still runs)."""
        with self._condition:
            while True:
                if wait:
                    self._condition.wait_for(lambda: self._queue or self._stopping or self.worker_error is not None)
                if self.worker_error is not None:
                    return None
                self._drop_abandoned()
                if self._queue:
                    break
                if not wait or self._stopping:
                    return None
            if wait and self.max_wait_s and self._queued_tokens < self.max_batch_tokens and not self._stopping:
                deadline = self._queue[0].enqueued_at + self.max_wait_s
                self._condition.wait_for(
                    lambda: self._queued_tokens >= self.max_batch_tokens or self._stopping,
                    timeout=max(0.0, deadline - time.perf_counter()),
                )
            batch = take_batch(self._queue, self.max_batch_tokens)
            self._queued_tokens -= sum(len(work) for work in batch)
            self._publish_queue()
            if self._queue:  # more than one batch was queued: a waiting worker takes the next
                self._condition.notify()
            return batch

    def _drop_abandoned(self) -> None:
        """Remove work whose caller went away or whose deadline passed; it is never computed."""
        now = time.perf_counter()
        kept: deque[_Work] = deque()
        for work in self._queue:
            future = work.job.future
            if future.cancelled():
                self.metrics.dropped_sequences.labels(reason="client_disconnected").inc()
            elif work.deadline is not None and now > work.deadline:
                self.metrics.dropped_sequences.labels(reason="deadline_exceeded").inc()
                _settle(future, error=DeadlineExceeded("the request's deadline passed before its work started"))
            elif not future.done():
                kept.append(work)
                continue
            self._queued_tokens -= len(work)
        if len(kept) != len(self._queue):
            self._queue = kept
            self._publish_queue()

    def _launch(self, batch: list[_Work]) -> tuple[list[_Work], Pending, float] | None:
        started = time.perf_counter()
        for work in batch:
            self.metrics.queue_duration.observe(started - work.enqueued_at)
        try:
            return batch, self.scorer.launch([work.item for work in batch]), started
        except DeviceOutOfMemory as error:
            self._split_after_oom(batch, error)
        except Exception as error:  # the worker must survive; the callers get the error
            self._fail(batch, error)
        return None

    def _split_after_oom(self, batch: list[_Work], error: DeviceOutOfMemory) -> None:
        """Retry the halves of a batch that did not fit; a sequence that alone does not fit fails."""
        if len(batch) == 1:
            message = f"a sequence of {len(batch[0])} tokens alone does not fit in device memory"
            self._fail(batch, DeviceOutOfMemory(message))
            return
        self.metrics.oom_splits.inc()
        log.warning("out of memory on a batch of %d sequences; retrying its halves: %s", len(batch), error)
        middle = len(batch) // 2
        for part in (batch[:middle], batch[middle:]):
            if (launched := self._launch(part)) is not None:
                self._finish(*launched)

    def _finish(self, batch: list[_Work], pending: Pending, started: float) -> None:
        try:
            scored = pending()
        except Exception as error:
            self._fail(batch, error)
            return
        self.metrics.inference_duration.observe(time.perf_counter() - started)
        self.metrics.batch_sequences.observe(len(batch))
        tokens = sum(len(work) for work in batch)
        self.metrics.batch_tokens.observe(tokens)
        self.metrics.tokens_scored.inc(tokens)
        self.metrics.prefix_tokens_reused.inc(tokens - scored.computed_tokens - scored.cached_tokens)
        self.metrics.steps_scored.inc(sum(len(s) for s in scored.scores))
        for work, item_scores in zip(batch, scored.scores, strict=True):
            job = work.job
            if job.future.done():  # an earlier batch of this job failed
                continue
            job.results[work.index] = item_scores
            if len(job.results) == job.size:
                _settle(job.future, result=[job.results[index] for index in range(job.size)])

    def _fail(self, batch: list[_Work], error: BaseException) -> None:
        log.error("scoring a batch of %d sequences failed: %r", len(batch), error)
        for work in batch:
            _settle(work.job.future, error=error)

    def _publish_queue(self) -> None:
        self.metrics.queue_sequences.set(len(self._queue))
        self.metrics.queue_tokens.set(self._queued_tokens)


def _settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Resolve a caller's future unless it is already done: the event loop may cancel it at any moment."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
