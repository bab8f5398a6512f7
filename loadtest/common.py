"""What the benchmark scripts share: timing, a `prm serve` process, and the tests' builders on the path."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))  # the scripts run as files; the checkpoint builders and helpers are in tests/


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
