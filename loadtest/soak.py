"""Soak: minutes of mixed traffic against `prm serve`, reporting errors, latency and memory over time.

Starts `prm serve` on a random-weight checkpoint (or targets --url), then runs --clients async
clients sending /score_steps (single and batch) and /rerank built from ProcessBench items, for
--minutes. Every --every seconds it prints requests, errors by status and type, latency
percentiles and the server's RSS; at the end a summary. Loopback only, bounded in time.

    python loadtest/soak.py --minutes 5
"""

import argparse
import asyncio
import collections
import json
import random
import statistics
import time
from pathlib import Path

import httpx
from common import start_prm_serve, wait_ready

from tests.checkpoints import build_random_checkpoint

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--every", type=float, default=30, help="seconds between reports")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/processbench/gsm8k.json")
    parser.add_argument("--port", type=int, default=8104)
    parser.add_argument("--serve-args", default="", help="extra `prm serve` flags")
    args = parser.parse_args()

    items = json.loads(args.data.read_text())
    checkpoint = HERE / "out/soak-prm"
    if not (checkpoint / "config.json").exists():
        corpus = [text for item in items for text in (item["problem"], *item["steps"])]
        build_random_checkpoint(checkpoint, corpus, hidden_size=128, num_layers=2, tokenizer_vocab_size=2048)
    server = start_prm_serve(checkpoint, args.port, *args.serve_args.split())
    try:
        wait_ready(args.port, server)
        asyncio.run(soak(f"http://127.0.0.1:{args.port}", items, args, server.pid))
    finally:
        server.terminate()
        print(f"server exit code after SIGTERM: {server.wait(60)}")


def requests_from(items: list[dict], rng: random.Random):
    """Endless mixed traffic: single scores, batches of 8, and best-of-4 reranks."""
    while True:
        kind = rng.random()
        if kind < 0.5:
            item = rng.choice(items)
            yield "/score_steps", {"problem": item["problem"], "steps": item["steps"]}
        elif kind < 0.8:
            batch = rng.sample(items, 8)
            yield "/score_steps", {"items": [{"problem": i["problem"], "steps": i["steps"]} for i in batch]}
        else:
            problem = rng.choice(items)["problem"]
            yield "/rerank", {"problem": problem, "candidates": [{"steps": i["steps"]} for i in rng.sample(items, 4)]}


async def soak(url: str, items: list[dict], args, pid: int) -> None:
    stop = time.monotonic() + args.minutes * 60
    window: list[float] = []
    everything: list[float] = []
    errors: collections.Counter = collections.Counter()
    total = 0

    async def client(seed: int) -> None:
        nonlocal total
        traffic = requests_from(items, random.Random(seed))
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while time.monotonic() < stop:
                path, body = next(traffic)
                started = time.perf_counter()
                try:
                    response = await http.post(path, json=body)
                    if response.status_code != 200:
                        errors[f"{response.status_code} {response.json().get('type')}"] += 1
                except httpx.HTTPError as error:
                    errors[type(error).__name__] += 1
                window.append(time.perf_counter() - started)
                total += 1

    async def reporter() -> None:
        started = time.monotonic()
        print(
            f"{'t s':>6s} {'requests':>9s} {'req/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
            f"{'RSS MiB':>8s}  errors"
        )
        while time.monotonic() < stop:
            await asyncio.sleep(min(args.every, max(0.0, stop - time.monotonic())))
            latencies = sorted(window)
            everything.extend(latencies)
            window.clear()
            print(
                f"{time.monotonic() - started:6.0f} {total:9d} {len(latencies) / args.every:7.1f} "
                f"{percentile(latencies, 50):8.1f} {percentile(latencies, 95):8.1f} {percentile(latencies, 99):8.1f} "
                f"{rss_mib(pid):8.0f}  {dict(errors) or '-'}",
                flush=True,
            )

    await asyncio.gather(reporter(), *(client(seed) for seed in range(args.clients)))
    everything.extend(window)
    print(
        f"\nsummary: {total} requests in {args.minutes:g} min, errors {dict(errors) or 'none'}, "
        f"latency p50 {percentile(sorted(everything), 50):.1f} ms, p99 {percentile(sorted(everything), 99):.1f} ms, "
        f"mean {statistics.mean(everything) * 1000:.1f} ms, final RSS {rss_mib(pid):.0f} MiB"
    )


def percentile(sorted_seconds: list[float], q: float) -> float:
    if not sorted_seconds:
        return float("nan")
    return sorted_seconds[min(len(sorted_seconds) - 1, int(len(sorted_seconds) * q / 100))] * 1000


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


if __name__ == "__main__":
    main()
