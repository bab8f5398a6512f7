"""What the HTTP layer scores with: the loaded PRM behind its engine, loaded in the background.

The process answers /health while a large checkpoint loads; it reports ready only
after one warm-up batch has gone through the engine.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from service.config import DEFAULT_PREFIX_CACHE_MB, ServeConfig, batch_tokens, engine_workers, thread_shares
from service.engine import Engine, EngineStopped, Overloaded
from service.metrics import Metrics
from service.prm.checkpoint import CheckpointError
from service.prm.formatting import EncodedItem, ScoringInput
from service.prm.loading import FAMILY, LoadedPRM, load_prm, load_tokenizer
from service.prm.prefix_cache import PrefixCache, PrefixCacheTooLarge, free_bytes
from service.prm.scorer import PackedScorer
from service.store import open_store, resolve_model
from service.threads import size_this_threads_pool, thread_budget
from service.upstream import UpstreamUnavailable, VLLMScorer

log = logging.getLogger(__name__)
MAX_COMPILED_ROWS = 8192  # beyond, a batch's kernels compile when it first comes (bounded by the buckets)

UPSTREAM_POLL_SECONDS = 1.0

# Turns one request into token ids with a model's tokenizer; run again if a reload swaps the model.
Encoder = Callable[[LoadedPRM], list[EncodedItem]]

WARMUP_ITEM = ScoringInput(problem="What is 1+1?", steps=["1+1 = 2", "The answer is \\boxed{2}."])


class NotReady(RuntimeError):
    """No model is loaded yet (or loading failed)."""


class ReloadInProgress(RuntimeError):
    """Another reload is already loading a model."""


@dataclass(frozen=True)
class Serving:
    """A loaded model and the engine in front of it; swapped as one on reload."""

    prm: LoadedPRM
    engine: Engine
    upstream: VLLMScorer | None = None  # with --vllm-url: the backend, whose health is the server's
    cache: PrefixCache | None = None  # the model's own prefix cache, if on

    def retire(self, timeout: float | None = None) -> None:
        """Finish what the engine has queued (within `timeout`), then let go of the upstream's connections."""
        self.engine.stop(timeout=timeout)
        if self.upstream is not None:
            self.upstream.close()


@dataclass(frozen=True)
class Scored:
    step_scores: list[list[float]]
    tokens: int
    model: str
    model_version: str


