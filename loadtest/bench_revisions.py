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
import subprocess
import tempfile
from pathlib import Path

from bench_http import add_pair_arguments, alternating_rounds, max_difference, pair_inputs, report_pair
from common import ROOT, start_prm_serve, wait_ready

WORKTREE = "WORKTREE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline: a git revision, or WORKTREE")
    parser.add_argument("b", help="the candidate: a git revision, or WORKTREE")
    add_pair_arguments(parser, rounds=6)
    args = parser.parse_args()
    items, checkpoint, bodies = pair_inputs(args, "revisions")
    ports = {f"A {args.a}": 8191, f"B {args.b}": 8192}

    with tempfile.TemporaryDirectory() as exports:
        servers = {}
        try:
            for (name, port), revision in zip(ports.items(), (args.a, args.b), strict=True):
                tree = export(revision, Path(exports) / str(port))
                servers[name] = start_prm_serve(checkpoint, port, "--prefix-cache-mb", "0", cwd=tree)
            for name, process in servers.items():
                wait_ready(ports[name], process)
            worst = max_difference(items[:50], tuple(ports.values()))
            print(f"max |score difference| B vs A over 50 items: {worst:.1e}")
            rates = alternating_rounds(ports, bodies, items[0], args.rounds, args.duration, args.connections)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait()
    report_pair(args, rates, *reversed(ports))


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
