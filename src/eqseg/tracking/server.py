"""The `mlflow server` that shows a store in the browser, artifacts included."""

from __future__ import annotations

import os
import sys

from eqseg.config import MlflowConfig
from eqseg.tracking.store import artifact_root, sqlite_path


def server_command(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line that shows this store in the browser, artifacts included
    (`--artifacts-destination` beside a SQLite store, for experiments created from the UI)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    db = sqlite_path(cfg.tracking_uri)
    if db is not None:
        cmd += ["--backend-store-uri", f"sqlite:///{db.resolve()}", "--artifacts-destination", str(artifact_root(cfg))]
    else:
        cmd += ["--backend-store-uri", cfg.tracking_uri]
    return cmd


def server_env() -> dict[str, str]:
    """Environment for server_command: MLflow's background job runner (GenAI jobs, eight extra worker processes,
    half the start-up time) off unless the user set it."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"} | dict(os.environ)
