"""uvicorn's C event loop and HTTP parser (uvloop, httptools) against its pure-Python ones, in `prm serve`.

Two `prm serve` processes on one checkpoint, the same build: one as installed, the other started with
`uvloop` and `httptools` unimportable (a folder of stubs that raise ImportError put first on its path),
so uvicorn falls back to asyncio's loop and h11, as it does where they are not installed. Interleaved
rounds of wrk over the same ProcessBench bodies, prefix cache off (wrk repeats bodies). Prints requests/s
of each and the ratio (median of per-round ratios). The default is the tiny shape (hidden 64, 2 layers),
where the cost per request, not the forward, dominates.

    python loadtest/bench_http_stack.py                 # 3 rounds of 10 s, GSM8K items
    python loadtest/bench_http_stack.py --subset math --hidden-size 256 --layers 4
"""

import argparse
import os
import tempfile
from pathlib import Path

from bench_http import add_pair_arguments, alternating_rounds, pair_inputs, report_pair
from common import start_prm_serve, wait_ready

PORTS = {"uvloop + httptools": 8171, "asyncio + h11": 8172}
HIDDEN = ("uvloop", "httptools")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser, rounds=3)
    args = parser.parse_args()
    items, checkpoint, bodies = pair_inputs(args, "stack")

    with tempfile.TemporaryDirectory() as stubs:
        for module in HIDDEN:
            (Path(stubs) / f"{module}.py").write_text("raise ImportError('hidden by bench_http_stack.py')\n")
        without = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [stubs, os.environ.get("PYTHONPATH")]))}
        servers = {
            name: start_prm_serve(checkpoint, port, "--prefix-cache-mb", "0", env=environment)
            for (name, port), environment in zip(PORTS.items(), (None, without), strict=True)
        }
        try:
            for name, process in servers.items():
                wait_ready(PORTS[name], process)
            rates = alternating_rounds(PORTS, bodies, items[0], args.rounds, args.duration, args.connections)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait()
    report_pair(args, rates, *PORTS)


if __name__ == "__main__":
    main()
