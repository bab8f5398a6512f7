"""Find a checkpoint (local directory or Hub id) and load it for scoring.

Only data files are read: JSON, the tokenizer and safetensors weights. Checkpoint
Python files and pickles are never downloaded or executed.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

from service.prm.formatting import PRMFormatter
from service.prm.model import Qwen2ForProcessRewardModel
from service.prm.packing import ATTENTION_NAME

ARCHITECTURE = "Qwen2ForProcessRewardModel"
FAMILY = "qwen2-prm"
HUB_DATA_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]
_FINGERPRINT_BYTES = 1 << 20


class CheckpointError(RuntimeError):
    """The checkpoint cannot be served; the message says why and what to do."""


@dataclass
class LoadedPRM:
    model: Qwen2ForProcessRewardModel
    formatter: PRMFormatter
    name: str
    version: str
    path: Path
    device: torch.device
    dtype: torch.dtype

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
    return getattr(torch, config.get("torch_dtype") or config.get("dtype") or "bfloat16")


def resolve_checkpoint(source: str) -> tuple[Path, str, str | None]:
    """A local directory, or a Hub id downloaded (data files only) into the Hub cache.

    Returns (directory, display name, Hub revision or None). `HF_HUB_OFFLINE=1` is honoured
    by huggingface_hub: then only an already-cached snapshot is used.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name, None
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(f"--model {source!r} is neither a checkpoint directory nor a Hub id like Org/Name")
    try:
        snapshot = Path(snapshot_download(source, allow_patterns=HUB_DATA_FILES))
    except Exception as error:  # huggingface_hub raises many types; all mean "not obtainable"
        raise CheckpointError(f"could not fetch {source!r} from the Hugging Face Hub: {error}") from error
    return snapshot, source, snapshot.name


def read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a transformers checkpoint")
    config = json.loads(config_file.read_text())
    if ARCHITECTURE not in config.get("architectures", []) or config.get("model_type") != "qwen2":
        raise CheckpointError(
            f"{path} is a {config.get('architectures')} / {config.get('model_type')} checkpoint; "
            f"this service serves {ARCHITECTURE} (model_type qwen2)"
        )
    if config.get("use_sliding_window"):
        raise CheckpointError(f"{path} uses sliding-window attention, which the packed engine does not implement")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path} has no .safetensors weights; pickled weights are never loaded")
    return config


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
        attn_implementation=ATTENTION_NAME,
        use_safetensors=True,
        local_files_only=True,
        output_loading_info=True,
    )
    if info["missing_keys"]:
        raise CheckpointError(f"{path} lacks weights for {sorted(info['missing_keys'])[:5]} (and maybe more)")
    model.to(target_device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    formatter = PRMFormatter(tokenizer, max_length=model.config.max_position_embeddings)
    version = revision[:12] if revision else _local_version(path)
    return LoadedPRM(model, formatter, name, version, path, target_device, target_dtype)


def _local_version(path: Path) -> str:
    """`version` from prm.json if present, else a fingerprint of config and weights.

    The fingerprint reads the config and tokenizer files whole and the first and last MiB of
    each weight file: cheap for a 15 GB checkpoint, and any retraining changes it.
    """
    manifest = path / "prm.json"
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
