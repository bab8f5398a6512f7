"""The model store: atomic publishing, version resolution, and `prm publish`."""

import json
import shutil
import threading

import pytest

from service.store import ModelStore, StoreError, resolve_model
from tests.helpers import run_prm


def test_publish_numbers_versions_and_copies_only_what_a_server_reads(checkpoint, tmp_path):
    checkpoint = shutil.copytree(checkpoint, tmp_path / "trained")
    (checkpoint / "checkpoints").mkdir()  # Trainer state must stay behind
    (checkpoint / "checkpoints" / "optimizer.pt").write_bytes(b"x")
    store = ModelStore(tmp_path / "store")
    first, second = store.publish(checkpoint, "tiny"), store.publish(checkpoint, "tiny")
    assert (first.version, second.version) == ("v1", "v2")
    assert store.versions("tiny") == ["v1", "v2"] and store.get("tiny") == second
    copied = sorted(path.name for path in second.path.iterdir())
    assert "checkpoints" not in copied and "modeling_qwen2_rm.py" not in copied
    assert {"config.json", "tokenizer.json", "prm.json", "model.safetensors.index.json"} <= set(copied)
    manifest = json.loads((second.path / "prm.json").read_text())
    assert manifest["name"] == "tiny" and manifest["version"] == "v2"
    assert not [p for p in (store.root / "tiny").iterdir() if p.name.startswith(".")]  # no staging left


def test_concurrent_publishers_get_distinct_versions(checkpoint, tmp_path):
    store = ModelStore(tmp_path)
    versions: list[str] = []
    threads = [
        threading.Thread(target=lambda: versions.append(store.publish(checkpoint, "m").version)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == ["v1", "v2", "v3", "v4"] == store.versions("m")


def test_publish_refuses_what_cannot_be_served(tmp_path, checkpoint):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="no '/'"):
        store.publish(checkpoint, "org/name")
    with pytest.raises(Exception, match="no config.json"):
        store.publish(tmp_path, "empty")
    assert store.names() == []


def test_model_specs_resolve_to_store_versions_directories_or_hub_ids(checkpoint, tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="no default model"):
        resolve_model(None, store)
    store.publish(checkpoint, "a")
    v2 = store.publish(checkpoint, "a")
    assert resolve_model(None, store) == (str(v2.path), "a")  # the only model is the default
    assert resolve_model("a", store) == (str(v2.path), "a")
    assert resolve_model("a@v1", store) == (str(store.root / "a" / "v1"), "a")
    assert resolve_model(str(checkpoint), store) == (str(checkpoint), None)
    assert resolve_model("Qwen/Qwen2.5-Math-PRM-7B", store) == ("Qwen/Qwen2.5-Math-PRM-7B", None)
    with pytest.raises(StoreError, match="versions: v1, v2"):
        resolve_model("a@v9", store)
    store.publish(checkpoint, "b")
    with pytest.raises(StoreError, match="no default model"):  # two models and no store.json
        resolve_model(None, store)
    store.set_default("b")
    assert resolve_model(None, store)[1] == "b"


def test_prm_publish_prints_the_new_version(checkpoint, tmp_path):
    result = run_prm("publish", str(checkpoint), "--name", "tiny", "--store", str(tmp_path), "--default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "v1"
    assert json.loads((tmp_path / "store.json").read_text()) == {"default": "tiny"}
