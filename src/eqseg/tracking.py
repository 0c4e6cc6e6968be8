"""MLflow bookkeeping: one store set explicitly (a SQLite file by default), one run per grid cell.

- Store creation is safe from any command: with a SQLite store, `setup` holds an exclusive file lock while MLflow
  creates or migrates the tables and the experiment (MLflow's own table creation races between processes: `table
  already exists`, `duplicate column name`). Later writes are retried on lock contention ("database is locked") only.
- A store that cannot work (unwritable folder, a file that is not a database, no server answering) is one
  `EqsegError` line at once, not MLflow's minutes of connection retries.
- Artifacts of a SQLite store live beside it, in `<folder of the .db>/mlartifacts/<experiment>/`. MLflow stores
  artifact locations as absolute URIs (it resolves relative ones when an experiment is created), so `setup` notices
  a store that was moved or copied with its `mlartifacts/` folder and rewrites the stored locations to the new place.
- One live run per grid cell: `start_cell_run` continues the run named by a checkpoint, or closes (KILLED) runs of
  the same cell left RUNNING by a process that died, before it starts a new one.
- Evaluation and prediction add to a finished run with `log_to_run`, which never changes the run's status.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import unquote, urlparse

from eqseg.config import MlflowConfig
from eqseg.errors import EqsegError
from eqseg.utils.process import pid_alive

log = logging.getLogger(__name__)
T = TypeVar("T")

ARTIFACTS_DIR = "mlartifacts"
CELL_TAG = "cell"
CONFIG_HASH_TAG = "config_hash"
OWNER_TAG = "eqseg.owner"
_READY: dict[tuple[str, str, int], str] = {}  # (store, experiment, pid) -> experiment id, set up in this process


# ---------------------------------------------------------------------------------------------------- errors, retry


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


# ---------------------------------------------------------------------------------------------------- git


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        env = dict(os.environ, LC_ALL="C", LANGUAGE="C")  # messages we recognise ("not a git repository")
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def _in_repo(cwd: Path) -> bool:
    """Whether cwd is inside a git work tree. False outside one (or without git); any other failure of git
    (e.g. "detected dubious ownership") is an EqsegError, so provenance is never silently lost."""
    out = _git(["rev-parse", "--is-inside-work-tree"], cwd)
    if out is None:
        return False
    if out.returncode == 0:
        return out.stdout.strip() == "true"
    if "not a git repository" in out.stderr.lower():
        return False
    raise EqsegError(f"{cwd}: git cannot read the repository ({out.stderr.strip().splitlines()[0][:200] if out.stderr.strip() else out.returncode})")


def git_commit(cwd: Path | None = None) -> str:
    """The commit checked out in the git work tree holding `cwd` (default: the current folder).

    "unknown" only outside a git work tree (or without a `git` program); "none" in a repository without commits.
    Any other failure of git inside a work tree is an EqsegError, never a silent "unknown"."""
    cwd = Path(cwd or Path.cwd())
    if not _in_repo(cwd):
        return "unknown"
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd)
    if head is not None and head.returncode == 0 and head.stdout.strip():
        return head.stdout.strip()
    if head is not None and head.returncode == 1 and not head.stdout.strip():
        return "none"  # `git init` without a commit
    raise EqsegError(f"{cwd}: git cannot read HEAD ({(head.stderr if head else '').strip()[:200]})")


def git_dirty(cwd: Path | None = None) -> str:
    """"true" when the work tree holding `cwd` differs from its commit (modified, staged or untracked files that
    .gitignore does not hide), "false" when clean, "unknown" outside a git work tree."""
    cwd = Path(cwd or Path.cwd())
    if not _in_repo(cwd):
        return "unknown"
    out = _git(["status", "--porcelain"], cwd)
    if out is None or out.returncode != 0:
        raise EqsegError(f"{cwd}: `git status` failed ({(out.stderr if out else '').strip()[:200]})")
    return "true" if out.stdout.strip() else "false"


# What is not code, at the top of the repository: DVC rewrites params.yaml (`exp run -S`) and dvc.lock, and
# writes data and results; MLflow records the params itself. A change to any of these says nothing about the code a run used.
NOT_CODE = ("params.yaml", "dvc.lock", "data/**", "results/**", "mlflow.db", "mlartifacts/**")


def _code_pathspec() -> list[str]:
    """The whole work tree but NOT_CODE (paths from the repository's top: src/eqseg/data is code)."""
    return ["--", ":(top)", *(f":(top,exclude,glob){p}" for p in NOT_CODE)]


def git_code_diff(cwd: Path | None = None) -> str:
    """A 16-hex hash of the uncommitted code: the diff against HEAD and the untracked files .gitignore does not
    hide, without NOT_CODE. "none" when the code is as committed; "unknown" outside a repository or before the
    first commit. The same local edit gives the same hash, so runs show which code change they share."""
    cwd = Path(cwd or Path.cwd())
    if git_commit(cwd) in ("unknown", "none"):
        return "unknown"
    diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", *_code_pathspec()], cwd)
    new = _git(["ls-files", "--others", "--exclude-standard", "--full-name", "-z", *_code_pathspec()], cwd)
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if any(out is None or out.returncode != 0 for out in (diff, new, top)):
        raise EqsegError(f"{cwd}: git cannot diff the work tree ({next((o.stderr for o in (diff, new, top) if o), '').strip()[:200]})")
    untracked = sorted(n for n in new.stdout.split("\0") if n)
    if not diff.stdout and not untracked:
        return "none"
    h = hashlib.sha256(diff.stdout.encode())
    for name in untracked:
        h.update(b"\0" + name.encode() + b"\0")
        with contextlib.suppress(OSError):  # a file removed meanwhile: its name alone
            h.update((Path(top.stdout.strip()) / name).read_bytes())
    return h.hexdigest()[:16]


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """Run tags for the code version: git_commit; git_code_diff, the hash of the uncommitted code (git_code_diff:
    "none" when the code is the commit's, whatever DVC did to params.yaml); git_dirty (any change at all, params
    and data included); and MLflow's own `mlflow.source.git.commit` (the UI's source version) when there is a
    commit."""
    commit = git_commit(cwd)
    tags = {"git_commit": commit, "git_code_diff": git_code_diff(cwd), "git_dirty": git_dirty(cwd)}
    if commit not in ("unknown", "none"):
        tags["mlflow.source.git.commit"] = commit
    return tags


# ---------------------------------------------------------------------------------------------------- the store


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


def serve(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run `mlflow server` on this store until interrupted (for an `eqseg ui` command); returns its exit status.
    Sets the store up first, so a moved project shows its artifacts."""
    setup(cfg)
    proc = subprocess.Popen(server_command(cfg, host, port), env=server_env())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


# ---------------------------------------------------------------------------------------------------- runs


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


# ---------------------------------------------------------------------------------------------------- model, data


def log_model(net, info: dict[str, Any] | None = None, name: str = "model") -> str:
    """Log the trained network to the active run with mlflow.pytorch (a LoggedModel: the UI lists it under Models,
    and `mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")` loads it back as the same torch module).

    Pickle serialisation (loading needs eqseg importable, as for any pickled module); MLflow's default "pt2"
    traces the graph for one fixed input shape and costs seconds. `info` (classes, band statistics, tile size,
    normalisation...) is stored as the model's metadata, so a user can prepare inputs the way training did.
    The signature is (batch, bands, H, W) float32 -> (batch, classes, H, W) logits. Returns the model URI."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    info = dict(info or {})
    bands, classes = info.get("in_channels"), info.get("num_classes")
    signature = None
    if isinstance(bands, int) and isinstance(classes, int):
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, bands, -1, -1), "image")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes, -1, -1), "logits")]))
    metadata = json.loads(json.dumps(info, default=str))  # plain JSON types in the MLmodel file
    was_training = net.training
    net.eval()
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)  # the warning about pickle is the choice documented above
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_info = retry(lambda: mlflow.pytorch.log_model(
                net, name=name, serialization_format="pickle", signature=signature, metadata=metadata,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            ))
    finally:
        flavour_log.setLevel(level)
        net.train(was_training)
    return model_info.model_uri


