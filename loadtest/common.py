"""Helpers the benchmark scripts share: timing and a `prm serve` process."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


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


def start_prm_serve(checkpoint: Path, port: int, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "service", "serve", "--model", str(checkpoint), "--port", str(port)]
    return subprocess.Popen([*command, "--log-level", "warning", *flags], cwd=ROOT)


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 900) -> None:
    import httpx  # late: bench_throughput.py may install it from wheels first

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server on port {port} did not become ready in {timeout:.0f} s")
