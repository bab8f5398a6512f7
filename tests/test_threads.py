"""Thread sizing: what the process may use, from its CPU affinity and its cgroup's quota, reported in
/v1/models and the startup log (a loaded neighbour on the same cores must not be fought with a pool sized
for the whole machine)."""

import os
import sys

import httpx

from service.cgroups import cpu_quota, memory_headroom
from service.config import engine_workers, thread_shares
from service.threads import ThreadBudget, thread_budget
from tests.helpers import Server

CORES = len(os.sched_getaffinity(0))


def fake_cgroup(tmp_path, membership: str, files: dict[str, str]):
    """A /proc/self/cgroup naming `membership` and a cgroup mount holding `files`, as (root, self_cgroup)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    root, self_cgroup = tmp_path / "sys-fs-cgroup", tmp_path / "proc-self-cgroup"
    self_cgroup.write_text(membership)
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root, self_cgroup


def test_a_v2_quota_is_the_tightest_on_the_way_to_the_root_and_rounds_down(tmp_path):
    root, self_cgroup = fake_cgroup(
        tmp_path,
        "0::/kubepods/pod1/container\n",
        {"kubepods/pod1/container/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n"},
    )  # the container sets none; its pod allows 1.5 CPUs
    assert cpu_quota(root, self_cgroup) == 1.5
    expected = 1 if CORES > 1.5 else CORES
    assert thread_budget(None, root, self_cgroup).threads == expected


def test_a_v1_quota_counts_and_a_container_sees_its_own_cgroup_at_the_mount(tmp_path):
    root, self_cgroup = fake_cgroup(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",  # a host path the container's mount does not have
        {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert cpu_quota(root, self_cgroup) == 0.5
    assert thread_budget(None, root, self_cgroup) == ThreadBudget(
        1, f"cgroup CPU quota of 0.5 CPUs ({CORES} core{'s' * (CORES != 1)} in affinity)"
    )


def test_no_quota_means_the_affinity_mask_and_an_override_wins(tmp_path):
    root, self_cgroup = fake_cgroup(
        tmp_path, "1:cpu:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert cpu_quota(root, self_cgroup) is None
    assert thread_budget(None, root, self_cgroup).threads == CORES
    assert thread_budget(None, tmp_path / "absent", tmp_path / "absent").threads == CORES  # nothing readable
    assert thread_budget(3, root, self_cgroup) == ThreadBudget(3, "--threads")


def test_engine_workers_default_to_two_pools_on_a_cpu_and_never_outnumber_its_threads():
    assert [engine_workers(None, "cpu", threads) for threads in (1, 2, 3, 16)] == [1, 2, 2, 2]
    assert (engine_workers(4, "cpu", 2), engine_workers(3, "cpu", 8)) == (2, 3)
    assert (engine_workers(None, "cuda", 16), engine_workers(2, "cuda", 16), engine_workers(4, "vllm", 16)) == (1, 2, 1)
    assert (thread_shares(2, 2), thread_shares(5, 2), thread_shares(16, 3)) == ([1, 1], [3, 2], [6, 5, 5])


def test_memory_headroom_is_the_tightest_limit_minus_usage_on_the_way_to_the_root(tmp_path):
    """What the prefix cache checks its size against on CPU: a slice's limit above the process's cgroup counts."""
    root, self_cgroup = fake_cgroup(
        tmp_path,
        "0::/system.slice/prm.service\n",
        {
            "system.slice/prm.service/memory.max": "max\n",  # the service's own cgroup sets none
            "system.slice/prm.service/memory.current": "300\n",
            "system.slice/memory.max": "1000\n",
            "system.slice/memory.current": "900\n",
        },
    )
    assert memory_headroom(root, self_cgroup) == 100
    root, self_cgroup = fake_cgroup(
        tmp_path / "v1",
        "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
        {"memory/memory.limit_in_bytes": "4096\n", "memory/memory.usage_in_bytes": "1024\n"},
    )
    assert memory_headroom(root, self_cgroup) == 3072
    root, self_cgroup = fake_cgroup(
        tmp_path / "unlimited",
        "5:memory:/\n",
        {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "1024\n"},
    )
    assert memory_headroom(root, self_cgroup) is None
    assert memory_headroom(tmp_path / "absent", tmp_path / "absent") is None


def test_prm_serve_under_taskset_uses_one_thread_and_says_so(checkpoint):
    """A real `prm serve` pinned to one core: the pool, /v1/models and the startup log agree."""
    pinned = ["taskset", "-c", "0", sys.executable, "-m", "service"]
    server = Server("--model", str(checkpoint), prm=pinned).wait_ready(timeout=120)
    overridden = Server("--model", str(checkpoint), prm=pinned, env={"PRM_THREADS": "2"}).wait_ready(timeout=120)
    try:
        card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        assert (card["threads"], card["threads_from"], card["engine_workers"]) == (1, "CPU affinity (1 core)", 1)
        assert "threads: 1, from CPU affinity (1 core)" in server.output()
        assert "engine: 1 worker(s), threads 1" in server.output()
        card = httpx.get(f"{overridden.url}/v1/models").json()["data"][0]
        assert (card["threads"], card["threads_from"], card["engine_workers"]) == (2, "--threads", 2)
        assert "engine: 2 worker(s), threads 1+1" in overridden.output()
    finally:
        server.stop()
        overridden.stop()
