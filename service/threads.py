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

import torch

from service.cgroups import CGROUP_ROOT, SELF_CGROUP, cpu_quota


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
    quota = cpu_quota(cgroup_root, self_cgroup)
    if quota is not None and quota < cores:
        reason = f"cgroup CPU quota of {quota:g} CPUs ({_cores(cores)} in affinity)"
        return ThreadBudget(max(1, math.floor(quota)), reason)
    return ThreadBudget(cores, f"CPU affinity ({_cores(cores)})")


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


def size_this_threads_pool(threads: int) -> None:
    """Give the calling thread its own torch pool of `threads` (each engine worker runs one).

    torch sizes a thread's pool from the process-wide count when the thread first uses it, which would undo
    a count set before that; so the pool is touched first, then sized."""
    torch.get_num_threads()
    torch.set_num_threads(threads)
