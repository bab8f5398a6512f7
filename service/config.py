"""Serving options, shared by the CLI (flags and PRM_* variables) and the app factory."""

from dataclasses import dataclass
from typing import Literal

from service.prm.aggregation import Aggregation

Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # auto: the checkpoint's dtype on GPU, float32 on CPU
SaveDtype = Literal["float32", "bfloat16"]  # of the weights `prm train` writes
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # a directory, a Hub id or a store NAME[@VERSION]; None: the store's default
    store: str | None = None  # the model store directory; None: ./model_store, else the bundled one (open_store)
    watch: float = 0.0  # seconds between looks for a newer store version to swap in; 0: only on /admin/reload
    device: str = "auto"
    dtype: Dtype = "auto"
    max_batch_tokens: int | None = None  # None: by device, see runtime.DEFAULT_BATCH_TOKENS
    max_wait_ms: float = 0.0
    max_queue_tokens: int = 262144
    max_items_per_request: int = 1024
    request_timeout: float = 0.0  # seconds a request's work may wait to start; 0: no deadline
    min_shared_prefix: int = 64  # tokens (service.prm.packing.MIN_SHARED_PREFIX); 0 turns sharing off
    max_concurrent_requests: int = 512  # scoring requests in flight; beyond: 429 at once (0: unbounded)
    max_body_bytes: int = 16 * 2**20
    max_steps_per_item: int = 1024
    max_step_chars: int = 32768
    max_problem_chars: int = 65536
    api_keys: tuple[str, ...] = ()  # Bearer keys for the scoring routes; none: open
    admin_keys: tuple[str, ...] = ()  # Bearer keys for /admin/*; they also pass as API keys
    protect_metrics: bool = False  # /metrics needs a key too
    drain_timeout: float = 30.0  # seconds to finish admitted requests after SIGTERM
    reward_aggregation: Aggregation = "product"  # /get_reward's reward: the aggregated step score
    vllm_url: str | None = None  # score through this vLLM server's /pooling instead of loading the weights here
    vllm_model: str | None = None  # the model's name there; None: the one it serves under --model's name
