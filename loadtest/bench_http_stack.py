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
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench_http import alternating_rounds, body, build_checkpoint, texts
from common import ROOT, start_prm_serve, wait_ready

HERE = Path(__file__).parent
PORTS = {"uvloop + httptools": 8171, "asyncio + h11": 8172}
HIDDEN = ("uvloop", "httptools")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench")
    parser.add_argument("--subset", default="gsm8k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()

    items = json.loads((args.data / f"{args.subset}.json").read_text())
    checkpoint = build_checkpoint(args, [text for item in items for text in texts(item)])
    bodies = args.work / f"stack-{args.subset}.jsonl"
    bodies.write_text("".join(json.dumps(body(item)) + "\n" for item in items))

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
    fast, slow = rates.values()
    ratio = statistics.median(a / b for a, b in zip(fast, slow, strict=True))
    print(
        f"\n{args.subset}, hidden {args.hidden_size}, {args.layers} layers, {args.connections} connections, "
        f"medians of {args.rounds} rounds of {args.duration} s"
    )
    for name, values in rates.items():
        print(f"{name:20s} {statistics.median(values):7.1f} req/s")
    print(f"ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
