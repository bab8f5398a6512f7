"""The prefix cache across requests: `prm serve` with it on against the same server with `--prefix-cache-mb 0`.

In one run: builds a random-weight checkpoint in the real layout (as bench_http.py), starts both servers,
checks that they return the same scores, then times each on the same traffic in interleaved rounds (the
order of the two servers alternates; each round uses problems no earlier round sent, so a warm cache
never meets traffic it has already seen):

- walks: step-level search, 8 concurrent walks each re-scoring steps[:1], steps[:2], ... of a MATH
  solution with 6 to 15 steps (16 solutions a round);
- grpo: groups of 8 responses to one problem (the best-of-8 test bed's), arriving one request each as
  rollouts finish, 8 groups in flight;
- rerank: best-of-8 `/rerank` of the same problem's candidates, 3 times over (8 problems a round);
- unique: MATH items with a unique problem each (no reuse possible), 8 concurrent clients.

It prints seconds per workload and server, the ratios (medians over rounds), the scores' largest
difference, and the cache-on server's resident memory growth over the unique stream against its bound.
Beside each ratio stands the workload's ceiling: its tokens over those that no exact prefix cache can
skip (each request's tokens past the longest boundary prefix that an earlier request of the round kept),
the speed-up that a cache whose hits cost nothing would reach. GRPO groups share little more than the
prompt, so theirs is low.

    python loadtest/bench_prefix_cache.py                # hidden 256, 4 layers, 3 rounds
    python loadtest/bench_prefix_cache.py --rounds 1
"""

import argparse
import asyncio
import json
import re
import statistics
import time
from pathlib import Path

import httpx
from bench_http import build_checkpoint
from common import ROOT, start_prm_serve, wait_ready

from service.config import MIN_SHARED_PREFIX
from service.prm.formatting import ScoringInput
from service.prm.loading import load_tokenizer
from service.prm.prefix_cache import KeptBuffers, PrefixCache

HERE = Path(__file__).parent
PORTS = {"cache on": 8111, "cache off": 8112}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--cache-mb", default="", help="--prefix-cache-mb of the cache-on server (default: its own)")
    parser.add_argument("--unique", type=int, default=1500, help="unique-prefix requests for the memory bound")
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()

    math = json.loads((args.data / "processbench/math.json").read_text())
    bon = [json.loads(line) for line in (args.data / "bon/math_cot_100.jsonl").read_text().splitlines()]
    bon = [problem for problem in bon if max(map(len, problem["code"])) < 4000]  # within the model's 4096 tokens
    corpus = [text for item in math for text in (item["problem"], *item["steps"])]
    checkpoint = build_checkpoint(args, corpus + [response for problem in bon for response in problem["code"]])
    walkable = [item for item in math if 6 <= len(item["steps"]) <= 15]
    workloads = {name: [] for name in ("walks", "grpo", "rerank", "unique")}
    for round_index in range(args.rounds):
        workloads["walks"].append(walks(walkable[16 * round_index : 16 * (round_index + 1)]))
        workloads["grpo"].append(groups(bon[16 * round_index : 16 * (round_index + 1)]))
        workloads["rerank"].append(reranks(bon[60 + 8 * round_index : 60 + 8 * (round_index + 1)]))
        workloads["unique"].append(unique(math[:128], f"r{round_index}"))

    cache_flags = ["--prefix-cache-mb", args.cache_mb] if args.cache_mb else []
    servers = {
        "cache on": start_prm_serve(checkpoint, PORTS["cache on"], *cache_flags),
        "cache off": start_prm_serve(checkpoint, PORTS["cache off"], "--prefix-cache-mb", "0"),
    }
    try:
        for name, process in servers.items():
            wait_ready(PORTS[name], process)
        started_resident = {name: _resident(port) for name, port in PORTS.items()}
        check = walks(walkable[-4:])
        answers = {name: asyncio.run(run(PORTS[name], check, keep=True)) for name in servers}
        worst = max(abs(a - b) for x, y in zip(*answers.values(), strict=True) for a, b in zip(x, y, strict=True))
        print(f"max |score difference| cache on vs off over {len(check)} walk requests: {worst:.2e}", flush=True)
        seconds = {(name, workload): [] for name in servers for workload in workloads}
        for round_index in range(args.rounds):
            order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
            for workload, rounds in workloads.items():
                for name in order:
                    started = time.perf_counter()
                    asyncio.run(run(PORTS[name], rounds[round_index]))
                    seconds[name, workload].append(time.perf_counter() - started)
                    print(f"round {round_index + 1} {workload:6s} {name}: {seconds[name, workload][-1]:.2f} s")
        report(seconds, workloads, ceilings(checkpoint, workloads))
        memory_bound(args, started_resident)
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(30)


def walks(items: list[dict]) -> list[list[tuple[str, dict]]]:
    """One request sequence per walk: steps[:1], steps[:2], ... ; 8 walks run at once."""
    return [
        [
            ("/score_steps", {"problem": item["problem"], "steps": item["steps"][:k]})
            for k in range(1, len(item["steps"]) + 1)
        ]
        for item in items
    ]


