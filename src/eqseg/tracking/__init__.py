"""MLflow bookkeeping: one store set explicitly (a SQLite file by default), one run per grid cell.

- store: the tracking URI checked, the store created under a file lock, a moved store followed; `setup`, `retry`.
- runs: a cell's run started or continued (dead runs of the cell KILLED), params, metrics and files logged to it,
  `log_to_run` for evaluation and prediction.
- model_data: the trained model and the tile store it learnt from, logged to the active run.
- provenance: the code a run used, from git (commit, dirty work tree, hash of the uncommitted code).
- server: the `mlflow server` command that shows a store, artifacts included.

Callers import the names below from `eqseg.tracking`.
"""

from eqseg.tracking.model_data import dataset_digest, log_dataset, log_model
from eqseg.tracking.provenance import git_code_diff, git_commit, git_dirty, git_tags
from eqseg.tracking.runs import end_run, log_artifacts, log_metrics, log_params, log_to_run, start_cell_run
from eqseg.tracking.server import server_command, server_env
from eqseg.tracking.store import setup

__all__ = [
    "dataset_digest", "end_run", "git_code_diff", "git_commit", "git_dirty", "git_tags", "log_artifacts", "log_dataset",
    "log_metrics", "log_model", "log_params", "log_to_run", "server_command", "server_env", "setup", "start_cell_run",
]
