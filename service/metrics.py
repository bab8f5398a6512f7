"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

disable_created_metrics()  # *_created series only add noise to every scrape

# Millisecond-scale latency buckets, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = tuple(2**power for power in range(6, 18))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The standard process_*, python_gc_* and python_info series (memory, CPU seconds, open fds).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "prm_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.failures = Counter("prm_request_failures", "Failed requests by reason", ["reason"], registry=r)
        self.request_duration = Histogram(
            "prm_request_duration_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            "prm_queue_duration_seconds",
            "Time a sequence waits before its batch runs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "prm_inference_duration_seconds", "Forward time of one batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_sequences = Histogram(
            "prm_batch_size_sequences", "Sequences per batch", buckets=SEQUENCE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram("prm_batch_size_tokens", "Tokens per batch", buckets=TOKEN_BUCKETS, registry=r)
        self.queue_sequences = Gauge("prm_queue_sequences", "Sequences waiting for a batch", registry=r)
        self.queue_tokens = Gauge("prm_queue_tokens", "Tokens waiting for a batch", registry=r)
        self.tokens_scored = Counter(
            "prm_tokens_scored",
            "Tokens of the scored conversations (shared prefixes counted per conversation)",
            registry=r,
        )
        self.steps_scored = Counter("prm_steps_scored", "Steps scored", registry=r)
        self.prefix_tokens_reused = Counter(
            "prm_prefix_tokens_reused", "Tokens not recomputed because a batch shared their prefix", registry=r
        )
        self.prefix_cache_hit_tokens = Counter(
            "prm_prefix_cache_hit_tokens", "Tokens whose keys and values came from the prefix cache", registry=r
        )
        self.prefix_cache_miss_tokens = Counter(
            "prm_prefix_cache_miss_tokens", "Tokens scored without the prefix cache (computed or shared)", registry=r
        )
        self.prefix_cache_bytes = Gauge(
            "prm_prefix_cache_bytes", "Bytes the prefix cache holds: its entries and spare mappings", registry=r
        )
        self.prefix_cache_evictions = Counter(
            "prm_prefix_cache_evictions", "Prefix cache entries evicted to make room", registry=r
        )
        self.dropped_sequences = Counter(
            "prm_dropped_sequences", "Queued sequences dropped unscored, by reason", ["reason"], registry=r
        )
        self.oom_splits = Counter(
            "prm_oom_splits", "Batches split in two after running out of device memory", registry=r
        )
        self.upstream_requests = Counter(
            "prm_upstream_requests",
            "Batches sent to the vLLM upstream (--vllm-url), by outcome",
            ["outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "prm_upstream_duration_seconds",
            "Latency of the vLLM upstream per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_up = Gauge("prm_upstream_up", "1 while the vLLM upstream answers its health check", registry=r)
        self.model_info = Gauge(
            "prm_model_info", "The loaded model (value 1)", ["name", "version", "dtype", "device"], registry=r
        )

    def set_model(self, name: str, version: str, dtype: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, dtype=dtype, device=device).set(1)
