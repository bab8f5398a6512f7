"""Find a checkpoint (local directory or Hub id) and check that it can be served, without loading it.

Only data files are read: JSON, the tokenizer and safetensors weights. Checkpoint
Python files and pickles are never downloaded or executed. No torch here, so the
store and the command line stay quick to import.
"""

import json
from pathlib import Path

from huggingface_hub import snapshot_download

ARCHITECTURE = "Qwen2ForProcessRewardModel"  # config.json's architectures entry of every servable PRM
MANIFEST = "prm.json"  # what `prm train` wrote a checkpoint from, completed by `prm publish`
HUB_DATA_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]


class CheckpointError(RuntimeError):
    """The checkpoint cannot be served; the message says why and what to do."""


def resolve_checkpoint(source: str, weights: bool = True) -> tuple[Path, str, str | None]:
    """A local directory, or a Hub id downloaded (data files only; no weights if not `weights`) into the Hub cache.

    Returns (directory, display name, Hub revision or None). `HF_HUB_OFFLINE=1` is honoured
    by huggingface_hub: then only an already-cached snapshot is used.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name, None
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(f"--model {source!r} is neither a checkpoint directory nor a Hub id like Org/Name")
    try:
        patterns = HUB_DATA_FILES if weights else [p for p in HUB_DATA_FILES if p != "*.safetensors"]
        snapshot = Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types; all mean "not obtainable"
        raise CheckpointError(f"could not fetch {source!r} from the Hugging Face Hub: {error}") from error
    return snapshot, source, snapshot.name


def read_config(path: Path, weights: bool = True) -> dict:
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
    if weights and not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path} has no .safetensors weights; pickled weights are never loaded")
    return config
