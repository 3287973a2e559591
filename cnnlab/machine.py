"""What this machine lets a run use: CPUs (affinity mask, container quota) and DataLoader workers from them.

Plain os calls, no torch: data sources and the training environment both ask it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (containers, CI).

    torch's own default counts the machine's cores, so a container limited to 2 CPUs on a 64-core host would run
    32 threads that take turns on 2 CPUs.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up; None when unlimited."""
    candidates = [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")]
    for first, second in candidates:
        try:
            if second is None:
                quota, period = first.read_text().split()[:2]
            else:
                quota, period = first.read_text().strip(), second.read_text().strip()
            if quota in ("max", "-1"):
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


def worker_count(value: Any) -> int:
    """DataLoader workers for images decoded from disk: `auto` leaves one CPU to the training loop (at most 8)."""
    if value in (None, "auto"):
        return max(0, min(MAX_AUTO_WORKERS, available_cpus() - 1))
    return int(value)
