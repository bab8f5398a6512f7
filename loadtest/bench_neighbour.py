"""A loaded neighbour: two `prm serve` processes on one machine, both under load. What share of its solo
requests/s does each keep? A fair share is 1 / 2.

In interleaved rounds, on one checkpoint and the same ProcessBench bodies (wrk, --connections per server):
- `solo`: one server alone on the machine, threads as `prm serve` sizes them;
- `pods, sized`: each server in its own cgroup with a CPU quota of half the cores (two pods with
  `resources.limits.cpu` on one node); `prm serve` sizes its threads from the quota;
- `pods, whole machine`: the same cgroups with `--threads` set to every core, a pool sized for the whole
  machine (what torch picks by itself, and what `prm serve` did before it read the quota);
- `shared`: both servers on every core with no quota (a server beside another job): neither can know of
  the other, so each keeps the cores it is given;
- `shared, --threads half`: the same, each told half the cores, as an operator co-locating them would.

The servers run with the prefix cache off: wrk repeats its bodies, and a server fast enough to come round
to them again would meet its own cache, not its share of the cores. The pod scenarios need a writable
cgroup (v1 `cpu` controller or v2, as root); without one they are left out and the script says so.

    python loadtest/bench_neighbour.py                  # 3 rounds of 15 s
    python loadtest/bench_neighbour.py --rounds 1 --duration 5
"""

import argparse
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_http import body, build_checkpoint, drain, texts, wrk
from common import ROOT, start_prm_serve, wait_ready

PORTS = (8121, 8122)
CGROUP = Path("/sys/fs/cgroup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench/gsm8k.json")
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16, help="per server")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()

    items = json.loads(args.data.read_text())
    checkpoint = build_checkpoint(args, [text for item in items for text in texts(item)])
    bodies = args.work / "neighbour.jsonl"
    bodies.write_text("".join(json.dumps(body(item)) + "\n" for item in items))
    cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    scenarios = {  # name: (environment, cgroups, servers loaded)
        "solo": ({}, None, 1),
        "shared": ({}, None, 2),
        "shared, --threads half": ({"PRM_THREADS": half}, None, 2),
    }
    groups = pod_cgroups(half)
    if groups:
        scenarios["pods, sized"] = ({}, groups, 2)
        scenarios["pods, whole machine"] = ({"PRM_THREADS": cores}, groups, 2)
    else:
        print("no writable cgroup here: the pod scenarios are left out")
    results = {name: [] for name in scenarios}
    try:
        for round_index in range(args.rounds):
            for name, (env, cgroups, loaded) in scenarios.items():
                rates = run_scenario(checkpoint, bodies, items[0], env, cgroups, loaded, args)
                results[name].append(rates)
                print(f"round {round_index + 1} {name:24s} req/s per loaded server: {rates}", flush=True)
    finally:
        for group in groups or ():
            group.rmdir()
    report(results, args, cores, half)


def run_scenario(checkpoint, bodies, item, env, cgroups, loaded, args) -> list[float]:
    """Start both servers (in their cgroups, if any), load `loaded` of them at once, stop them."""
    servers = [
        start_prm_serve(
            checkpoint,
            port,
            "--prefix-cache-mb",
            "0",  # wrk repeats its bodies: a cache would turn the solo runs' second pass into hits
            env={**os.environ, **{key: str(value) for key, value in env.items()}},
            preexec_fn=(lambda group=group: join_cgroup(group)) if cgroups else None,
        )
        for port, group in zip(PORTS, cgroups or (None, None), strict=True)
    ]
    try:
        for port, process in zip(PORTS, servers, strict=True):
            wait_ready(port, process)
            wrk(port, bodies, 2, args.connections)  # warm-up, discarded
            drain(port, item)
        with ThreadPoolExecutor(loaded) as pool:  # both servers loaded over the same seconds
            runs = [pool.submit(wrk, port, bodies, args.duration, args.connections) for port in PORTS[:loaded]]
        return [round(run.result()["rps"], 1) for run in runs]
    finally:
        for process in servers:
            process.terminate()
            process.wait(30)


def pod_cgroups(cpus: int) -> list[Path] | None:
    """Two cgroups with a quota of `cpus` CPUs each, or None where cgroups cannot be written here."""
    v2 = (CGROUP / "cgroup.controllers").exists()
    parent = CGROUP if v2 else CGROUP / "cpu"
    groups = [parent / f"prm-bench-pod-{index}" for index in range(2)]
    try:
        for group in groups:
            group.mkdir(exist_ok=True)
            if v2:
                (group / "cpu.max").write_text(f"{cpus * 100000} 100000")
            else:
                (group / "cpu.cfs_period_us").write_text("100000")
                (group / "cpu.cfs_quota_us").write_text(str(cpus * 100000))
    except OSError:  # e.g. cgroup v2 without the cpu controller delegated here: leave nothing behind
        for group in groups:
            if group.is_dir():
                group.rmdir()
        return None
    return groups


def join_cgroup(group: Path) -> None:
    """Runs in the child before exec: the server and everything it starts live in `group`."""
    (group / "cgroup.procs").write_text(str(os.getpid()))


def report(results: dict, args, cores: int, half: int) -> None:
    solo = [rates[0] for rates in results["solo"]]  # each round's shares are of that round's solo run
    print(
        f"\nmedians over {args.rounds} round(s) of {args.duration} s, {args.connections} connections per server, "
        f"{cores} cores (half: {half}); random-weight Qwen2 PRM hidden={args.hidden_size} layers={args.layers}, "
        "float32, ProcessBench GSM8K items"
    )
    print(f"{'scenario':26s} {'req/s per server':>18s} {'share of solo':>14s}")
    for name, rounds in results.items():
        per_server = [statistics.median(rates[index] for rates in rounds) for index in range(len(rounds[0]))]
        shares = [
            statistics.median(rates[index] / alone for rates, alone in zip(rounds, solo, strict=True))
            for index in range(len(rounds[0]))
        ]
        print(
            f"{name:26s} {' / '.join(f'{rate:.1f}' for rate in per_server):>18s} "
            f"{' / '.join(f'{share:.2f}x' for share in shares):>14s}"
        )


if __name__ == "__main__":
    main()
