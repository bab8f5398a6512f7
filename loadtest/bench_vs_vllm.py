"""`prm serve` against vLLM on the same checkpoint and the same traffic: scores checked, then speed.

Starts vLLM's CPU build (its own venv, `.venv-vllm`; ../shared/VLLM_CPU.md) in pooling mode, tuned as its
docs say (every core bound to its OpenMP pool, none reserved, libiomp preloaded), and `prm serve`, on one
random-weight checkpoint in the Qwen2.5-Math-PRM layout (hidden 256, 4 layers, head_dim 64, float32).
It first checks that vLLM's `/pooling` and `prm serve`'s `/score_steps` give the same step scores on the
first items of each subset, then drives both with the same work in interleaved rounds (wrk, bodies in
rotation), each server in its own protocol:

- `gsm8k`, `math`: one ProcessBench item per request (MATH is the long subset here), 32 connections;
  `/score_steps` against `/pooling` of the rendered conversation;
- `rl64`: 64 rollouts per request (GSM8K and MATH items mixed), 4 connections; `/score_steps` with 64
  items against `/pooling` with 64 inputs;
- `bon8`: best-of-8 of one problem per request (bon/math_cot_100.jsonl), 8 connections; `/rerank` against
  `/pooling` with the 8 conversations in one request (one request, not 8: the stricter peer).

Prints requests/s of each and the ratio (median of per-round ratios).

    python loadtest/bench_vs_vllm.py                  # 3 rounds of 15 s per server and workload
    python loadtest/bench_vs_vllm.py --rounds 1 --duration 5
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from bench_http import body, build_checkpoint, drain, texts, wrk
from common import ROOT, start_prm_serve, wait_ready

from service.prm.formatting import PRMFormatter, ScoringInput, split_steps
from tests.helpers import start_vllm_pooling

HERE = Path(__file__).parent
PORTS = {"vllm": 8141, "prm serve": 8142}
WORKLOADS = {"gsm8k": 32, "math": 32, "rl64": 4, "bon8": 8}  # connections


class VLLMBody:
    """vLLM `/pooling` bodies: the model-card conversation, rendered by the service's own formatter."""

    def __init__(self, formatter: PRMFormatter, model: str):
        self.formatter, self.model = formatter, model

    def __call__(self, *conversations: tuple[str, list[str]]) -> dict:
        rendered = [self.formatter.render(ScoringInput(problem=p, steps=steps)) for p, steps in conversations]
        return {"model": self.model, "input": rendered[0] if len(rendered) == 1 else rendered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--duration", type=int, default=15, help="seconds per server, workload and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm/bin/python")
    parser.add_argument(
        "--serve-args",
        default="--prefix-cache-mb 0",
        help="`prm serve` flags (default: its prefix cache off, as vLLM's step pooling has it; wrk sends the same "
        "bodies again and again, which the cache would answer from memory)",
    )
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()
    if not args.vllm_python.exists():
        sys.exit(f"no vLLM at {args.vllm_python}: ../shared/VLLM_CPU.md has the recipe")

    subsets = {name: json.loads((args.data / f"processbench/{name}.json").read_text()) for name in ("gsm8k", "math")}
    checkpoint = build_checkpoint(args, [text for items in subsets.values() for item in items for text in texts(item)])
    from transformers import AutoTokenizer

    formatter = PRMFormatter(AutoTokenizer.from_pretrained(checkpoint), max_length=1 << 20)
    vllm_body = VLLMBody(formatter, str(checkpoint))
    bodies = write_bodies(args, subsets, vllm_body)
    servers = {
        "vllm": start_vllm(args, checkpoint, formatter.separator_id),
        "prm serve": start_prm_serve(checkpoint, PORTS["prm serve"], *args.serve_args.split()),
    }
    try:
        wait_ready(PORTS["prm serve"], servers["prm serve"])
        from tests.helpers import wait_until_answering

        wait_until_answering(f"http://127.0.0.1:{PORTS['vllm']}/health", servers["vllm"], timeout=600)
        for name, items in subsets.items():
            worst = max_difference(items[:100], vllm_body)
            print(f"{name}: max |score difference| over {len(items[:100])} items: {worst:.2e}", flush=True)
        results = {(server, workload): [] for server in PORTS for workload in WORKLOADS}
        for round_index in range(args.rounds):
            for workload, connections in WORKLOADS.items():
                for server in list(PORTS) if round_index % 2 == 0 else list(reversed(PORTS)):
                    path, file = bodies[server, workload]
                    if round_index == 0:
                        wrk(PORTS[server], file, 3, connections, path)  # warm-up, discarded
                        settle(server, subsets["gsm8k"][0], vllm_body)
                    results[server, workload].append(wrk(PORTS[server], file, args.duration, connections, path))
                    settle(server, subsets["gsm8k"][0], vllm_body)
                    print(
                        f"round {round_index + 1} {server:9s} {workload}: {results[server, workload][-1]}", flush=True
                    )
        report(results, args)
    finally:
        servers["prm serve"].terminate()
        servers["vllm"].send_signal(signal.SIGINT)
        for process in servers.values():
            process.wait(60)


def pair_of(item: dict) -> tuple[str, list[str]]:
    return item["problem"], item["steps"]


def write_bodies(args, subsets: dict, vllm_body: VLLMBody) -> dict:
    """(server, workload) -> (path, JSONL file of request bodies): the same work in each server's protocol."""
    gsm8k, math = subsets["gsm8k"], subsets["math"]
    mixed = [item for pair in zip(gsm8k, math[: len(gsm8k)], strict=True) for item in pair]
    groups = [mixed[start : start + 64] for start in range(0, len(mixed) - 63, 64)]
    records = [json.loads(line) for line in (args.data / "bon/math_cot_100.jsonl").read_text().splitlines()]
    # one record per problem, its 8 responses in `code`; within the checkpoint's 4,096 positions
    problems = [(r["question"], r["code"]) for r in records if max(map(len, r["code"])) < 4000]
    work = {  # workload: (prm serve's path, its bodies, vLLM's bodies)
        "gsm8k": ("/score_steps", [body(item) for item in gsm8k], [vllm_body(pair_of(item)) for item in gsm8k]),
        "math": ("/score_steps", [body(item) for item in math], [vllm_body(pair_of(item)) for item in math]),
        "rl64": (
            "/score_steps",
            [{"items": [body(item) for item in group]} for group in groups],
            [vllm_body(*map(pair_of, group)) for group in groups],
        ),
        "bon8": (
            "/rerank",
            [{"problem": problem, "candidates": candidates} for problem, candidates in problems],
            [vllm_body(*((problem, split_steps(c)) for c in candidates)) for problem, candidates in problems],
        ),
    }
    files = {}
    for workload, (path, ours, theirs) in work.items():
        for server, server_path, payloads in (("prm serve", path, ours), ("vllm", "/pooling", theirs)):
            file = args.work / f"vs-vllm-{server.replace(' ', '-')}-{workload}.jsonl"
            file.write_text("".join(json.dumps(payload) + "\n" for payload in payloads))
            files[server, workload] = (server_path, file)
    return files


def start_vllm(args, checkpoint: Path, separator: int) -> subprocess.Popen:
    log = (args.work / "vllm.log").open("w")  # noqa: SIM115 (lives as long as the server)
    return start_vllm_pooling(args.vllm_python, checkpoint, PORTS["vllm"], separator, log)


def max_difference(items: list[dict], vllm_body: VLLMBody) -> float:
    """Largest |step score difference|; the run stops if the servers disagree (timing them would mean nothing)."""
    worst = 0.0
    with httpx.Client(timeout=120) as client:
        for item in items:
            ours = client.post(f"http://127.0.0.1:{PORTS['prm serve']}/score_steps", json=body(item))
            theirs = client.post(f"http://127.0.0.1:{PORTS['vllm']}/pooling", json=vllm_body(pair_of(item)))
            ours, theirs = ours.json()["step_scores"], [p for _, p in theirs.json()["data"][0]["data"]]
            if len(ours) != len(theirs):
                raise SystemExit(f"{item['id']}: {len(ours)} scores against vLLM's {len(theirs)}")
            worst = max([worst, *(abs(a - b) for a, b in zip(ours, theirs, strict=True))])
    if worst > 1e-4:
        raise SystemExit(f"scores differ by {worst:.2e}")
    return worst


def settle(server: str, item: dict, vllm_body: VLLMBody) -> None:
    """Wait until what the last run queued is done, so that it cannot steal CPU from the next run."""
    if server == "prm serve":
        drain(PORTS[server], item)
        return
    httpx.post(f"http://127.0.0.1:{PORTS['vllm']}/pooling", json=vllm_body(pair_of(item)), timeout=300)
    time.sleep(1)


def report(results: dict, args) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"\nmedians over {args.rounds} round(s) of {args.duration} s; random-weight Qwen2 PRM")
    print(f"hidden={args.hidden_size} layers={args.layers}, float32, {cores} cores")
    header = ("workload", "conns", "vLLM req/s", "prm req/s", "ratio", "vLLM p50", "prm p50")
    print("{:9s} {:>5s} {:>11s} {:>10s} {:>7s} {:>9s} {:>8s}".format(*header))
    for workload, connections in WORKLOADS.items():
        theirs, ours = results["vllm", workload], results["prm serve", workload]
        ratio = statistics.median(o["rps"] / t["rps"] for o, t in zip(ours, theirs, strict=True))
        rps = statistics.median(t["rps"] for t in theirs), statistics.median(o["rps"] for o in ours)
        p50 = statistics.median(t["p50_ms"] for t in theirs), statistics.median(o["p50_ms"] for o in ours)
        row = f"{workload:9s} {connections:5d} {rps[0]:11.2f} {rps[1]:10.2f} {ratio:6.2f}x"
        print(f"{row} {p50[0]:7.0f}ms {p50[1]:6.0f}ms")


if __name__ == "__main__":
    main()
