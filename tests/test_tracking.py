"""MLflow as users meet it: many writers on a fresh store, unusable stores, killed runs, models and datasets in
the run, a moved store, and the real `mlflow server` (REST API, and the UI in headless Chromium if installed).

Every test keeps its store in tmp_path and runs with the current folder in tmp_path (nothing lands in the repo).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from eqseg import tracking
from eqseg.config import MlflowConfig
from eqseg.errors import EqsegError

PY = sys.executable


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Current folder: an empty tmp/cwd (stray files would show up there). Yields tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield tmp_path
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    assert sorted(p.name for p in cwd.iterdir()) == [], "MLflow wrote into the current folder"


def cfg_for(folder: Path, experiment: str = "t") -> MlflowConfig:
    return MlflowConfig(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment=experiment)


def client_for(cfg: MlflowConfig):
    from mlflow.tracking import MlflowClient

    return MlflowClient(cfg.tracking_uri)


def runs_of(cfg: MlflowConfig) -> list:
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


# ------------------------------------------------------------------------------------- 8 writers on a fresh store


def _writer(i: int, cfg: MlflowConfig, barrier, results) -> None:
    barrier.wait()  # all eight reach the fresh store at the same moment
    try:
        tracking.start_cell_run(cfg, dict(stage="train", dataset="d", model="m", supervision="full", seed=i), "h0")
        tracking.log_params({"train": {"lr": 0.01}, "seed": i})
        tracking.log_metrics({"val_miou": i / 10}, step=1)
        tracking.end_run()
        results.put((i, "ok"))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        results.put((i, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))


def test_eight_processes_on_a_fresh_store_make_eight_runs(in_tmp):
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  imported once here, inherited by the forks

    cfg = cfg_for(in_tmp / "store")
    assert not (in_tmp / "store").exists()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(i, cfg, barrier, results)) for i in range(8)]
    for p in procs:
        p.start()
    try:
        outcome = dict(results.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert outcome == {i: "ok" for i in range(8)}, outcome
    runs = runs_of(cfg)
    assert len(runs) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["cell"] for r in runs) == [f"train/d/m/full/seed{i}" for i in range(8)]
    assert sorted(r.data.metrics["val_miou"] for r in runs) == pytest.approx([i / 10 for i in range(8)])
    exp = client_for(cfg).get_experiment_by_name("t")
    assert exp.artifact_location == (in_tmp / "store" / "mlartifacts" / "t").as_uri()


# ------------------------------------------------------------------------------------- unusable stores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_stores(tmp: Path) -> dict[str, tuple[str, str]]:
    (tmp / "plain.txt").write_text("x")
    (tmp / "notdb.db").write_text("this is not an SQLite file\n" * 10)
    (tmp / "folder.db").mkdir()
    return {
        "proc": ("sqlite:////proc/eqseg-test/x.db", "/proc/eqseg-test"),
        "under_a_file": (f"sqlite:///{tmp / 'plain.txt' / 'x.db'}", "plain.txt"),
        "not_a_database": (f"sqlite:///{tmp / 'notdb.db'}", "notdb.db"),
        "a_folder": (f"sqlite:///{tmp / 'folder.db'}", "folder.db"),
        "no_server": (f"http://127.0.0.1:{_free_port()}", "no MLflow server answers"),
    }


@pytest.mark.parametrize("case", ["proc", "under_a_file", "not_a_database", "a_folder", "no_server"])
def test_unusable_store_is_one_line_at_once(in_tmp, case):
    uri, needle = _bad_stores(in_tmp)[case]
    cfg = MlflowConfig(tracking_uri=uri, experiment="t")
    t0 = time.perf_counter()
    with pytest.raises(EqsegError) as err:
        tracking.setup(cfg)
    assert time.perf_counter() - t0 < 15
    msg = str(err.value)
    assert "\n" not in msg and uri in msg and needle in msg, msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(in_tmp):
    ro = in_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(EqsegError, match="not writable"):
            tracking.setup(cfg_for(ro))
    finally:
        ro.chmod(0o755)


def test_cli_prints_one_line_for_an_impossible_store(eqseg_cli, in_tmp, root):
    import yaml

    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    p["mlflow"]["tracking_uri"] = "sqlite:////proc/eqseg-test/x.db"
    (in_tmp / "p.yaml").write_text(yaml.safe_dump(p))
    t0 = time.perf_counter()
    proc = eqseg_cli(["tracking-init", "--params", str(in_tmp / "p.yaml")], cwd=in_tmp / "cwd", timeout=120)
    took = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("eqseg tracking-init: error: mlflow.tracking_uri"), proc.stderr
    assert "/proc/eqseg-test" in lines[0]
    assert took < 60, took  # MLflow alone retried for 107 s


# ------------------------------------------------------------------------------------- killed runs


HOLDER = """
import sys, time
from eqseg import tracking
from eqseg.config import MlflowConfig
cfg = MlflowConfig(tracking_uri=sys.argv[1], experiment="t")
run = tracking.start_cell_run(cfg, dict(stage="train", dataset="d", model="m", supervision="full", seed=int(sys.argv[2])), "h0")
tracking.log_metrics({"val_miou": 0.5}, step=1)
print(run.info.run_id, flush=True)
time.sleep(600)
"""


def _holders(cfg: MlflowConfig, seeds: list[int]) -> tuple[list[subprocess.Popen], list[str]]:
    """Processes that each start the run of one cell and then hang (as a training before its first checkpoint)."""
    procs = [subprocess.Popen([PY, "-c", HOLDER, cfg.tracking_uri, str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for s in seeds]
    ids = []
    for p in procs:
        line = p.stdout.readline().strip()
        assert line, p.stderr.read() if p.poll() is not None else "no run id"
        ids.append(line)
    return procs, ids


def test_killed_run_is_closed_or_continued_never_duplicated(in_tmp):
    cfg = cfg_for(in_tmp / "store")
    tracking.setup(cfg)
    cell = lambda seed: dict(stage="train", dataset="d", model="m", supervision="full", seed=seed)  # noqa: E731
    procs, (run_a, run_b) = _holders(cfg, [1, 2])
    try:
        # the cell's process is alive: starting it again is refused, nothing changes
        with pytest.raises(EqsegError, match=f"run {run_a} is being written by process {procs[0].pid}"):
            tracking.start_cell_run(cfg, cell(1), "h0")
        with pytest.raises(EqsegError, match=f"run {run_b} is being written"):  # nor continued from a checkpoint
            tracking.start_cell_run(cfg, cell(2), "h0", run_id=run_b)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            p.stdout.close()
            p.stderr.close()
    client = client_for(cfg)
    assert client.get_run(run_a).info.status == "RUNNING"  # what a kill -9 leaves behind

    # a retry without a checkpoint: the dead run is KILLED, one new run is live
    new = tracking.start_cell_run(cfg, cell(1), "h0").info.run_id
    tracking.end_run()
    assert new != run_a
    assert client.get_run(run_a).info.status == "KILLED"
    assert client.get_run(run_a).info.end_time is not None
    assert sorted((r.info.run_id, r.info.status) for r in runs_of(cfg) if r.data.tags["seed"] == "1") == sorted(
        [(run_a, "KILLED"), (new, "FINISHED")])

    # a retry from a checkpoint that recorded run_b: the same run continues, no new one
    again = tracking.start_cell_run(cfg, cell(2), "h0", run_id=run_b).info.run_id
    assert again == run_b and client.get_run(run_b).info.status == "RUNNING"
    tracking.log_metrics({"val_miou": 0.6}, step=2)
    tracking.end_run()
    runs2 = [r for r in runs_of(cfg) if r.data.tags["seed"] == "2"]
    assert [(r.info.run_id, r.info.status) for r in runs2] == [(run_b, "FINISHED")]
    history = client.get_metric_history(run_b, "val_miou")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.6)]

    # a checkpoint naming a run of another cell (or a deleted store's run) does not hijack it
    other = tracking.start_cell_run(cfg, cell(3), "h0", run_id=run_b).info.run_id
    tracking.end_run()
    assert other != run_b and client.get_run(other).data.tags["cell"] == "train/d/m/full/seed3"


def test_log_to_run_adds_to_a_finished_run_without_reopening_it(in_tmp):
    cfg = cfg_for(in_tmp / "store")
    run_id = tracking.start_cell_run(cfg, dict(stage="train", dataset="d", seed=0), "h").info.run_id
    tracking.end_run()
    finished = client_for(cfg).get_run(run_id).info
    (in_tmp / "metrics.json").write_text('{"miou_macro": 0.7}')
    assert tracking.log_to_run(cfg, run_id, {"test_miou_macro": 0.7, "skip": float("nan"), "name": "x"},
                               [in_tmp / "metrics.json"], subdir="eval", tags={"evaluated": "yes"})
    run = client_for(cfg).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == finished.end_time
    assert run.data.metrics == {"test_miou_macro": 0.7}
    assert run.data.tags["evaluated"] == "yes"
    assert [a.path for a in client_for(cfg).list_artifacts(run_id, "eval")] == ["eval/metrics.json"]
    assert tracking.log_to_run(cfg, "0" * 32, {"x": 1.0}) is False


# ------------------------------------------------------------------------------------- git


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@x")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_unknown_only_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))  # no user-wide safe.directory = *
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    outside = tmp_path / "plain"
    outside.mkdir()
    assert tracking.git_commit(outside) == "unknown" and tracking.git_dirty(outside) == "unknown"
    assert "mlflow.source.git.commit" not in tracking.git_tags(outside)

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    _git(repo, "init", "-q")
    assert tracking.git_commit(repo) == "none"
    (repo / "src" / "a.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert len(sha) == 40
    assert tracking.git_commit(repo) == sha and tracking.git_commit(repo / "src") == sha
    assert tracking.git_dirty(repo) == "false"
    assert tracking.git_tags(repo) == {"git_commit": sha, "git_code_diff": "none", "git_dirty": "false",
                                       "mlflow.source.git.commit": sha}
    (repo / "src" / "a.py").write_text("x = 2\n")
    assert tracking.git_dirty(repo) == "true"
    if os.geteuid() == 0:  # a repository git refuses to read is an error, not a silent "unknown"
        shutil.chown(repo, user=12345)
        for p in repo.rglob("*"):
            os.lchown(p, 12345, -1)
        with pytest.raises(EqsegError, match="dubious ownership"):
            tracking.git_commit(repo)


def test_git_tags_tell_a_code_change_from_dvcs_params_rewrite(tmp_path, monkeypatch):
    """DVC rewrites params.yaml (`exp run -S`) and writes dvc.lock, data and results before the user commits:
    git_dirty is then always true, but git_code_diff stays "none" until the code itself changes, and names
    the change by a hash (the same edit, the same hash), in the tags of the cell's MLflow run."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = tmp_path / "repo"
    (repo / "src" / "data").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / "src" / "data" / "b.py").write_text("y = 1\n")
    (repo / "params.yaml").write_text("train: {lr: 0.003}\n")
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    # what DVC and the pipeline do: params rewritten, a lock file, data and results written
    (repo / "params.yaml").write_text("train: {lr: 0.001}\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "results").mkdir()
    (repo / "results" / "m.json").write_text("{}")
    (repo / "data").mkdir()
    (repo / "data" / "x.csv").write_text("1\n")
    tags = tracking.git_tags(repo / "src")
    assert tags["git_dirty"] == "true" and tags["git_code_diff"] == "none"

    (repo / "src" / "a.py").write_text("x = 2\n")  # a code change
    first = tracking.git_code_diff(repo)
    assert len(first) == 16 and first != "none" and tracking.git_code_diff(repo / "src") == first
    (repo / "src" / "data" / "b.py").write_text("y = 2\n")  # src/eqseg/data is code, only the top data/ is not
    second = tracking.git_code_diff(repo)
    assert second not in ("none", first)
    (repo / "src" / "new.py").write_text("z = 1\n")  # a new file that git does not ignore is code too
    assert tracking.git_code_diff(repo) not in ("none", first, second)
    (repo / "src" / "new.py").unlink()
    assert tracking.git_code_diff(repo) == second  # the same edit, the same hash

    monkeypatch.chdir(repo)  # the tags of a cell's run, as training writes them
    cfg = cfg_for(tmp_path / "store")
    run = tracking.start_cell_run(cfg, dict(stage="train", dataset="d", model="m", supervision="full", seed=0), "h")
    tracking.end_run()
    got = client_for(cfg).get_run(run.info.run_id).data.tags
    assert got["git_code_diff"] == second and got["git_dirty"] == "true"
    assert got["git_commit"] == _git(repo, "rev-parse", "HEAD")
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / "src" / "data" / "b.py").write_text("y = 1\n")
    assert tracking.git_code_diff(repo) == "none"