class Runtime:
    def __init__(self, config: ServeConfig, metrics: Metrics, on_fatal: Callable[[], None] | None = None):
        """`on_fatal` runs when serving cannot go on (the model failed to load, the worker died)."""
        self.config = config
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.serving: Serving | None = None
        self.fatal_error: str | None = None
        self.draining = False
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()
        self._in_flight = 0  # requests inside score(); touched on the event loop only
        self.threads = thread_budget(config.threads)

    @property
    def ready(self) -> bool:
        serving = self.serving
        upstream_up = serving is not None and (serving.upstream is None or serving.upstream.up)
        return upstream_up and serving.engine.alive and not self.draining

    @property
    def not_ready_reason(self) -> str:
        if self.serving is not None and self.serving.upstream is not None and not self.serving.upstream.up:
            return f"the vLLM upstream {self.serving.upstream.url} is unreachable"
        return self.fatal_error or "the model is still loading"

    def start_loading(self) -> None:
        """Size torch's thread pool for loading; each engine worker then sizes its own share."""
        torch.set_num_threads(self.threads.threads)
        log.info("threads: %d, from %s", self.threads.threads, self.threads.reason)
        threading.Thread(target=self._first_load, name="prm-loader", daemon=True).start()

    def _first_load(self) -> None:
        try:
            self._swap_in(self._load())
        except PrefixCacheTooLarge as error:
            self._fatal(str(error))
            return
        except Exception as error:
            what = repr(self.config.model) if self.config.model else "the store's default model"
            self._fatal(f"could not load {what}: {type(error).__name__}: {error}")
            return
        if self.config.watch > 0:
            self._watch()

    def _watch(self) -> None:
        """Swap in a newer store version as soon as one is published (the loader thread lives on for this)."""
        failed: Path | None = None  # a version that would not load is not tried again and again
        while not self._stopped.wait(self.config.watch):
            try:
                source = Path(self._resolve()[0]).resolve()
                if self.serving is not None and source not in (self.serving.prm.path, failed):
                    log.info("a new version is in the store: reloading")
                    failed = source
                    self.reload()
                    failed = None
            except ReloadInProgress:
                failed = None
            except Exception as error:  # a bad new version must not stop serving the old one
                log.error("watching the store: %s: %s", type(error).__name__, error)

    def reload(self) -> tuple[str, str]:
        """Load the model's source again beside the serving one and swap it in once warmed up.

        A store model without a pinned version resolves to its newest version again.
        Requests already queued finish on the old model; new ones go to the new model.
        Returns (old version, new version).
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgress("a reload is already in progress")
        try:
            old = self._current()
            self._swap_in(self._load())
        finally:
            self._reload_lock.release()
        old.retire()  # drains what it had queued
        return old.prm.version, self._current().prm.version

    def _resolve(self) -> tuple[str, str | None]:
        return resolve_model(self.config.model, open_store(self.config.store))

    def _load(self) -> Serving:
        source, name = self._resolve()
        if self.config.vllm_url:
            prm = load_tokenizer(source, name)
            upstream = self._connect_upstream(source, prm)
            scorer, budget_key, cache = upstream, "vllm", None
        else:
            prm = load_prm(source, device=self.config.device, dtype=self.config.dtype, name=name)
            cache = self._prefix_cache(prm, first_load=self.serving is None)
            upstream, budget_key = None, prm.device.type
            scorer = PackedScorer(prm, self.config.min_shared_prefix, cache)
        workers = engine_workers(self.config.engine_workers, budget_key, self.threads.threads)
        shares = thread_shares(self.threads.threads, workers)
        budget = batch_tokens(self.config.max_batch_tokens, budget_key)
        engine = Engine(
            scorer,
            self.metrics,
            max_batch_tokens=budget,
            max_wait_ms=self.config.max_wait_ms,
            max_queue_tokens=self.config.max_queue_tokens,
            on_worker_death=lambda error: self._fatal(f"the engine worker died: {error!r}"),
            workers=workers,
            on_worker_start=lambda number: _start_worker(number, shares[number], prm, budget),
        )
        engine.start()
        engine.submit([prm.formatter.encode(WARMUP_ITEM)]).result()
        log.info("engine: %d worker(s), threads %s", workers, "+".join(map(str, shares)))
        return Serving(prm, engine, upstream, cache)

    def _prefix_cache(self, prm: LoadedPRM, first_load: bool) -> PrefixCache | None:
        """A new, empty cache for a newly loaded model, so no other model's keys and values are ever served.

        A size that the device cannot hold is refused at startup (on a reload, the old model's weights and
        cache are still resident, so the check would only measure them)."""
        wanted = self.config.prefix_cache_mb
        if wanted == 0:
            return None
        free = free_bytes(prm.device)
        if wanted is None:
            wanted = min(DEFAULT_PREFIX_CACHE_MB.get(prm.device.type, 0), free / 4 / 2**20)
        elif first_load and wanted * 2**20 > free:
            raise PrefixCacheTooLarge(
                f"--prefix-cache-mb {wanted:.10g} does not fit: {prm.device} has {free / 2**20:.0f} MiB free after "
                "loading the model; give a smaller size, or 0 to turn the cache off"
            )
        if not wanted:
            return None
        log.info("prefix cache: %.0f MiB on %s", wanted, prm.device)
        return PrefixCache(int(wanted * 2**20), prm.formatter.boundary_ids, self.config.min_shared_prefix, self.metrics)

    def _connect_upstream(self, source: str, prm: LoadedPRM) -> VLLMScorer:
        """The vLLM server behind --vllm-url, once it answers and serves this model; then its health is polled."""
        upstream = VLLMScorer(self.config.vllm_url, "", prm.formatter.separator_id, self.metrics)
        while True:  # vLLM takes a while to start: wait for it, not ready meanwhile
            try:
                served = upstream.served_models()
                break
            except UpstreamUnavailable as error:
                log.warning("%s; trying again", error)
                if self._stopped.wait(UPSTREAM_POLL_SECONDS):
                    raise
        wanted = [self.config.vllm_model] if self.config.vllm_model else [self.config.model, source, str(prm.path)]
        upstream.model = next((model for model in served if model in wanted), "")
        if not upstream.model:
            raise CheckpointError(
                f"vLLM at {upstream.url} serves {served}, not {wanted[0]!r}: pass --vllm-model with its name there"
            )
        return upstream

    def _poll_upstream(self, upstream: VLLMScorer) -> None:
        """Keep `upstream.up` current while it serves; a reload that replaces it ends this loop."""
        while not self._stopped.wait(UPSTREAM_POLL_SECONDS) and self.serving.upstream is upstream:
            was_up = upstream.up
            if upstream.poll() != was_up:
                log.warning("the vLLM upstream %s is %s", upstream.url, "back" if upstream.up else "unreachable")

    def _swap_in(self, serving: Serving) -> None:
        self.serving = serving
        if serving.upstream is not None:
            threading.Thread(
                target=self._poll_upstream, args=(serving.upstream,), name="prm-upstream", daemon=True
            ).start()
        card = self.describe()
        self.metrics.set_model(card["id"], card["version"], card["dtype"], card["device"])
        log.info("serving %s (version %s) on %s, %s", card["id"], card["version"], card["device"], card["dtype"])

    def _fatal(self, message: str) -> None:
        self.fatal_error = message
        log.critical(message)
        if self.on_fatal:
            self.on_fatal()

    def stop(self) -> None:
        """Finish queued work (within the drain timeout), then end the worker."""
        self._stopped.set()
        if self.serving is not None:
            self.serving.retire(timeout=self.config.drain_timeout)

    def describe(self) -> dict:
        serving = self._current()
        prm = serving.prm
        return {
            "id": prm.name,
            "version": prm.version,
            "family": FAMILY,
            "dtype": str(prm.dtype).removeprefix("torch."),
            "device": f"vllm {serving.upstream.url}" if serving.upstream else str(prm.device),
            "max_length": prm.max_length,
            "prefix_cache_mb": serving.cache.capacity_bytes / 2**20 if serving.cache else 0,
            "threads": self.threads.threads,  # all engine workers' together
            "threads_from": self.threads.reason,
            "engine_workers": serving.engine.workers,
        }

    async def score(self, encode: Encoder, timeout: float | None = None, inline: bool = False) -> Scored:
        """Score what `encode` makes of a request with the serving model's tokenizer: in a worker thread, or
        on the event loop if `inline` (a small request, for which the thread hop costs more).

        Admission has its two bounds here and in the engine, as in TEI's core: beyond
        --max-concurrent-requests requests in flight, or --max-queue-tokens queued tokens, Overloaded (429)
        at once. Work not started within `timeout` seconds is dropped; cancelling this coroutine drops
        queued work. A request that meets an engine retired by a reload is encoded again for the new model.
        """
        limit = self.config.max_concurrent_requests
        if limit and self._in_flight >= limit:
            raise Overloaded(f"{self._in_flight} requests are in flight; the limit is {limit}")
        self._in_flight += 1
        try:
            return await self._score(encode, timeout, inline)
        finally:
            self._in_flight -= 1

    async def _score(self, encode: Encoder, timeout: float | None, inline: bool) -> Scored:
        while True:
            serving = self._current()
            if serving.upstream is not None and not serving.upstream.up:
                raise UpstreamUnavailable(self.not_ready_reason)
            encoded = encode(serving.prm) if inline else await asyncio.to_thread(encode, serving.prm)
            tokens = sum(len(item) for item in encoded)
            try:
                future = serving.engine.submit(encoded, timeout, tokens=tokens)
            except EngineStopped:
                if self.serving is serving:
                    raise
                continue
            scores = await asyncio.wrap_future(future)
            return Scored(scores, tokens, serving.prm.name, serving.prm.version)

    def _current(self) -> Serving:
        if self.serving is None or not self.serving.engine.alive:
            raise NotReady(self.not_ready_reason)
        return self.serving


def _start_worker(number: int, threads: int, prm: LoadedPRM, budget: int) -> None:
    """In engine worker `number`'s thread: its share of the threads, then the matmul kernels of every row
    bucket its batches can have (up to the batch budget, at most 8,192 rows) compiled for that share."""
    size_this_threads_pool(threads)
    if prm.forward is not None:
        started = time.perf_counter()
        buckets = prm.forward.compile_kernels(min(budget, MAX_COMPILED_ROWS))
        if buckets:
            log.info(
                "engine worker %d: matmul kernels for %d row buckets in %.1f s",
                number,
                buckets,
                time.perf_counter() - started,
            )
