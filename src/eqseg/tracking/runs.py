"""One MLflow run per grid cell, and what commands log to it.

- One live run per grid cell: `start_cell_run` continues the run named by a checkpoint, or closes (KILLED) runs of
  the same cell left RUNNING by a process that died, before it starts a new one.
- Evaluation and prediction add to a finished run with `log_to_run`, which never changes the run's status.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from eqseg.config import MlflowConfig
from eqseg.errors import EqsegError
from eqseg.tracking.provenance import git_tags
from eqseg.tracking.store import _init_lock, retry, setup
from eqseg.utils.process import pid_alive

log = logging.getLogger(__name__)
CELL_TAG = "cell"
CONFIG_HASH_TAG = "config_hash"
OWNER_TAG = "eqseg.owner"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested params to MLflow's flat keys: {'train': {'lr': 1}} -> {'train.lr': 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _owner() -> str:
    """host:pid:start time of this process (start time tells a live process from a later one with the same pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); "?" where unknown, "zombie"
    for a process that has exited but was not reaped yet."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the (command name)
    except (OSError, IndexError):
        return "?"
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


def _owner_alive(owner: str) -> bool:
    """Whether the process that wrote `owner` still runs. Unknown hosts count as gone: each cell is run by one job
    at a time (Snakemake, DVC), so a RUNNING run of this cell from another machine is a job that died."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # an earlier run of this process that was never ended
    if start not in ("", "?") and Path("/proc").is_dir():
        return _start_time(pid) == start  # a zombie or a new process with the same pid do not match
    return pid_alive(pid)


def cell_key(cell: dict[str, Any]) -> str:
    """One string naming a grid cell, e.g. 'train/cpm15/unet/full/seed3' from dict(stage='train', dataset='cpm15',
    model='unet', supervision='full', seed=3) (keys in the given order; `seed` values get a 'seed' prefix)."""
    parts = []
    for k, v in cell.items():
        text = f"seed{v}" if k == "seed" else str(v)
        if not text or any(c in text for c in "'\"`\\\n"):
            raise EqsegError(f"mlflow: cell {k}={text!r} contains a quote, backslash or newline")
        parts.append(text)
    return "/".join(parts)


def _runs_of_cell(client, exp_id: str, key: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.{CELL_TAG} = '{key}'", max_results=1000)


def start_cell_run(cfg: MlflowConfig, cell: dict[str, Any], config_hash: str, run_id: str | None = None,
                   run_name: str | None = None, tags: dict[str, str] | None = None, start_time: float | None = None):
    """Start (or continue) the MLflow run of one grid cell; never leaves two live runs for the cell.

    cell: the cell's identity in order, e.g. dict(stage='train', dataset=..., model=..., supervision=..., seed=...);
      each item becomes a tag, and `cell` = cell_key(cell) tags the run for finding it again.
    config_hash: the hash of the cell's configuration (the checkpoint's); tagged as `config_hash`.
    run_id: the run a checkpoint recorded. If it still exists in this experiment, for this cell, it is continued
      (status back to RUNNING). Otherwise a new run starts.
    Other runs of the cell still RUNNING whose process is gone (killed before it could end its run) are marked
    KILLED first; a run whose process is alive on this machine raises EqsegError (the cell is being trained).
    start_time: when the work began (time.time()), if before this call: a new run starts then, so that its
      duration (end - start, what the UI shows and sorts by) spans the whole work, not only the logging after it.
    Also tags git_commit, git_dirty and the owning process. Returns mlflow's ActiveRun (fluent API: later
    log_params/log_metrics/log_artifacts/log_model/log_dataset/end_run write to it)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    exp_id = setup(cfg)
    client = MlflowClient(cfg.tracking_uri)
    key = cell_key(cell)
    what = f"mlflow.tracking_uri {cfg.tracking_uri}"
    all_tags = {k: str(v) for k, v in cell.items()} | {CELL_TAG: key, CONFIG_HASH_TAG: str(config_hash), OWNER_TAG: _owner()}
    all_tags |= git_tags() | {k: str(v) for k, v in (tags or {}).items()}

    if mlflow.active_run() is not None:
        log.warning("mlflow: ending run %s left open in this process", mlflow.active_run().info.run_id)
        retry(lambda: mlflow.end_run("KILLED"), what=what)

    with _init_lock(cfg):  # look-then-start is atomic between processes sharing a SQLite store
        resume = None
        if run_id:
            try:
                old = client.get_run(run_id)
            except MlflowException:
                old = None
            if (old is not None and old.info.experiment_id == exp_id and old.info.lifecycle_stage == "active"
                    and old.data.tags.get(CELL_TAG) == key):
                resume = run_id
            else:
                log.warning("mlflow: run %s of the checkpoint is not a run of %s in %s; starting a new run",
                            run_id, key, cfg.tracking_uri)

        for run in retry(lambda: _runs_of_cell(client, exp_id, key), what=what):
            if run.info.status != "RUNNING":
                continue
            owner = run.data.tags.get(OWNER_TAG, "")
            if owner and _owner_alive(owner):
                raise EqsegError(f"{key}: MLflow run {run.info.run_id} is being written by process {owner.split(':')[1]}"
                                 " on this machine; wait for it or stop it")
            if run.info.run_id == resume:
                continue
            retry(lambda: client.set_tag(run.info.run_id, "eqseg.end", "its process stopped before ending the run"), what=what)
            retry(lambda: client.set_terminated(run.info.run_id, "KILLED"), what=what)
            log.warning("mlflow: run %s of %s was left RUNNING by a stopped process; marked KILLED", run.info.run_id, key)

        if resume:
            active = retry(lambda: mlflow.start_run(run_id=resume), what=what)
            retry(lambda: mlflow.set_tags({OWNER_TAG: all_tags[OWNER_TAG]}), what=what)
            return active
        if start_time is None:
            return retry(lambda: mlflow.start_run(experiment_id=exp_id, run_name=run_name or key, tags=all_tags), what=what)
        created = retry(lambda: client.create_run(exp_id, start_time=int(start_time * 1000), tags=all_tags,
                                                  run_name=run_name or key), what=what)
        return retry(lambda: mlflow.start_run(run_id=created.info.run_id), what=what)


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))}


