"""What the tests share besides fixtures: the repository's paths and demo, `prm` subprocesses, live servers.

Test modules import these from here, never from one another (fixtures live in conftest.py).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.store import ModelStore

REPO = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
DEMO_STORE = ModelStore(REPO / "model_store")  # the repository's store, with the bundled demo PRM
README_EXAMPLE = {  # the curl example in README's Quickstart: the second step adds what was given away
    "problem": "Ava has 25 apples. Then Ava buys 12 more apples. Then Ava gives away 9 apples. "
    "How many apples does Ava have now?",
    "steps": [
        "After buying 12 more, Ava has 25 + 12 = 37 apples.",
        "After giving away 9, Ava has 37 + 9 = 46 apples.",
        "The answer is \\boxed{46}.",
    ],
}


def run_prm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
    )


def load_processbench_sample() -> list[dict]:
    return json.loads((FIXTURES / "processbench_sample.json").read_text())


def tokenizer_corpus() -> list[str]:
    items = load_processbench_sample()
    return [item["problem"] for item in items] + [step for item in items for step in item["steps"]]


def start_vllm_pooling(python: Path, checkpoint: Path, port: int, separator_id: int, log) -> subprocess.Popen:
    """vLLM's OpenAI server (its CPU build, in the venv of `python`) in pooling mode on loopback, scoring at
    `separator_id`, tuned as its CPU docs say: every core of this process's affinity mask in its OpenMP pool,
    none reserved, libiomp preloaded where the venv has it. Output goes to the open file `log`."""
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint)]
    command += ["--runner", "pooling", "--dtype", "float32", "--port", str(port)]
    command += ["--pooler-config", json.dumps({"step_tag_id": separator_id}), "--gpu-memory-utilization", "0.15"]
    environment = {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{len(os.sched_getaffinity(0)) - 1}",
    }
    libiomp = python.parent.parent / "lib" / "libiomp5.so"
    if libiomp.exists():
        environment["LD_PRELOAD"] = str(libiomp)
    return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(
    url: str, process: subprocess.Popen, output: Callable[[], str] = lambda: "", timeout: float = 60
) -> None:
    """Poll `url` until it answers 200; fail at once, with the process's output, if the process exits first.

    The one poll-until-ready loop of the tests and benchmarks: `prm serve`, vLLM and `transformers serve`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {output()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


class Server:
    """`prm serve` in a real subprocess on loopback."""

    def __init__(
        self,
        *args: str,
        env: dict | None = None,
        cwd: Path | None = None,
        prm: list[str] | None = None,
        port: int | None = None,
    ):
        """`prm`: the command that runs `prm` (default: this interpreter's `python -m service`)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [*(prm or [sys.executable, "-m", "service"]), "serve", "--port", str(self.port), *args]
        # A file, not a pipe: under load the access log would fill a pipe nobody reads and stall the server.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the Server object)
        self.process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )

    def output(self) -> str:
        """Everything the server has printed so far."""
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 60) -> "Server":
        wait_until_answering(f"{self.url}/ready", self.process, self.output, timeout)
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@contextmanager
def serve_in_thread(app):
    """Serve an ASGI app with uvicorn on loopback in this process; yields its URL once it listens."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
