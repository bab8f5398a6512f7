"""The model store: versioned PRM checkpoints on disk that `prm serve` resolves and hot-reloads."""

from service.store.model_store import (
    DEFAULT_STORE,
    ModelStore,
    StoredModel,
    StoreError,
    bundled_store,
    open_store,
    resolve_model,
)

__all__ = [
    "DEFAULT_STORE",
    "ModelStore",
    "StoreError",
    "StoredModel",
    "bundled_store",
    "open_store",
    "resolve_model",
]
