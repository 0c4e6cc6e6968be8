"""eqseg.utils.process: whether a process runs, and how many CPUs this process may use (one answer each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqseg import runtime, tracking
from eqseg.tiling import geotiff
from eqseg.utils import process
from eqseg.utils.process import pid_alive, usable_cpus


@pytest.fixture
def eight_cpus_bound_to_six(monkeypatch):
    """A machine of 8 CPUs whose affinity lets this process run on 6 of them; no SLURM job."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)


def test_usable_cpus_follow_affinity_then_slurm(eight_cpus_bound_to_six, monkeypatch):
    assert usable_cpus() == 6  # the affinity, not the machine's 8
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert usable_cpus() == 3  # a SLURM task of 3 CPUs on a node it sees whole
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert usable_cpus() == 6  # never more than the affinity allows
    for junk in ("", "0", "two", "-4"):
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", junk)
        assert usable_cpus() == 6, junk
    monkeypatch.delattr(os, "sched_getaffinity")  # no affinity on this system: the machine's count
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert usable_cpus() == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


def test_every_cpu_count_is_the_one_function(eight_cpus_bound_to_six, monkeypatch):
    """Torch threads (runtime.set_threads) and GDAL decoding threads (tiling) both count the usable CPUs."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert geotiff.decode_threads() == 3
    before = torch.get_num_threads()
    try:
        runtime.set_threads(0, num_workers=1)
        assert torch.get_num_threads() == 3  # 4 CPUs, one left to the loader worker
        runtime.set_threads(0, num_workers=0, processes=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert not hasattr(geotiff, "usable_cpus") or geotiff.usable_cpus is process.usable_cpus


def _zombie() -> subprocess.Popen:
    """A child that has exited and was not reaped yet."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return child
        time.sleep(0.02)
    child.wait()
    pytest.fail("child did not exit")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive(2**80)
    child = _zombie()
    try:
        assert not pid_alive(child.pid)  # exited: a zombie is not running
    finally:
        child.wait()
    assert not pid_alive(child.pid)  # reaped (a reuse of the pid this quickly is unlikely)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(running.pid)
        # the MLflow owner check asks the same helper when the owner's start time is unknown
        assert tracking.runs._owner_alive(f"{socket.gethostname()}:{running.pid}:?")
    finally:
        running.kill()
        running.wait()
    assert not tracking.runs._owner_alive(f"{socket.gethostname()}:{running.pid}:?")
