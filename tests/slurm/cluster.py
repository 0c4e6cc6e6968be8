"""A real single-node SLURM cluster on this machine (munge + slurmctld + slurmd, no systemd, no cgroups).

Used by the cluster end-to-end test; needs Debian's `slurm-wlm` and `munge` and root (as in CI). See
shared notes: without accounting, the Snakemake plugin must ask `squeue` for job states.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

MARK = "# written by eqseg tests/slurm/cluster.py"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONF = MARK + """
ClusterName=eqseg
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def available() -> str | None:
    """None if a cluster can be started here, else the reason."""
    if SYSTEM_CONF.exists() and MARK not in SYSTEM_CONF.read_text():
        return f"{SYSTEM_CONF} belongs to a real cluster; not touching it"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue") if shutil.which(b) is None]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting SLURM daemons needs root"
    return None


def _munge_up() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


def start(folder: Path, cpus: int = 2, mem_mb: int = 4000) -> dict[str, str]:
    """Start the daemons with their state in `folder`; return the environment for clients (SLURM_CONF)."""
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # Job steps (srun inside sbatch) look for the default path, whatever SLURM_CONF the daemons were given.
    conf = SYSTEM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CONF.format(d=folder, cpus=cpus, mem=mem_mb))
    if not _munge_up():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        (folder / "munged.started").write_text("started by the test cluster\n")
        for _ in range(50):
            if _munge_up():
                break
            time.sleep(0.1)
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout.strip()
        if out in ("idle", "mixed", "allocated"):
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.3)
    raise RuntimeError(f"SLURM node did not come up: {(folder / 'slurmctld.log').read_text()[-2000:]}")


def stop(folder: Path) -> None:
    """Stop the daemons `start` started (slurmd, slurmctld, and munged if it was not running before) and wait for
    them to exit, so no test leaves a process behind."""
    # jobs first: a test that timed out leaves its jobs running, and slurmstepd outlives the daemons
    for args in (["--full", "--signal=KILL"], []):
        try:
            subprocess.run(["scancel", *args, "--user", str(os.getuid())], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    pids = []
    for name in ("slurmd.pid", "slurmctld.pid"):
        pid_file = folder / name
        if pid_file.is_file():
            try:
                pids.append(int(pid_file.read_text().strip()))
            except ValueError:
                pass
    if (folder / "munged.started").is_file():
        out = subprocess.run(["pgrep", "-x", "munged"], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 15
    for pid in pids:
        while time.time() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    # whatever a job started and survived: its step daemons and processes running from this cluster's spool
    for pattern in ("slurmstepd", str(folder)):
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ", 1)[-1].startswith("Z"))