def _index_frame(tiles: Path):
    import pandas as pd

    df = pd.read_parquet(tiles / "index.parquet")  # plain pandas: the footprint stays WKB bytes
    return df


def dataset_digest(tiles: Path) -> str:
    """Content digest of a tile store's index (every row and column) and meta record: 16 hex digits."""
    import pandas as pd

    tiles = Path(tiles)
    df = _index_frame(tiles)
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    h.update((tiles / "meta.json").read_bytes())
    return h.hexdigest()[:16]


def log_dataset(tiles: Path, name: str, context: str = "training", tags: dict[str, str] | None = None) -> str:
    """Log a tile store as the active run's dataset input (the UI's "Datasets used"): its index as a pandas
    dataset named `name`, source `<tiles>/index.parquet`, a content digest of index and meta (dataset_digest),
    schema and row count. Returns the digest."""
    import mlflow
    import mlflow.data

    tiles = Path(tiles)
    if not (tiles / "index.parquet").is_file() or not (tiles / "meta.json").is_file():
        raise EqsegError(f"{tiles}: not a tile store (missing index.parquet or meta.json)")
    df = _index_frame(tiles)
    digest = dataset_digest(tiles)
    with warnings.catch_warnings():  # source resolution and integer-column schema hints
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(df, source=str(tiles / "index.parquet"), name=name, digest=digest)
        retry(lambda: mlflow.log_input(ds, context=context, tags=tags))
    return digest
