"""Serving options: the one home of `prm serve`'s defaults, shared by the CLI (flags and PRM_* variables),
the app factory and the offline evaluation. No torch here, so `prm --help` stays quick."""

import re
from dataclasses import dataclass
from typing import Literal

from service.prm.aggregation import Aggregation

Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # auto: the checkpoint's dtype on GPU, float32 on CPU
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

# Token budget of one packed batch when --max-batch-tokens is not given, by device type, measured with
# loadtest/bench_engine.py: on CPU, elementwise ops on larger rows fall out of cache; on GPU, 16k tokens
# keep the matmuls saturated; "vllm": one /pooling request per batch. Serving and `prm eval` read it.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384, "vllm": 16384}
BATCH_TOKENS_HELP = (
    f"Token budget of one packed batch (default: {DEFAULT_BATCH_TOKENS['cpu']} on CPU, "
    f"{DEFAULT_BATCH_TOKENS['cuda']} on CUDA)."
)
# Below this many tokens a prefix that sequences of one batch share is not worth the attention bookkeeping.
MIN_SHARED_PREFIX = 64


# Size of the prefix cache (service.prm.prefix_cache) when --prefix-cache-mb is not given, in MiB, by device
# type, and never more than a quarter of the memory free after loading the model. On CPU 1 GiB holds about
# 1,000 Omni-MATH-length solutions of a small model, or 18k tokens of the 7B PRM in bfloat16 (57 KiB each);
# on a GPU 8 GiB is 150k tokens of the 7B beside its 15 GB of weights and a 16k-token batch's activations.
DEFAULT_PREFIX_CACHE_MB = {"cpu": 1024, "cuda": 8192}


def batch_tokens(configured: int | None, device_type: str) -> int:
    """The configured budget, else the device's default (that of a CPU for a device type not listed)."""
    return configured or DEFAULT_BATCH_TOKENS.get(device_type, DEFAULT_BATCH_TOKENS["cpu"])


def engine_workers(configured: int | None, device_type: str, threads: int) -> int:
    """The configured count (at most one a thread on CPU), else 2 on a CPU with 2 or more threads, else 1.

    On CPU two pools of half the threads each beat one of all of them (loadtest/bench_workers.py): a thread
    that the HTTP work or a neighbour preempts stalls only its own pool's parallel regions. A GPU runs one
    batch at a time anyway, and a vLLM upstream batches for itself."""
    if device_type == "vllm":
        return 1
    if device_type != "cpu":
        return configured or 1
    return min(configured, threads) if configured else min(2, threads)


def thread_shares(threads: int, workers: int) -> list[int]:
    """`threads` split over `workers` as evenly as they go, the first ones taking the remainder."""
    return [threads // workers + (number < threads % workers) for number in range(workers)]


def split_keys(values: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Keys given one per flag or several in one value (PRM_API_KEYS), separated by commas or spaces."""
    return tuple(key for value in values or () for key in re.split(r"[,\s]+", value) if key)


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # a directory, a Hub id or a store NAME[@VERSION]; None: the store's default
    store: str | None = None  # the model store directory; None: ./model_store, else the bundled one (open_store)
    watch: float = 0.0  # seconds between looks for a newer store version to swap in; 0: only on /admin/reload
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: Dtype = "auto"
    threads: int | None = None  # CPU threads for the forward; None: what affinity and the cgroup quota allow
    engine_workers: int | None = None  # batches computed at once, each with its share of the threads; None: by device
    max_batch_tokens: int | None = None  # None: by device, DEFAULT_BATCH_TOKENS
    max_wait_ms: float = 0.0
    max_queue_tokens: int = 262144
    max_items_per_request: int = 1024
    request_timeout: float = 0.0  # seconds a request's work may wait to start; 0: no deadline
    min_shared_prefix: int = MIN_SHARED_PREFIX  # 0 turns sharing off
    prefix_cache_mb: float | None = None  # None: by device, DEFAULT_PREFIX_CACHE_MB; 0 turns the cache off
    max_concurrent_requests: int = 512  # scoring requests in flight; beyond: 429 at once (0: unbounded)
    max_body_bytes: int = 16 * 2**20
    max_steps_per_item: int = 1024
    max_step_chars: int = 32768
    max_problem_chars: int = 65536
    api_keys: tuple[str, ...] = ()  # Bearer keys for the scoring routes; none: open
    admin_keys: tuple[str, ...] = ()  # Bearer keys for /admin/*; they also pass as API keys
    protect_metrics: bool = False  # /metrics needs a key too
    drain_timeout: float = 30.0  # seconds to finish admitted requests after SIGTERM
    vllm_url: str | None = None  # score through this vLLM server's /pooling instead of loading the weights here
    vllm_model: str | None = None  # the model's name there; None: the one it serves under --model's name
    reward_aggregation: Aggregation = "product"  # /get_reward's reward: the aggregated step score
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"

    def __post_init__(self) -> None:
        # As the command line and the environment give them: "" for no model, keys in lists or one string.
        object.__setattr__(self, "model", self.model or None)
        object.__setattr__(self, "api_keys", split_keys(self.api_keys))
        object.__setattr__(self, "admin_keys", split_keys(self.admin_keys))
