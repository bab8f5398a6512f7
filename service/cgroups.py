"""What the process's cgroups allow it, the tightest of its cgroup and every ancestor: CPUs per period and
memory not yet used. Read from the hierarchy that /proc/self/cgroup names (cgroup v2, or v1's `cpu` and
`memory` controllers). Limits set by a pod or a systemd slice above the process's own cgroup count too.
"""

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
_V1_NO_MEMORY_LIMIT = 2**60  # v1 writes "no limit" as a page-rounded 2**63 - 1


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs per period (v2's `cpu.max`, v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when no cgroup on
    the way sets a quota or none is readable."""
    quotas = [
        _v2_quota(directory) if version == 2 else _v1_quota(directory)
        for version, directory in _hierarchy("cpu", cgroup_root, self_cgroup)
    ]
    known = [quota for quota in quotas if quota is not None]
    return min(known) if known else None


def memory_headroom(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """Bytes the cgroups may still take: limit minus usage (v2's `memory.max` and `memory.current`, v1's
    `memory.limit_in_bytes` and `memory.usage_in_bytes`); None when none on the way sets a limit."""
    names = {2: ("memory.max", "memory.current"), 1: ("memory.limit_in_bytes", "memory.usage_in_bytes")}
    headrooms = []
    for version, directory in _hierarchy("memory", cgroup_root, self_cgroup):
        limit, used = (_read_int(directory / name) for name in names[version])
        if limit is not None and used is not None and limit < _V1_NO_MEMORY_LIMIT:
            headrooms.append(max(0, limit - used))
    return min(headrooms) if headrooms else None


def _hierarchy(controller: str, cgroup_root: Path, self_cgroup: Path) -> list[tuple[int, Path]]:
    """(cgroup version, directory) of the process's cgroup and its ancestors, in the v2 hierarchy and in the
    v1 hierarchy that has `controller`."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found += [(2, directory) for directory in _ancestors(cgroup_root, path)]
        elif controller in controllers.split(","):
            mount = next((m for m in (cgroup_root / controllers, cgroup_root / controller) if m.is_dir()), None)
            found += [(1, directory) for directory in _ancestors(mount, path)] if mount else []
    return found


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
    quota, period = _read_int(directory / "cpu.cfs_quota_us"), _read_int(directory / "cpu.cfs_period_us")
    return None if quota is None or period is None or quota <= 0 else quota / period


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())  # v2's "max" (no limit) is not an int
    except (OSError, ValueError):
        return None
