"""What the benchmark scripts share: timing, a `prm serve` process, the engine benchmarks' inputs, and the
tests' builders on the path."""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))  # the scripts run as files; the checkpoint builders and helpers are in tests/


def add_items_arguments(parser: argparse.ArgumentParser, items: int) -> None:
    """The inputs of a benchmark without HTTP: `--model` (a checkpoint), `--data` and `--items` (ProcessBench)."""
    out = Path(__file__).parent / "out"
    parser.add_argument("--model", type=Path, default=out / "bench-prm-h256-l4", help="built by bench_http.py")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench/gsm8k.json")
    parser.add_argument("--items", type=int, default=items)


def encoded_items(prm, args) -> list:
    """The first `--items` records of `--data`, encoded as the service encodes a request's."""
    from service.prm.formatting import ScoringInput

    records = json.loads(args.data.read_text())[: args.items]
    return [prm.formatter.encode(ScoringInput(record["problem"], record["steps"])) for record in records]


def median_seconds(run, repeats: int = 3) -> float:
    """Median wall time of `run()` after one warm-up call, synchronising CUDA around each call."""
    import torch

    def once() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run()
    return statistics.median(once() for _ in range(repeats))


def start_prm_serve(checkpoint: Path, port: int, *flags: str, **popen) -> subprocess.Popen:
    """`popen`: more Popen arguments (an environment, a preexec_fn, a `cwd` other than the repository, whose
    `service` package `python -m` then imports first)."""
    command = [sys.executable, "-m", "service", "serve", "--model", str(checkpoint), "--port", str(port)]
    return subprocess.Popen([*command, "--log-level", "warning", *flags], **{"cwd": ROOT, **popen})


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 900) -> None:
    from tests.helpers import wait_until_answering  # late: bench_throughput.py may install httpx from wheels first

    wait_until_answering(f"http://127.0.0.1:{port}/ready", process, timeout=timeout)
