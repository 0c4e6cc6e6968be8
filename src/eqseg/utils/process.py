"""Facts about processes and this machine, each answered once: whether a process runs, how many CPUs we may use.

No psutil: it is only a test extra of eqseg, so the core package asks the kernel itself.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as dead; another user's as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def usable_cpus() -> int:
    """CPUs this process may run on: its CPU affinity where the system has one (taskset, cgroup cpusets, SLURM's
    task binding), else every CPU of the machine; no more than SLURM_CPUS_PER_TASK when SLURM sets it (a job step
    may see the whole node without binding)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.strip().isdigit() and int(slurm) > 0:
        count = min(count, int(slurm))
    return max(1, count)
