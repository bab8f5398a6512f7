"""`prm serve` from two revisions of this repository, side by side: did a change make serving faster?

Each revision's `service/` is exported (`git archive`; `WORKTREE` is the working tree as it is now, edits
included) into a temporary folder, and `prm serve` runs from there with this venv's packages, so the two
differ in the project's code only. Both serve one random-weight checkpoint with the prefix cache off (wrk
repeats bodies); interleaved rounds of wrk over the same ProcessBench bodies; scores compared first.
Prints requests/s of each and the ratio B/A (median of per-round ratios). The default is the tiny shape
(hidden 64, 2 layers), where the cost per request weighs most.

    python loadtest/bench_revisions.py HEAD WORKTREE              # what the uncommitted edits buy
    python loadtest/bench_revisions.py HEAD~3 HEAD --subset math --rounds 6
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from bench_http import alternating_rounds, body, build_checkpoint, texts
from common import ROOT, wait_ready

HERE = Path(__file__).parent
WORKTREE = "WORKTREE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline: a git revision, or WORKTREE")
    parser.add_argument("b", help="the candidate: a git revision, or WORKTREE")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench")
    parser.add_argument("--subset", default="gsm8k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per server and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()

    items = json.loads((args.data / f"{args.subset}.json").read_text())
    checkpoint = build_checkpoint(args, [text for item in items for text in texts(item)])
    bodies = args.work / f"revisions-{args.subset}.jsonl"
    bodies.write_text("".join(json.dumps(body(item)) + "\n" for item in items))
    ports = {f"A {args.a}": 8191, f"B {args.b}": 8192}

    with tempfile.TemporaryDirectory() as exports:
        servers = {}
        try:
            for (name, port), revision in zip(ports.items(), (args.a, args.b), strict=True):
                tree = export(revision, Path(exports) / str(port))
                servers[name] = subprocess.Popen(
                    [sys.executable, "-m", "service", "serve", "--model", str(checkpoint), "--port", str(port)]
                    + ["--log-level", "warning", "--prefix-cache-mb", "0"],
                    cwd=tree,  # `python -m` puts the folder first on the path: its `service` is the one imported
                )
            for name, process in servers.items():
                wait_ready(ports[name], process)
            print(
                f"max |score difference| B vs A over 50 items: {max_difference(list(ports.values()), items[:50]):.1e}"
            )
            rates = alternating_rounds(ports, bodies, items[0], args.rounds, args.duration, args.connections)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait()
    before, after = rates.values()
    ratio = statistics.median(b / a for a, b in zip(before, after, strict=True))
    print(
        f"\n{args.subset}, hidden {args.hidden_size}, {args.layers} layers, {args.connections} connections, "
        f"medians of {args.rounds} rounds of {args.duration} s"
    )
    for name, values in rates.items():
        print(f"{name:20s} {statistics.median(values):7.1f} req/s")
    print(f"ratio B/A {ratio:.2f}x")


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


def max_difference(ports: list[int], items: list[dict]) -> float:
    worst = 0.0
    with httpx.Client(timeout=60) as client:
        for item in items:
            a, b = (client.post(f"http://127.0.0.1:{port}/score_steps", json=body(item)).json() for port in ports)
            worst = max([worst, *(abs(x - y) for x, y in zip(a["step_scores"], b["step_scores"], strict=True))])
    return worst


if __name__ == "__main__":
    main()
