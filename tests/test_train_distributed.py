"""`prm train` under torchrun with 2 CPU processes (gloo): the README's multi-GPU recipe with the process count
changed. Data parallel and DeepSpeed ZeRO-2/3 give the weights of one process with the same global batch,
every rank exits 0, only rank 0 writes, a resumed run ends where an uninterrupted one does, and --fsdp,
which accelerate runs only on GPUs, is refused on CPU in one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from service.jobs.synth import synthesize
from tests.helpers import REPO, Server

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2"]
TINY = ["--scratch-layers", "2", "--scratch-hidden-size", "32", "--scratch-intermediate-size", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return synthesize(tmp_path_factory.mktemp("synth"), train=64, heldout=8, bon_problems=0, bon_n=1, seed=5)


def train(data: dict, out: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`[torchrun --nproc-per-node 2] -m service train ...`, as README writes it."""
    command = [*(launcher or [sys.executable]), "-m", "service", "train", "--base", "scratch"]
    command += ["--data", str(data["train"]), "--out", str(out), "--logging-steps", "1", *TINY, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def max_difference(one: Path, other: Path) -> float:
    a, b = load_file(one / "model.safetensors"), load_file(other / "model.safetensors")
    assert sorted(a) == sorted(b)
    return max((a[name] - b[name].to(a[name].dtype)).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    """One process, batch 8: the reference for 2 processes of batch 4."""
    out = tmp_path_factory.mktemp("single") / "prm"
    result = train(data, out, "--max-steps", "8", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("run", range(3))
def test_data_parallel_equals_one_process_with_the_same_global_batch(data, single, tmp_path, run):
    out = tmp_path / "prm"
    result = train(data, out, "--max-steps", "8", "--batch-size", "4", launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]  # torchrun's code is 0 only if every rank's was
    assert result.stdout.count("trained on 64 records") == 1  # printed by rank 0 alone
    assert max_difference(single, out) < 1e-6
    ours, theirs = (json.loads((path / "prm.json").read_text())["training"] for path in (out, single))
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], abs=1e-6)
    assert ours["last_loss"] == pytest.approx(theirs["last_loss"], abs=1e-6)


def test_the_data_parallel_output_is_a_complete_prm_that_serves(data, tmp_path):
    out = tmp_path / "prm"
    result = train(data, out, "--max-steps", "4", "--batch-size", "4", "--eval-processbench", str(data["heldout"]),
                   "--save-dtype", "bfloat16", launcher=TORCHRUN)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(out / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.bfloat16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / "prm.json").read_text())["metrics"]["processbench"]["subsets"]["heldout"]["n"] == 8
    item = json.loads(data["heldout"].read_text().splitlines()[0])
    server = Server("--model", str(out)).wait_ready()
    try:
        body = {"problem": item["problem"], "steps": item["steps"]}
        response = httpx.post(f"{server.url}/score_steps", json=body, timeout=30)
    finally:
        server.stop()
    assert response.status_code == 200 and len(response.json()["step_scores"]) == len(item["steps"])


def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_does(data, tmp_path):
    settings = ["--max-steps", "12", "--batch-size", "4", "--save-steps", "4", "--lr", "1e-3"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(data, whole, *settings, launcher=TORCHRUN).returncode == 0
    assert train(data, resumed, *settings, launcher=TORCHRUN).returncode == 0
    # What a run killed after its step-8 checkpoint leaves: that checkpoint and no output.
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-12")
    for path in resumed.iterdir():
        if path.name != "checkpoints":
            path.unlink()
    result = train(data, resumed, *settings, launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing from {resumed / 'checkpoints' / 'checkpoint-8'}" in result.stderr
    assert max_difference(whole, resumed) < 1e-6


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_gives_the_same_weights(data, single, tmp_path, stage):
    pytest.importorskip("deepspeed")
    out = tmp_path / "prm"
    config = REPO / "deploy" / "deepspeed" / f"{stage}.json"
    result = train(data, out, "--max-steps", "8", "--batch-size", "4", "--deepspeed", str(config), launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(single, out) < 1e-6


@pytest.mark.parametrize("launcher", [None, TORCHRUN], ids=["one process", "torchrun"])
def test_fsdp_is_refused_on_cpu_in_one_line(data, tmp_path, launcher):
    result = train(data, tmp_path / "prm", "--max-steps", "2", "--fsdp", "full_shard auto_wrap", launcher=launcher)
    assert result.returncode != 0 and not (tmp_path / "prm").exists()
    refusals = [line for line in result.stderr.splitlines() if line.startswith("error: --fsdp needs CUDA GPUs")]
    assert len(refusals) == (2 if launcher else 1)  # one line from each process, nothing trained
    if launcher is None:
        assert result.returncode == 2 and result.stderr == refusals[0] + "\n"