def log_params(params: dict) -> None:
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    keys = sorted(flat)
    for i in range(0, len(keys), 90):  # MLflow caps a batch at 100 params
        chunk = {k: flat[k] for k in keys[i : i + 90]}
        retry(lambda: mlflow.log_params(chunk))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    clean = _clean_metrics(metrics)
    retry(lambda: mlflow.log_metrics(clean, step=step))


def log_artifacts(paths: list[Path], subdir: str | None = None) -> None:
    import mlflow

    for p in paths:
        if Path(p).exists():
            retry(lambda: mlflow.log_artifact(str(p), artifact_path=subdir))


def end_run(status: str = "FINISHED") -> None:
    import mlflow

    retry(lambda: mlflow.end_run(status=status))


def log_to_run(cfg: MlflowConfig, run_id: str, metrics: dict[str, Any] | None = None, artifacts: list[Path] = (),
               subdir: str | None = None, tags: dict[str, str] | None = None, step: int = 0) -> bool:
    """Add metrics, tags and files to an existing run (evaluation, prediction) without reopening it: its status
    and end time stay as training left them, and a killed evaluation leaves nothing RUNNING.
    Returns False (with a warning) when the run is not in the store (e.g. the store was deleted after training)."""
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    setup(cfg)
    client = MlflowClient(cfg.tracking_uri)
    what = f"mlflow.tracking_uri {cfg.tracking_uri}"
    try:
        client.get_run(run_id)
    except MlflowException:
        log.warning("mlflow: run %s is not in %s; nothing logged there", run_id, cfg.tracking_uri)
        return False
    now = int(time.time() * 1000)
    ms = [Metric(k, v, now, step) for k, v in _clean_metrics(metrics or {}).items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, len(ms), 1000):  # MLflow's batch limits: 1000 metrics, 100 tags
        retry(lambda: client.log_batch(run_id, metrics=ms[i : i + 1000]), what=what)
    for i in range(0, len(ts), 100):
        retry(lambda: client.log_batch(run_id, tags=ts[i : i + 100]), what=what)
    for p in artifacts:
        if Path(p).exists():
            retry(lambda: client.log_artifact(run_id, str(p), artifact_path=subdir), what=what)
    return True
