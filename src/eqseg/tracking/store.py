"""The MLflow store: set explicitly (a SQLite file by default), checked, created under a file lock, followed when moved.

- Store creation is safe from any command: with a SQLite store, `setup` holds an exclusive file lock while MLflow
  creates or migrates the tables and the experiment (MLflow's own table creation races between processes: `table
  already exists`, `duplicate column name`). Later writes are retried on lock contention ("database is locked") only.
- A store that cannot work (unwritable folder, a file that is not a database, no server answering) is one
  `EqsegError` line at once, not MLflow's minutes of connection retries.
- Artifacts of a SQLite store live beside it, in `<folder of the .db>/mlartifacts/<experiment>/`. MLflow stores
  artifact locations as absolute URIs (it resolves relative ones when an experiment is created), so `setup` notices
  a store that was moved or copied with its `mlartifacts/` folder and rewrites the stored locations to the new place.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import unquote, urlparse

from eqseg.config import MlflowConfig
from eqseg.errors import EqsegError

log = logging.getLogger(__name__)
T = TypeVar("T")
ARTIFACTS_DIR = "mlartifacts"
_READY: dict[tuple[str, str, int], str] = {}  # (store, experiment, pid) -> experiment id, set up in this process


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _is_lock_contention(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text


def _tracking_error(err: BaseException, what: str) -> EqsegError | None:
    """MLflow, SQLAlchemy and OS errors as one EqsegError line; None for anything else (a programming error)."""
    from mlflow.exceptions import MlflowException

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow
        SQLAlchemyError = ()  # noqa: N806
    if isinstance(err, (MlflowException, SQLAlchemyError, OSError, sqlite3.Error)):
        return EqsegError(f"{what}: {_first_line(err)}")
    return None


def retry(fn: Callable[[], T], attempts: int = 8, delay: float = 0.5, what: str = "mlflow") -> T:
    """Call fn, retrying with exponential back-off on SQLite lock contention only; any other store error (or
    contention that outlasts the retries) becomes one EqsegError line."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # sqlalchemy wraps sqlite3.OperationalError in MlflowException
            if _is_lock_contention(err) and attempt < attempts - 1:
                time.sleep(delay * 2**attempt)
                continue
            converted = _tracking_error(err, what)
            if converted is None:
                raise
            raise converted from err
    raise AssertionError("unreachable")


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # pipelines run offline (clusters); no phoning home
    for name in ("alembic", "mlflow.store.db.utils", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (relative paths are relative to the current folder), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


def artifact_root(cfg: MlflowConfig) -> Path | None:
    """Where a SQLite store keeps artifacts: `mlartifacts/` beside the database file (absolute). None otherwise
    (a server or another database decides its artifact location itself)."""
    db = sqlite_path(cfg.tracking_uri)
    return None if db is None else db.resolve().parent / ARTIFACTS_DIR


def _experiment_dir_name(experiment: str) -> str:
    if experiment in ("", ".", "..") or "/" in experiment or "\\" in experiment or "\0" in experiment:
        raise EqsegError(f"mlflow.experiment: {experiment!r} cannot name a folder (no '/', '\\', '.' or '..')")
    return experiment


def _check_sqlite(uri: str, db: Path) -> None:
    """Fail at once, in one line, when the SQLite file cannot be a writable MLflow store."""
    what = f"mlflow.tracking_uri {uri}"
    if db.is_dir():
        raise EqsegError(f"{what}: {db} is a folder, not a database file")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EqsegError(f"{what}: cannot create the folder {db.parent} ({err.strerror or err})") from None
    if not os.access(db.parent, os.W_OK | os.X_OK):
        raise EqsegError(f"{what}: the folder {db.parent} is not writable")
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise EqsegError(f"{what}: {db} is not readable and writable")
    try:
        con = sqlite3.connect(str(db), timeout=60)
        try:
            con.execute("PRAGMA schema_version").fetchall()
            con.execute("BEGIN IMMEDIATE")  # needs a write lock: fails on read-only files and file systems
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as err:
        raise EqsegError(f"{what}: cannot use {db} as an SQLite database ({_first_line(err)})") from None


def _check_server(uri: str) -> None:
    """An http(s) tracking URI must answer; MLflow would otherwise retry each request for minutes."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # the server answers (maybe not on /health, maybe asking for credentials): MLflow takes over
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise EqsegError(f"mlflow.tracking_uri {uri}: no MLflow server answers ({reason})") from None


@contextlib.contextmanager
def _init_lock(cfg: MlflowConfig) -> Iterator[None]:
    """Exclusive lock (flock) on `<artifact root>/.<db name>.lock` while the store is created or migrated, or a cell
    looks for its runs and starts one; a no-op for stores that are not SQLite files. Not re-entrant (flock on a
    second descriptor of the same process would wait for ever): never call setup() while holding it."""
    root = artifact_root(cfg)
    if root is None:
        yield
        return
    db = sqlite_path(cfg.tracking_uri)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{db.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise EqsegError(f"mlflow.tracking_uri {cfg.tracking_uri}: cannot create {root} ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _file_uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _relocate(db: Path, old_root: str, new_root: str) -> int:
    """Rewrite every stored URI under `old_root/` to lie under `new_root/` (experiments, runs, logged models,
    traces...: any text column). Returns the number of values changed."""
    con = sqlite3.connect(str(db), timeout=60)
    changed = 0
    try:
        with con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")') if "CHAR" in r[2].upper() or "TEXT" in r[2].upper()]
                for col in cols:
                    cur = con.execute(
                        f'UPDATE "{table}" SET "{col}" = ? || substr("{col}", ?) WHERE substr("{col}", 1, ?) = ?',
                        (new_root + "/", len(old_root) + 2, len(old_root) + 1, old_root + "/"),
                    )
                    changed += cur.rowcount
    finally:
        con.close()
    return changed


def _follow_move(cfg: MlflowConfig, client, experiment) -> Any:
    """A store moved or copied with its `mlartifacts/`: point every stored location at the artifacts beside it.

    Acts only on our layout (`.../mlartifacts/<experiment>` as a local path) and only when the artifacts are not
    still where the store says while none are beside it (a store made by an older eqseg from another folder)."""
    root = artifact_root(cfg)
    current = (experiment.artifact_location or "").rstrip("/")
    path = _file_uri_path(current)
    if root is None or current == (root / experiment.name).as_uri() or path is None or path.parent.name != ARTIFACTS_DIR:
        return experiment  # our layout already, or a location the user chose (another scheme, another folder)
    old_root = current[: -len(experiment.name) - 1] if current.endswith("/" + experiment.name) else None
    if old_root is None:
        return experiment
    if path.exists() and not (root / experiment.name).exists():
        return experiment  # artifacts still at the old place and none beside the store: keep logging there
    n = _relocate(sqlite_path(cfg.tracking_uri), old_root, root.as_uri())
    log.warning("mlflow: the store %s moved; %d artifact locations now point into %s", cfg.tracking_uri, n, root)
    return client.get_experiment(experiment.experiment_id)


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store, create it (tables, experiment) if needed, return the experiment id.

    Safe when many processes start at once on a fresh SQLite store (file lock around creation). A store that
    cannot work raises one EqsegError line within seconds. Call it before any other function here (they do)."""
    _quiet()
    uri = cfg.tracking_uri
    db = sqlite_path(uri)  # relative paths: against the current folder, as MLflow does
    key = (str(db.resolve()) if db is not None else uri, cfg.experiment, os.getpid())  # forks start afresh
    import mlflow
    from mlflow.tracking import MlflowClient

    if key in _READY:
        mlflow.set_tracking_uri(uri)
        return _READY[key]
    if db is not None:
        _check_sqlite(uri, db)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = _experiment_dir_name(cfg.experiment)
    what = f"mlflow.tracking_uri {uri}"

    def create() -> str:
        client = MlflowClient(uri)
        with warnings.catch_warnings():  # alembic's batch migrations warn about unnamed constraints
            warnings.simplefilter("ignore")
            client.search_experiments(max_results=1)  # the first call creates/migrates all tables (registry too)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            root = artifact_root(cfg)
            location = (root / name).as_uri() if root is not None else None
            exp_id = client.create_experiment(name, artifact_location=location)
            exp = client.get_experiment(exp_id)
        elif db is not None:
            exp = _follow_move(cfg, client, exp)
        if exp.lifecycle_stage != "active":
            raise EqsegError(f"mlflow.experiment {name!r} is deleted in {uri}; restore it (`mlflow experiments restore"
                             f" --experiment-id {exp.experiment_id}`) or choose another name")
        return exp.experiment_id

    if db is not None:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  seconds of imports: not while holding the lock
    with _init_lock(cfg):
        exp_id = retry(create, what=what)
    _READY[key] = exp_id
    return exp_id