def groups(problems: list[dict]) -> list[list[tuple[str, dict]]]:
    """One sequence per group: its 8 responses one request each, as rollouts finish."""
    return [[("/score_steps", {"problem": p["question"], "steps": steps(r)}) for r in p["code"]] for p in problems]


def reranks(problems: list[dict]) -> list[list[tuple[str, dict]]]:
    """One sequence per problem: the same best-of-8 /rerank three times over."""
    bodies = [{"problem": p["question"], "candidates": [steps(response) for response in p["code"]]} for p in problems]
    return [[("/rerank", body)] * 3 for body in bodies]


def unique(items: list[dict], tag: str) -> list[list[tuple[str, dict]]]:
    """Requests no cache can help: each problem begins with a tag no other request has."""
    requests = [
        ("/score_steps", {"problem": f"Case {tag}-{n}. {item['problem']}", "steps": item["steps"]})
        for n, item in enumerate(items)
    ]
    return [requests[n::8] for n in range(8)]


def steps(response: str) -> list[str]:
    return [part.strip() for part in re.split(r"\n\s*\n", response) if part.strip()] or [response]


async def run(port: int, sequences: list[list[tuple[str, dict]]], concurrency: int = 8, keep: bool = False):
    """Each sequence's requests in order; `concurrency` sequences at once. With `keep`, the step scores."""
    queue: asyncio.Queue = asyncio.Queue()
    for index, sequence in enumerate(sequences):
        queue.put_nowait((index, sequence))
    kept: dict[tuple[int, int], list[float]] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:

        async def worker() -> None:
            while not queue.empty():
                index, sequence = queue.get_nowait()
                for position, (path, body) in enumerate(sequence):
                    response = await client.post(path, json=body)
                    response.raise_for_status()
                    if keep:
                        kept[index, position] = response.json()["step_scores"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [kept[key] for key in sorted(kept)]


def ceilings(checkpoint: Path, workloads: dict) -> dict[str, float]:
    """Per workload, the median over rounds of its tokens over those an unbounded exact prefix cache computes:
    the server's own formatting and cache rules (boundaries, what is kept), every request in its round's order."""
    formatter = load_tokenizer(str(checkpoint)).formatter
    out = {}
    for workload, rounds in workloads.items():
        ratios = []
        for sequences in rounds:
            cache, total, computed = PrefixCache(1 << 62, formatter.boundary_ids, MIN_SHARED_PREFIX), 0, 0
            for path, body in (request for sequence in sequences for request in sequence):
                for steps in body["candidates"] if path == "/rerank" else [body["steps"]]:
                    item = formatter.encode(ScoringInput(body["problem"], steps))
                    hit = cache.lookup(item.input_ids)
                    total, computed = total + len(item), computed + len(item) - (hit.length if hit else 0)
                    if length := cache.keep_length(item.input_ids, item.separator_positions, hit):
                        cache.insert(item.input_ids[:length], KeptBuffers([], []), {})
            ratios.append(total / computed)
        out[workload] = statistics.median(ratios)
    return out


def report(seconds: dict, workloads: dict, ceiling: dict[str, float]) -> None:
    """Median seconds, the median over rounds of each round's ratio (both servers ran it back to back), and
    the workload's ceiling."""
    print("\n| workload | cache on s | cache off s | speed-up (median of rounds) | ceiling |\n|---|---|---|---|---|")
    for workload in workloads:
        on, off = seconds["cache on", workload], seconds["cache off", workload]
        ratio = statistics.median(b / a for a, b in zip(on, off, strict=True))
        print(
            f"| {workload} | {statistics.median(on):.2f} | {statistics.median(off):.2f} | **{ratio:.2f}x** "
            f"| {ceiling[workload]:.2f}x |"
        )


def memory_bound(args, started_resident: dict[str, float]) -> None:
    """Resident memory growth of both servers since they were ready, after all rounds and `--unique` more
    unique-prefix requests; the cache-on server's, against the cache's size plus 200 MiB."""
    math = json.loads((args.data / "processbench/math.json").read_text())
    items = [math[n % len(math)] for n in range(args.unique)]
    growth = {}
    for name, port in PORTS.items():
        asyncio.run(run(port, unique(items, "memory")))
        growth[name] = (_resident(port) - started_resident[name]) / 2**20
    capacity, cached = (
        _capacity(PORTS["cache on"]) / 2**20,
        _metric(PORTS["cache on"], "prm_prefix_cache_bytes") / 2**20,
    )
    print(
        f"\nresident memory growth after all rounds and a unique stream of {args.unique}: cache on "
        f"+{growth['cache on']:.0f} MiB (the cache holds {cached:.0f} of its {capacity:.0f} MiB; bound: "
        f"{capacity + 200:.0f} MiB), cache off +{growth['cache off']:.0f} MiB"
    )


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _resident(port: int) -> float:
    return _metric(port, "process_resident_memory_bytes")


def _capacity(port: int) -> float:
    log = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"][0]
    return float(log["prefix_cache_mb"]) * 2**20


if __name__ == "__main__":
    main()
