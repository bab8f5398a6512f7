"""Engine workers on CPU: one pool of all threads against several workers, each with its share, on the same items.

The real engine (service.engine) with `--workers` counts, each run submitting the same ProcessBench items
at once, in interleaved rounds; scores checked against the first count before timing. Each count is timed
on a quiet machine and beside a background load: a process that keeps `--load` of one core busy in short
bursts, as the HTTP work of `prm serve` or a neighbour does. Prints tokens/s (medians) and each count's
ratio to the first (median of per-round ratios).

    python loadtest/bench_workers.py                                   # hidden 256, 4 layers, workers 1 and 2
    python loadtest/bench_workers.py --model loadtest/out/bench-prm-h64-l2 --load 0 0.35 0.7
"""

import argparse
import multiprocessing
import statistics
import time

import torch
from common import add_items_arguments, encoded_items

from service.config import batch_tokens, thread_shares
from service.engine import Engine
from service.metrics import Metrics
from service.prm.loading import load_prm
from service.prm.scorer import PackedScorer
from service.threads import size_this_threads_pool, thread_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_items_arguments(parser, items=192)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--load", type=float, nargs="+", default=[0.0, 0.35], help="cores the background keeps busy")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    threads = thread_budget().threads
    prm = load_prm(str(args.model), device="cpu")
    items = encoded_items(prm, args)
    tokens = sum(len(item) for item in items)
    reference = PackedScorer(prm).score(items).scores
    print(f"{len(items)} items, {tokens} tokens, {threads} threads, random-weight {args.model.name}, float32")

    rates = {(load, workers): [] for load in args.load for workers in args.workers}
    for load in args.load:
        background = start_load(load)
        try:
            for round_number in range(args.rounds + 1):  # the first round warms up and is not counted
                order = args.workers if round_number % 2 == 0 else list(reversed(args.workers))
                for workers in order:
                    rate, scores = run_engine(prm, items, workers, threads)
                    pairs = zip(scores, reference, strict=True)
                    worst = max(abs(a - b) for got, want in pairs for a, b in zip(got, want, strict=True))
                    assert worst < 1e-5, f"{workers} workers: scores differ by {worst:.1e}"
                    if round_number:
                        rates[load, workers].append(rate)
        finally:
            if background is not None:
                background.terminate()
                background.join()

    print(f"\nmedians of {args.rounds} rounds; ratio: median of per-round ratios to {args.workers[0]} worker(s)")
    print(f"{'background load':>16s} {'workers':>8s} {'threads':>8s} {'tokens/s':>10s} {'ratio':>7s}")
    for load in args.load:
        first = rates[load, args.workers[0]]
        for workers in args.workers:
            runs = rates[load, workers]
            ratio = statistics.median(b / a for a, b in zip(first, runs, strict=True))
            shares = "+".join(map(str, thread_shares(threads, workers)))
            print(f"{load:13.2f} cores {workers:8d} {shares:>8s} {statistics.median(runs):10.0f} {ratio:6.2f}x")


def run_engine(prm, items, workers: int, threads: int) -> tuple[float, list[list[float]]]:
    """All items submitted at once to an engine of `workers`; tokens/s from submission to the last score."""
    shares = thread_shares(threads, workers)
    engine = Engine(
        PackedScorer(prm),
        Metrics(),
        max_batch_tokens=batch_tokens(None, "cpu"),
        workers=workers,
        on_worker_start=lambda number: size_this_threads_pool(shares[number]),
    )
    engine.start()
    try:
        started = time.perf_counter()
        scores = engine.submit(items).result()
        seconds = time.perf_counter() - started
    finally:
        engine.stop()
    return sum(len(item) for item in items) / seconds, scores


def start_load(cores: float) -> multiprocessing.Process | None:
    if cores <= 0:
        return None
    process = multiprocessing.get_context("spawn").Process(target=busy, args=(cores,), daemon=True)
    process.start()
    return process


def busy(cores: float, period: float = 0.002) -> None:
    """Keep `cores` of one core busy: a burst of `cores * period` seconds of work every `period` seconds."""
    while True:
        started = time.thread_time()
        while time.thread_time() - started < cores * period:
            pass
        time.sleep(period * (1 - cores))


if __name__ == "__main__":
    torch.set_num_threads(thread_budget().threads)
    main()
