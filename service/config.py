"""Serving options, shared by the CLI (flags and PRM_* variables) and the app factory."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    model: str
    device: str = "auto"
    dtype: str = "auto"
    max_batch_tokens: int | None = None  # None: by device, see runtime.DEFAULT_BATCH_TOKENS
    max_wait_ms: float = 0.0
    max_queue_tokens: int = 262144
    max_items_per_request: int = 1024
    request_timeout: float = 0.0  # seconds a request's work may wait to start; 0: no deadline
    min_shared_prefix: int = 64  # tokens (service.prm.packing.MIN_SHARED_PREFIX); 0 turns sharing off
