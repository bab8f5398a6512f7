"""Loading: the Hub layout, no remote code, no pickles, offline Hub cache, versions."""

import json
import shutil
import sys

import pytest
import torch

from service.prm.checkpoint import CheckpointError
from service.prm.loading import load_prm
from tests.checkpoints import build_random_checkpoint
from tests.helpers import tokenizer_corpus


def test_loads_the_hub_layout_without_running_its_code(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"]
    assert "num_labels" not in config and "auto_map" in config
    assert (checkpoint / "model.safetensors.index.json").is_file()

    prm = load_prm(str(checkpoint), device="cpu")

    assert not any("qwen2_rm" in name for name in sys.modules)
    assert prm.dtype == torch.float32  # auto on CPU
    assert prm.max_length == 4096
    assert prm.model.config.vocab_size > len(prm.formatter.tokenizer)  # spare embedding rows
    assert prm.formatter.separator_id == prm.formatter.tokenizer.convert_tokens_to_ids("<extra_0>")


def test_version_is_stable_and_follows_the_weights(tmp_path, checkpoint):
    copy = shutil.copytree(checkpoint, tmp_path / "copy")
    assert load_prm(str(copy)).version == load_prm(str(checkpoint)).version
    retrained = build_random_checkpoint(tmp_path / "other", tokenizer_corpus(), seed=1)
    assert load_prm(str(retrained)).version != load_prm(str(checkpoint)).version
    retokenized = shutil.copytree(checkpoint, tmp_path / "retokenized")
    (retokenized / "tokenizer.json").write_text(
        (retokenized / "tokenizer.json").read_text().replace("<|im_end|>", "<|im_stop|>")
    )
    assert load_prm(str(retokenized)).version != load_prm(str(checkpoint)).version
    (copy / "prm.json").write_text(json.dumps({"version": "2026-11-27.1"}))
    assert load_prm(str(copy)).version == "2026-11-27.1"


def test_single_file_checkpoint(tmp_path):
    path = build_random_checkpoint(tmp_path / "single", tokenizer_corpus(), shards=1)
    assert (path / "model.safetensors").is_file()
    assert load_prm(str(path)).model.score[2].out_features == 2


def test_refuses_pickled_weights(tmp_path, checkpoint):
    copy = shutil.copytree(checkpoint, tmp_path / "pickled")
    for file in copy.glob("*.safetensors"):
        file.unlink()
    torch.save({}, copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_prm(str(copy))


def test_refuses_other_architectures(tmp_path, checkpoint):
    copy = shutil.copytree(checkpoint, tmp_path / "causal-lm")
    config = json.loads((copy / "config.json").read_text())
    config["architectures"] = ["Qwen2ForCausalLM"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Qwen2ForCausalLM"):
        load_prm(str(copy))


def test_refuses_missing_weights(tmp_path):
    path = build_random_checkpoint(tmp_path / "partial", tokenizer_corpus())
    (path / "model-00002-of-00002.safetensors").unlink()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lacks weights"):
        load_prm(str(path))


def test_hub_id_from_the_offline_cache(tmp_path, checkpoint, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout; HF_HUB_OFFLINE keeps it off the network."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Org--Tiny-PRM"
    shutil.copytree(checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    prm = load_prm("Org/Tiny-PRM")
    assert (prm.name, prm.version) == ("Org/Tiny-PRM", revision[:12])

    with pytest.raises(CheckpointError, match="could not fetch 'Org/Absent'"):
        load_prm("Org/Absent")


def test_rejects_what_is_neither_directory_nor_hub_id():
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a Hub id"):
        load_prm("/no/such/checkpoint")
