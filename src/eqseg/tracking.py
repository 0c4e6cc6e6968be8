"""MLflow bookkeeping: one store set explicitly (a SQLite file by default), one run per trained model.

SQLite raises "database is locked" when several jobs write at once, so the database and experiment are created
before parallel jobs start (`eqseg tracking-init`, called by Snakemake's onstart) and every write is retried.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from eqseg.config import MlflowConfig

T = TypeVar("T")


def retry(fn: Callable[[], T], attempts: int = 8, delay: float = 0.5) -> T:
    """Call fn, retrying on SQLite lock contention with exponential back-off."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # sqlalchemy wraps sqlite3.OperationalError in MlflowException
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


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


def git_commit(cwd: Path = Path(".")) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    _quiet()
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)

    def get_or_create() -> str:
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        artifacts = Path("mlartifacts").resolve() / cfg.experiment
        try:
            return mlflow.create_experiment(cfg.experiment, artifact_location=artifacts.as_uri())
        except Exception as err:  # another job created it in between
            exp = mlflow.get_experiment_by_name(cfg.experiment)
            if exp is None:
                raise err
            return exp.experiment_id

    return retry(get_or_create)


def start_run(cfg: MlflowConfig, run_id: str | None, run_name: str, tags: dict[str, str]):
    """Start a new run, or reopen `run_id` (a resumed training, or evaluation of a trained model)."""
    import mlflow

    experiment_id = setup(cfg)
    if run_id:
        return retry(lambda: mlflow.start_run(run_id=run_id))
    return retry(lambda: mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags))


def log_params(params: dict) -> None:
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    keys = sorted(flat)
    for i in range(0, len(keys), 90):  # MLflow caps a batch at 100 params
        chunk = {k: flat[k] for k in keys[i : i + 90]}
        retry(lambda: mlflow.log_params(chunk))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
    retry(lambda: mlflow.log_metrics(clean, step=step))


def log_artifacts(paths: list[Path], subdir: str | None = None) -> None:
    import mlflow

    for p in paths:
        if Path(p).exists():
            retry(lambda: mlflow.log_artifact(str(p), artifact_path=subdir))


def end_run(status: str = "FINISHED") -> None:
    import mlflow

    retry(lambda: mlflow.end_run(status=status))
