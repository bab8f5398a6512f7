"""`model_store/<name>/<version>/`: checkpoints with their prm.json, published atomically.

Versions are `v1`, `v2`, ...: the newest is the highest number. A version is copied into a hidden
staging directory beside its final place and renamed into view, so a reader (a serving process
polling for new versions) never sees half a checkpoint. `store.json` names the default model,
the one `prm serve` serves when given no `--model`.
"""

import difflib
import importlib.resources
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.prm.checkpoint import HUB_DATA_FILES, MANIFEST, CheckpointError, read_config

DEFAULT_STORE = Path("model_store")  # where `prm publish` writes, and where serving looks first
STORE_CONFIG = "store.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VERSION_PATTERN = re.compile(r"^v([0-9]+)$")


class StoreError(CheckpointError):
    """The store cannot give or take what was asked; the message says what exists instead."""


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: Path

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class ModelStore:
    def __init__(self, root: Path | str = DEFAULT_STORE):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first."""
        directory = self.root / name
        if not directory.is_dir():
            return []
        numbered = [(int(m.group(1)), p.name) for p in directory.iterdir() if (m := VERSION_PATTERN.match(p.name))]
        return [version for _, version in sorted(numbered)]

    def get(self, name: str, version: str | None = None) -> StoredModel:
        """A version of `name`, the newest when `version` is None."""
        versions = self.versions(name)
        if not versions:
            raise StoreError(self.no_model(name))
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise StoreError(f"{name} has no version {version!r} in {self.root} (versions: {', '.join(versions)})")
        return StoredModel(name, version, self.root / name / version)

    def no_model(self, name: str) -> str:
        """Says that `name` is not here, what is, and the likely one meant."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"the store {self.root} has no model {name!r} (models: {', '.join(names) or 'none'}){hint}"

    def default_name(self) -> str | None:
        """The model named default in store.json, else the store's only model."""
        config = self.root / STORE_CONFIG
        if config.is_file():
            return json.loads(config.read_text()).get("default")
        names = self.names()
        return names[0] if len(names) == 1 else None

    def set_default(self, name: str) -> None:
        self.get(name)
        _write_atomically(self.root / STORE_CONFIG, json.dumps({"default": name}, indent=2) + "\n")

    def publish(self, checkpoint: Path, name: str) -> StoredModel:
        """Copy a checkpoint's data files in as the next version of `name` and return it.

        Only what a server reads is copied (config, tokenizer, safetensors, prm.json): no Trainer
        checkpoints, optimizer states or code. The copy's prm.json records name, version and time.
        """
        if not NAME_PATTERN.match(name):
            raise StoreError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (no '/')")
        checkpoint = Path(checkpoint)
        read_config(checkpoint)  # the same checks the server makes: architecture, safetensors only
        files = sorted({p for pattern in HUB_DATA_FILES for p in checkpoint.glob(pattern) if p.is_file()})
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for source in files:
                shutil.copy2(source, staging / source.name)
            while True:  # another publisher may take a number first: then take the next one
                version = f"v{self._next_number(name)}"
                _write_manifest(staging, checkpoint, name, version)
                try:
                    os.rename(staging, directory / version)
                    break
                except OSError:
                    if not (directory / version).exists():
                        raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StoredModel(name, version, directory / version)

    def _next_number(self, name: str) -> int:
        versions = self.versions(name)
        return int(VERSION_PATTERN.match(versions[-1]).group(1)) + 1 if versions else 1


def _write_manifest(staging: Path, checkpoint: Path, name: str, version: str) -> None:
    source = checkpoint / MANIFEST
    manifest = json.loads(source.read_text()) if source.is_file() else {}
    manifest.update(
        name=name,
        version=version,
        published_at=datetime.now(UTC).isoformat(timespec="seconds"),
        published_from=str(checkpoint.resolve()),
    )
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, path)


def bundled_store() -> Path:
    """The store shipped inside the package (`model_store/` of the source tree, see setup.py): the demo PRM."""
    return Path(str(importlib.resources.files("service.bundled_store")))


def open_store(root: str | Path | None) -> ModelStore:
    """The store to serve and evaluate from: `root`, which must exist; by default ./model_store if there
    is one, else the bundled store, so that an installed `prm serve` serves the demo from any directory."""
    if root is None:
        return ModelStore(DEFAULT_STORE if DEFAULT_STORE.is_dir() else bundled_store())
    if not Path(root).is_dir():
        raise StoreError(f"the store {root} does not exist: pass --store (PRM_STORE) an existing directory")
    return ModelStore(root)


def resolve_model(spec: str | None, store: ModelStore) -> tuple[str, str | None]:
    """(checkpoint source for the loader, display name or None) for `--model`.

    None means the store's default model; `NAME` or `NAME@VERSION` a stored model (newest version unless
    pinned); an existing directory or a Hub id (`Org/Name`) goes to the loader as it is. A bare name that is
    none of these is a typo: the error lists the store's models.
    """
    if spec is None:
        name = store.default_name()
        if name is None:
            raise StoreError(
                f"no --model given and the store {store.root} has no default model "
                f"(models: {', '.join(store.names()) or 'none'}): pass --model with a checkpoint directory, "
                "a Hub id (e.g. Qwen/Qwen2.5-Math-PRM-7B) or a store name, set PRM_MODEL, point --store elsewhere, "
                "or publish one with `prm publish --default`"
            )
        return str(store.get(name).path), name
    if Path(spec).expanduser().is_dir():
        return spec, None
    name, _, version = spec.partition("@")
    if version or (NAME_PATTERN.match(name) and store.versions(name)):
        return str(store.get(name, version or None).path), name
    if "/" not in spec:
        raise StoreError(f"--model {spec!r} is neither a directory nor a Hub id (Org/Name), and {store.no_model(spec)}")
    return spec, None
