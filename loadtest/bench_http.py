"""HTTP throughput: `prm serve` against a model-card-style baseline on the same checkpoint.

In one run: builds a random-weight checkpoint in the real layout, starts both servers,
checks that they return the same scores, then drives each with the same ProcessBench
items from `wrk` (one thread, --connections concurrent connections, bodies in
rotation), interleaving the two servers round by round. Prints requests/s, steps/s,
p50/p99 latency and the ratios (medians over rounds).

    python loadtest/bench_http.py                 # tiny model, 3 rounds of 20 s per server and subset
    python loadtest/bench_http.py --duration 5 --rounds 1
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import ROOT, start_prm_serve, wait_ready

from tests.checkpoints import build_random_checkpoint

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench")
    parser.add_argument("--subsets", nargs="+", default=["gsm8k", "math"])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per server, subset and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--serve-args", default="", help="extra `prm serve` flags, e.g. '--max-batch-tokens 8192'")
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    items = {name: json.loads((args.data / f"{name}.json").read_text()) for name in args.subsets}
    checkpoint = build_checkpoint(args, [text for subset in items.values() for item in subset for text in texts(item)])
    bodies = {}
    for name, subset in items.items():
        bodies[name] = args.work / f"{name}.jsonl"
        bodies[name].write_text("".join(json.dumps(body(item)) + "\n" for item in subset))

    servers = {
        "prm serve": start_prm_serve(checkpoint, 8101, *args.serve_args.split()),
        "baseline": subprocess.Popen(
            [sys.executable, str(HERE / "baseline_server.py"), str(checkpoint), "--port", "8102"]
        ),
    }
    try:
        for port, process in zip((8101, 8102), servers.values(), strict=True):
            wait_ready(port, process)
        for name, subset in items.items():
            print(
                f"{name}: max |score difference| prm serve vs baseline over {len(subset)} items: "
                f"{max_difference(subset):.2e}",
                flush=True,
            )
        results = {(server, name): [] for server in servers for name in items}
        for round_index in range(args.rounds):
            for name in items:
                for server, port in (("prm serve", 8101), ("baseline", 8102)):
                    if round_index == 0:
                        wrk(port, bodies[name], 3, args.connections)  # warm-up, discarded
                        drain(port, items[name][0])
                    results[server, name].append(wrk(port, bodies[name], args.duration, args.connections))
                    drain(port, items[name][0])
                    print(f"round {round_index + 1} {server:9s} {name}: {results[server, name][-1]}", flush=True)
        report(results, items, args)
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(30)


def texts(item: dict) -> list[str]:
    return [item["problem"], *item["steps"]]


def body(item: dict) -> dict:
    return {"problem": item["problem"], "steps": item["steps"]}


def build_checkpoint(args, corpus: list[str]) -> Path:
    path = args.work / f"bench-prm-h{args.hidden_size}-l{args.layers}"
    if not (path / "config.json").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        build_random_checkpoint(
            path,
            corpus,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            num_heads=max(1, args.hidden_size // 64),
            num_kv_heads=max(1, args.hidden_size // 128),
            intermediate_size=3 * args.hidden_size,
            tokenizer_vocab_size=4096,
        )
    return path


def max_difference(subset: list[dict], ports: tuple[int, int] = (8101, 8102)) -> float:
    """Largest |step score difference| between the `/score_steps` servers on `ports` over `subset`."""
    worst = 0.0
    with httpx.Client(timeout=60) as client:
        for item in subset:
            ours, theirs = (
                client.post(f"http://127.0.0.1:{port}/score_steps", json=body(item)).json()["step_scores"]
                for port in ports
            )
            if len(ours) != len(theirs):
                raise AssertionError(f"{item['id']}: {len(ours)} scores against {len(theirs)}")
            worst = max([worst, *(abs(a - b) for a, b in zip(ours, theirs, strict=True))])
    return worst


def drain(port: int, item: dict) -> None:
    """Wait until work queued by the last run is done, so it cannot steal CPU from the next run.

    wrk closes its connections at the end of a run, but both servers still compute what they had
    accepted; a request sent now is answered only after that backlog.
    """
    httpx.post(f"http://127.0.0.1:{port}/score_steps", json=body(item), timeout=120)
    time.sleep(1)


def wrk(port: int, bodies: Path, duration: int, connections: int, path: str = "/score_steps") -> dict:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "60s",
            "-s",
            str(HERE / "rotate_bodies.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(bodies),
            path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summary = json.loads(re.search(r"WRK_SUMMARY (.*)", output).group(1))
    seconds = summary["duration_us"] / 1e6
    return {
        "rps": summary["requests"] / seconds,
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "errors": summary["status_errors"] + summary["socket_errors"],
    }


def alternating_rounds(ports: dict[str, int], bodies: Path, item: dict, rounds: int, duration: int, connections: int):
    """req/s of each server in each round, the order reversed every other round; each run is drained
    (`drain` with `item`) before the next starts. Returns {name: [req/s per round]}."""
    rates: dict[str, list[float]] = {name: [] for name in ports}
    for round_number in range(rounds):
        for name in ports if round_number % 2 == 0 else reversed(ports):
            result = wrk(ports[name], bodies, duration, connections)
            assert result["errors"] == 0, result
            rates[name].append(result["rps"])
            print(f"round {round_number + 1} {name:20s} {result['rps']:.1f} req/s", flush=True)
            drain(ports[name], item)
    return rates


def add_pair_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options of a script that times two `prm serve` processes against each other (tiny shape by default)."""
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench")
    parser.add_argument("--subset", default="gsm8k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per server and round")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "out")