# ------------------------------------------------------------------------------------- model, dataset, moved store


def _tile_store(folder: Path, n: int = 6) -> Path:
    import geopandas as gpd
    import numpy as np
    from shapely.geometry import box

    folder.mkdir(parents=True)
    gdf = gpd.GeoDataFrame(dict(tile_id=np.arange(n), source=["s0"] * n, level=0, row=np.arange(n) * 64, col=0, size=64,
                                split=["train", "train", "train", "train", "val", "test"][:n], valid_fraction=1.0,
                                px_background=4000, px_nucleus=96, px_unlabelled=0, crs=""),
                           geometry=[box(0, i * 64, 64, i * 64 + 64) for i in range(n)])
    gdf.to_parquet(folder / "index.parquet")
    (folder / "meta.json").write_text(json.dumps({"classes": ["background", "nucleus"], "bands": 3, "tile_size": 64}))
    return folder


def test_model_dataset_and_a_moved_store(in_tmp, one_torch_thread):
    import mlflow.pytorch
    import torch

    from eqseg.models import build

    cfg = cfg_for(in_tmp / "a")
    tiles = _tile_store(in_tmp / "tiles")
    run_id = tracking.start_cell_run(cfg, dict(stage="train", dataset="d", model="p4_unet", seed=0), "h").info.run_id
    digest = tracking.log_dataset(tiles, "d")
    torch.manual_seed(0)
    net = build("p4_unet", 3, 2)
    t0 = time.perf_counter()
    uri = tracking.log_model(net, {"in_channels": 3, "num_classes": 2, "classes": ["background", "nucleus"],
                                   "band_mean": [0.5, 0.5, 0.5], "path": in_tmp})
    took = time.perf_counter() - t0
    (in_tmp / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    tracking.log_artifacts([in_tmp / "history.csv"])
    tracking.end_run()
    print(f"log_model took {took:.2f} s")
    assert net.training  # log_model leaves the module as it was

    # the dataset input: name, digest of the index, source, schema
    run = client_for(cfg).get_run(run_id)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("d", digest)
    assert json.loads(inp.dataset.source)["uri"] == str(tiles / "index.parquet")
    assert "geometry" in inp.dataset.schema and json.loads(inp.dataset.profile)["num_rows"] == 6
    assert tracking.dataset_digest(tiles) == digest
    _tile_store(in_tmp / "tiles2", n=5)
    assert tracking.dataset_digest(in_tmp / "tiles2") != digest

    # the model: a logged model of the run, loadable by run id, with its metadata and signature
    models = client_for(cfg).search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", run_id)]
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        expected = net(x)

    def check_loads() -> None:
        loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        with torch.no_grad():
            assert torch.allclose(loaded.eval()(x), expected, atol=1e-5)
        meta = mlflow.models.get_model_info(uri)
        assert meta.metadata["classes"] == ["background", "nucleus"]
        assert list(meta.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]

    check_loads()

    # move the whole project folder: the store follows its artifacts
    shutil.move(in_tmp / "a", in_tmp / "b")
    tracking.store._READY.clear()  # as a new process would start
    moved = cfg_for(in_tmp / "b")
    tracking.setup(moved)
    exp = client_for(moved).get_experiment_by_name("t")
    assert exp.artifact_location == (in_tmp / "b" / "mlartifacts" / "t").as_uri()
    with sqlite3.connect(in_tmp / "b" / "mlflow.db") as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        stale = []
        for t in tables:
            for col in [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]:
                stale += con.execute(f'SELECT "{col}" FROM "{t}" WHERE CAST("{col}" AS TEXT) LIKE ?',
                                     (f"%{in_tmp / 'a'}/%",)).fetchall()
    assert stale == []
    client = client_for(moved)
    assert "history.csv" in [a.path for a in client.list_artifacts(run_id)]
    got = client.download_artifacts(run_id, "history.csv", str(in_tmp / "dl"))
    assert Path(got).read_text().startswith("epoch,train_loss")
    check_loads()


def test_a_store_whose_artifacts_are_still_elsewhere_keeps_them(in_tmp):
    """A store made by an older eqseg run from another folder: its artifacts stay where they are."""
    cfg = cfg_for(in_tmp / "store")
    tracking.setup(MlflowConfig(tracking_uri=cfg.tracking_uri, experiment="other"))  # creates the tables
    client = client_for(cfg)
    legacy = (in_tmp / "elsewhere" / "mlartifacts" / "t").as_uri()
    exp_id = client.create_experiment("t", artifact_location=legacy)
    run = client.create_run(exp_id)
    (in_tmp / "f.txt").write_text("x")
    client.log_artifact(run.info.run_id, str(in_tmp / "f.txt"))
    tracking.store._READY.clear()
    assert tracking.setup(cfg) == exp_id
    assert client.get_experiment(exp_id).artifact_location == legacy
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["f.txt"]


# ------------------------------------------------------------------------------------- the real server and UI


def _get(url: str, data: dict | None = None, timeout: float = 10) -> dict:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_up(url: str, proc: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server not up after {limit} s")


@contextlib.contextmanager
def mlflow_server(cfg: MlflowConfig, cwd: Path):
    """The real `mlflow server` on 127.0.0.1 and a free port, stopped (with its workers) on the way out."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(tracking.server_command(cfg, port=port), cwd=cwd, env=tracking.server_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_up(url, proc, limit=120)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        proc.stdout.close()
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "mlflow server workers still running"


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _fill_grid(cfg: MlflowConfig, tmp: Path) -> dict[str, tuple[str, float]]:
    """Three trained cells, each with a validation curve, then test metrics and a file added by `evaluate`."""
    expected = {}
    for k, (model, seed) in enumerate([("unet", 0), ("unet", 1), ("p4_unet", 0)]):
        name = f"cpm15/{model}/full/seed{seed}"
        run = tracking.start_cell_run(cfg, dict(stage="train", dataset="cpm15", model=model, supervision="full", seed=seed),
                                      "h", run_name=name)
        tracking.log_metrics({"val_miou": 0.5 + k / 100}, step=1)
        tracking.end_run()
        (tmp / "metrics.json").write_text("{}")
        tracking.log_to_run(cfg, run.info.run_id, {"test_miou_macro": 0.6 + k / 100}, [tmp / "metrics.json"], subdir="eval")
        expected[name] = (run.info.run_id, 0.6 + k / 100)
    return expected


def test_mlflow_server_shows_every_cell_with_its_test_metrics(in_tmp):
    cfg = cfg_for(in_tmp / "store", experiment="grid")
    expected = _fill_grid(cfg, in_tmp)
    exp_id = tracking.setup(cfg)
    with mlflow_server(cfg, in_tmp / "cwd") as url:
        found = _get(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        got = {r["info"]["run_name"]: (r["info"]["run_id"], {m["key"]: m["value"] for m in r["data"]["metrics"]}) for r in found}
        assert set(got) == set(expected)
        for name, (run_id, miou) in expected.items():
            assert got[name][0] == run_id and got[name][1]["test_miou_macro"] == pytest.approx(miou)
            files = _get(f"{url}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=eval").get("files", [])
            assert [f["path"] for f in files] == ["eval/metrics.json"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_mlflow_ui_in_headless_chromium_lists_the_runs(in_tmp):
    cfg = cfg_for(in_tmp / "store", experiment="grid")
    _fill_grid(cfg, in_tmp)
    exp_id = tracking.setup(cfg)
    with mlflow_server(cfg, in_tmp / "cwd") as url:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                              f"--user-data-dir={in_tmp / 'chromium'}", "--dump-dom", f"{url}/#/experiments/{exp_id}"],
                             capture_output=True, text=True, timeout=90).stdout
    assert "cpm15/p4_unet/full/seed0" in dom, dom[-2000:]


# ------------------------------------------------------------------------------------- run durations


@pytest.mark.parametrize("model", ["unet", "kmeans"])
def test_a_cells_run_lasts_at_least_its_training(small_setup, tmp_path, model):
    """The MLflow UI shows end - start as the run's duration: it must span the work that history.csv times (a
    classical fit's run used to start after the fit, so a minutes-long fit showed as a few seconds)."""
    import csv

    import yaml

    from conftest import train_cmd

    p = yaml.safe_load((small_setup / "params.yaml").read_text())
    p["models"]["kmeans"] = {}
    p["train"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    cmd = train_cmd(small_setup, tmp_path / "m")
    cmd[cmd.index("--model") + 1] = model
    cmd[cmd.index("--params") + 1] = str(tmp_path / "params.yaml")
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    run_id = json.loads((tmp_path / "m" / "run.json").read_text())["run_id"]
    info = client_for(cfg_for(small_setup)).get_run(run_id).info
    with open(tmp_path / "m" / "history.csv") as f:
        trained = sum(float(r["seconds"]) for r in csv.DictReader(f))
    assert info.status == "FINISHED" and trained > 0
    assert (info.end_time - info.start_time) / 1000 >= trained, (info.start_time, info.end_time, trained)
