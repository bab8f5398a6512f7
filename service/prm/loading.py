"""Load a checkpoint (found and checked by `service.prm.checkpoint`) onto a device for scoring."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from service.prm.checkpoint import MANIFEST, CheckpointError, read_config, resolve_checkpoint
from service.prm.formatting import PRMFormatter
from service.prm.forward import PackedForward
from service.prm.model import Qwen2ForProcessRewardModel

FAMILY = "qwen2-prm"
_FINGERPRINT_BYTES = 1 << 20


@dataclass
class LoadedPRM:
    model: Qwen2ForProcessRewardModel | None  # None: the weights live in an upstream vLLM server (--vllm-url)
    formatter: PRMFormatter
    name: str
    version: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    forward: PackedForward | None = None  # the serving forward over `model`'s weights

    @property
    def max_length(self) -> int:
        return self.formatter.max_length


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"--device {device} was asked for, but torch sees no CUDA device")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, config: dict) -> torch.dtype:
    """`auto`: the checkpoint's dtype on GPU; float32 on CPU, where bf16 matmuls are slow."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cpu":
        return torch.float32
    return _checkpoint_dtype(config)


def _checkpoint_dtype(config: dict) -> torch.dtype:
    return getattr(torch, config.get("torch_dtype") or config.get("dtype") or "bfloat16")


def load_prm(source: str, device: str = "auto", dtype: str = "auto", name: str | None = None) -> LoadedPRM:
    """Load tokenizer and model onto `device`; the head stays float32 whatever `dtype` is.

    `name` overrides the display name (the directory's name or the Hub id), e.g. with a store name.
    """
    path, default_name, revision = resolve_checkpoint(source)
    name = name or default_name
    config = read_config(path)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device, config)
    model, info = Qwen2ForProcessRewardModel.from_pretrained(
        path,
        dtype=target_dtype,
        attn_implementation="sdpa",  # the model card's padded forward; serving runs PackedForward
        use_safetensors=True,
        local_files_only=True,
        output_loading_info=True,
    )
    if info["missing_keys"]:
        raise CheckpointError(f"{path} lacks weights for {sorted(info['missing_keys'])[:5]} (and maybe more)")
    model.to(target_device).eval()
    formatter = _formatter(path, model.config.max_position_embeddings)
    version = _version(path, revision)
    return LoadedPRM(model, formatter, name, version, path, target_device, target_dtype, PackedForward(model))


def load_tokenizer(source: str, name: str | None = None) -> LoadedPRM:
    """Only what a front for an upstream vLLM server needs: config, tokenizer, name and version; no weights."""
    path, default_name, revision = resolve_checkpoint(source, weights=False)
    config = read_config(path, weights=False)
    formatter = _formatter(path, config["max_position_embeddings"])
    version = _version(path, revision)
    return LoadedPRM(
        None, formatter, name or default_name, version, path, torch.device("cpu"), _checkpoint_dtype(config)
    )


def _formatter(path: Path, max_length: int) -> PRMFormatter:
    return PRMFormatter(AutoTokenizer.from_pretrained(path, local_files_only=True), max_length=max_length)


def _version(path: Path, revision: str | None) -> str:
    """The Hub commit for a Hub snapshot, else the directory's own version (`_local_version`)."""
    return revision[:12] if revision else _local_version(path)


def _local_version(path: Path) -> str:
    """`version` from prm.json if present, else a fingerprint of config and weights.

    The fingerprint reads the config and tokenizer files whole and the first and last MiB of
    each weight file: cheap for a 15 GB checkpoint, and any retraining changes it.
    """
    manifest = path / MANIFEST
    if manifest.is_file():
        version = json.loads(manifest.read_text()).get("version")
        if version:
            return str(version)
    digest = hashlib.sha256()
    for data_file in sorted(p for pattern in ("*.json", "*.jinja", "*.txt") for p in path.glob(pattern)):
        digest.update(f"{data_file.name}:".encode() + data_file.read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_BYTES))
            handle.seek(max(0, size - _FINGERPRINT_BYTES))
            digest.update(handle.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()[:12]
