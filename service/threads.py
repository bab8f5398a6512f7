"""How many CPU threads the process may use: its CPU affinity and its cgroup's CPU quota, not the machine's cores.

torch sizes its thread pool from the cores it sees. In a pod given 2 CPUs on a 64-core node, or under
`taskset` beside a training job, that is far more threads than the process may run at once: they are
throttled or descheduled mid-forward, and every parallel region waits for the slowest of them. So
`prm serve` sizes the pool from what the process may use (`--threads` / `PRM_THREADS` overrides), and
says what it chose, and why, in its startup log and in `/v1/models`.

A fractional quota is rounded down (at least 1): a quota is enforced per period, and a thread beyond it
is throttled at the worst moment, inside a forward that the others then wait for.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadBudget:
    threads: int
    reason: str  # what the count comes from, for the log and /v1/models


def thread_budget(
    override: int | None = None, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> ThreadBudget:
    """`override` if given; else the CPUs in the affinity mask, capped by the cgroup quota."""
    if override:
        return ThreadBudget(override, "--threads")
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    if quota is not None and quota < cores:
        reason = f"cgroup CPU quota of {quota:g} CPUs ({_cores(cores)} in affinity)"
        return ThreadBudget(max(1, math.floor(quota)), reason)
    return ThreadBudget(cores, f"CPU affinity ({_cores(cores)})")


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs per period that the process's cgroup and its ancestors allow, the tightest of them (cgroup v2's
    `cpu.max`, v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when none sets a quota or none is readable."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quotas += [_v2_quota(directory) for directory in _ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):
            mount = next((m for m in (cgroup_root / controllers, cgroup_root / "cpu") if m.is_dir()), None)
            quotas += [_v1_quota(directory) for directory in _ancestors(mount, path)] if mount else []
    known = [quota for quota in quotas if quota is not None]
    return min(known) if known else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its parents up to the mount; in a container that sees only its own cgroup at
    the mount, the path from /proc/self/cgroup need not exist, and the mount itself is the cgroup."""
    parts = [part for part in path.split("/") if part]
    directories = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [directory for directory in directories if directory.is_dir()]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period
