"""`prm serve` from two revisions of this repository, side by side: did a change make serving faster?

Each revision's `service/` is exported (`git archive`; `WORKTREE` is the working tree as it is now, edits
included) into a temporary folder, and `prm serve` runs from there with this venv's packages, so the two
differ in the project's code only. Both serve one random-weight checkpoint with the prefix cache off (wrk
repeats bodies); interleaved rounds of wrk over the same ProcessBench bodies; scores compared first.
Prints requests/s of each and the ratio B/A (median of per-round ratios). The default is the tiny shape
(hidden 64, 2 layers), where the cost per request weighs most.

With `--walks`, both serve with the prefix cache on, and each round is bench_prefix_cache.py's step-search
walks (16 MATH solutions re-scored step by step, 8 at once) on problems no earlier round sent: seconds per
round, and the ratio A/B of the seconds.

    python loadtest/bench_revisions.py HEAD WORKTREE              # what the uncommitted edits buy
    python loadtest/bench_revisions.py HEAD~3 HEAD --subset math --rounds 6
    python loadtest/bench_revisions.py HEAD~3 HEAD --walks --hidden-size 256 --layers 4
"""

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_http import add_pair_arguments, alternating_rounds, max_difference, pair_inputs, report_pair
from bench_prefix_cache import run, walks
from common import ROOT, start_prm_serve, wait_ready

WORKTREE = "WORKTREE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline: a git revision, or WORKTREE")
    parser.add_argument("b", help="the candidate: a git revision, or WORKTREE")
    add_pair_arguments(parser, rounds=6)
    parser.add_argument("--walks", action="store_true", help="the prefix cache on, step-search walks")
    args = parser.parse_args()
    if args.walks:
        args.subset = "math"
    items, checkpoint, bodies = pair_inputs(args, "revisions")
    ports = {f"A {args.a}": 8191, f"B {args.b}": 8192}
    cache = [] if args.walks else ["--prefix-cache-mb", "0"]

    with tempfile.TemporaryDirectory() as exports:
        servers = {}
        try:
            for (name, port), revision in zip(ports.items(), (args.a, args.b), strict=True):
                tree = export(revision, Path(exports) / str(port))
                servers[name] = start_prm_serve(checkpoint, port, *cache, cwd=tree)
            for name, process in servers.items():
                wait_ready(ports[name], process)
            worst = max_difference(items[:50], tuple(ports.values()))
            print(f"max |score difference| B vs A over 50 items: {worst:.1e}")
            if args.walks:
                seconds = walk_rounds(ports, items, args.rounds)
            else:
                rates = alternating_rounds(ports, bodies, items[0], args.rounds, args.duration, args.connections)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait()
    if args.walks:
        a, b = seconds.values()
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        print(f"\nwalks, hidden {args.hidden_size}, {args.layers} layers, medians of {args.rounds} rounds")
        for name, values in seconds.items():
            print(f"{name:20s} {statistics.median(values):7.2f} s")
        print(f"ratio A / B of the seconds: {ratio:.2f}x")
    else:
        report_pair(args, rates, *reversed(ports))


def walk_rounds(ports: dict[str, int], items: list[dict], rounds: int) -> dict[str, list[float]]:
    """Seconds of each server per round of walks (the same for both, new each round), the order reversed every
    other round."""
    walkable = [item for item in items if 6 <= len(item["steps"]) <= 15]
    seconds: dict[str, list[float]] = {name: [] for name in ports}
    for number in range(rounds):
        sequences = walks(walkable[16 * number : 16 * (number + 1)])  # new to both servers' caches
        for name in ports if number % 2 == 0 else reversed(ports):
            started = time.perf_counter()
            asyncio.run(run(ports[name], sequences))
            seconds[name].append(time.perf_counter() - started)
            print(f"round {number + 1} {name:20s} {seconds[name][-1]:.2f} s", flush=True)
    return seconds


def export(revision: str, folder: Path) -> Path:
    """`service/` of `revision` (or of the working tree) under `folder`."""
    folder.mkdir(parents=True)
    if revision == WORKTREE:
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "service"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in files:
            if (ROOT / name).is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes((ROOT / name).read_bytes())
    else:
        archive = subprocess.run(["git", "archive", revision, "service"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


if __name__ == "__main__":
    main()