def pair_inputs(args, name: str) -> tuple[list[dict], Path, Path]:
    """The subset's items, the random-weight checkpoint, and a wrk body file of the items named `name`."""
    items = json.loads((args.data / f"{args.subset}.json").read_text())
    checkpoint = build_checkpoint(args, [text for item in items for text in texts(item)])
    bodies = args.work / f"{name}-{args.subset}.jsonl"
    bodies.write_text("".join(json.dumps(body(item)) + "\n" for item in items))
    return items, checkpoint, bodies


def report_pair(args, rates: dict[str, list[float]], numerator: str, denominator: str) -> None:
    """Each server's median req/s and the median of per-round ratios numerator / denominator."""
    ratio = statistics.median(a / b for a, b in zip(rates[numerator], rates[denominator], strict=True))
    print(
        f"\n{args.subset}, hidden {args.hidden_size}, {args.layers} layers, {args.connections} connections, "
        f"medians of {args.rounds} rounds of {args.duration} s"
    )
    for name, values in rates.items():
        print(f"{name:20s} {statistics.median(values):7.1f} req/s")
    print(f"ratio {numerator} / {denominator}: {ratio:.2f}x")


def report(results: dict, items: dict, args) -> None:
    print(
        f"\nmedians over {args.rounds} round(s) of {args.duration} s, {args.connections} connections, "
        f"random-weight Qwen2 PRM hidden={args.hidden_size} layers={args.layers}, float32 on CPU"
    )
    print(f"{'subset':8s} {'server':10s} {'req/s':>8s} {'steps/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for name, subset in items.items():
        mean_steps = statistics.mean(len(item["steps"]) for item in subset)
        medians = {}
        for server in ("prm serve", "baseline"):
            runs = results[server, name]
            medians[server] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            m = medians[server]
            print(
                f"{name:8s} {server:10s} {m['rps']:8.1f} {m['rps'] * mean_steps:9.1f} "
                f"{m['p50_ms']:8.1f} {m['p99_ms']:8.1f} {sum(run['errors'] for run in runs):7d}"
            )
        ratio = medians["prm serve"]["rps"] / medians["baseline"]["rps"]
        print(f"{name:8s} {'ratio':10s} {ratio:8.2f}x requests/s (prm serve / baseline)")


if __name__ == "__main__":
    main()
