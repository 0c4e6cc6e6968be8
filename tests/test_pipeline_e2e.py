"""End to end: the real Snakemake, DVC and MLflow on the smoke configuration, in throw-away copies of the repo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, run

pytestmark = pytest.mark.e2e
SMOKE = "tests/smoke/params.yaml"
CELLS = [(d, m, "full", 0) for d in ("cpm15_slides", "spacenet_atlanta") for m in ("unet", "p4m_unet")]


def outputs(repo: Path) -> set[str]:
    """Every file the pipeline produced, minus orchestrator bookkeeping."""
    skip = {".snakemake_timestamp", ".gitignore"}
    return {
        str(p.relative_to(repo))
        for sub in ("tiles", "weak", "models", "eval", "predict", "digits", "report")
        for p in (repo / "results" / sub).rglob("*")
        if p.is_file() and p.name not in skip
    }


def set_epochs(params: Path, epochs: int) -> None:
    p = yaml.safe_load(params.read_text())
    p["train"]["epochs"] = epochs
    params.write_text(yaml.safe_dump(p, sort_keys=False))


def job_counts(log: str) -> dict[str, int]:
    table = log.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def snake_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("snake"))
    run(["snakemake", "--cores", "2", "--configfile", SMOKE], cwd=repo, timeout=600)
    return repo


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("dvc"))
    (repo / "params.yaml").write_text((repo / SMOKE).read_text())
    run(["git", "init", "-q"], cwd=repo)
    run(["dvc", "init", "-q"], cwd=repo)
    run(["dvc", "repro"], cwd=repo, timeout=600)
    return repo


def test_snakemake_runs_the_chain(snake_repo):
    for d, m, s, seed in CELLS:
        metrics = json.loads((snake_repo / f"results/eval/{d}/{m}/{s}/seed{seed}/metrics.json").read_text())
        assert {"miou_macro", "iou_micro", "pixel_accuracy", "iou_background"} <= set(metrics)
        assert 0.0 < metrics["miou_macro"] <= 1.0
        # equivariance error over D4 on test tiles: rounding only for the group-conv model, large for the U-Net
        assert (metrics["equivariance_error_max"] < 1e-4) == (m == "p4m_unet"), (m, metrics["equivariance_error_max"])
        assert (snake_repo / f"results/models/{d}/{m}/{s}/seed{seed}/model.pt").is_file()
    again = run(["snakemake", "--cores", "2", "--configfile", SMOKE, "-n"], cwd=snake_repo)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dvc_runs_the_chain_and_declares_metrics_and_plots(dvc_repo):
    shown = run(["dvc", "metrics", "show", "--json"], cwd=dvc_repo).stdout
    assert "miou_macro" in shown
    status = run(["dvc", "status"], cwd=dvc_repo).stdout
    assert "up to date" in status
    plots = run(["dvc", "plots", "show", "--json"], cwd=dvc_repo).stdout
    assert "confusion.png" in plots and "predictions.png" in plots


def test_snakemake_and_dvc_produce_the_same_outputs(snake_repo, dvc_repo):
    a, b = outputs(snake_repo), outputs(dvc_repo)
    assert a == b and len(a) > 10


def test_dvc_reruns_training_not_tiling_after_a_train_param_change(dvc_repo):
    tiles = dvc_repo / "results/tiles/cpm15_slides/images.npy"
    before = tiles.stat().st_mtime_ns
    set_epochs(dvc_repo / "params.yaml", 1)
    log = run(["dvc", "repro"], cwd=dvc_repo, timeout=600).stdout
    assert "Running stage 'train@cpm15_slides-unet-full-0'" in log and "Running stage 'evaluate@cpm15_slides-p4m_unet-full-0'" in log
    assert "Running stage 'tile@" not in log and "Running stage 'weak@" not in log
    assert tiles.stat().st_mtime_ns == before


def test_snakemake_reruns_training_not_tiling_after_a_train_param_change(snake_repo):
    tiles = snake_repo / "results/tiles/cpm15_slides/images.npy"
    before = tiles.stat().st_mtime_ns
    set_epochs(snake_repo / SMOKE, 1)
    proc = run(["snakemake", "--cores", "2", "--configfile", SMOKE], cwd=snake_repo, timeout=600)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts.get("train") == len(CELLS) and counts.get("evaluate") == len(CELLS)
    assert "tile" not in counts and "weak" not in counts
    assert tiles.stat().st_mtime_ns == before


def test_mlflow_holds_every_run_with_params_metrics_and_artifacts(snake_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{snake_repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("eqseg-smoke")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= len(CELLS)
    for d, m, s, seed in CELLS:
        run_id = json.loads((snake_repo / f"results/models/{d}/{m}/{s}/seed{seed}/run.json").read_text())["run_id"]
        r = client.get_run(run_id)
        assert r.info.status == "FINISHED"
        assert r.data.tags["dataset"] == d and r.data.tags["model"] == m and r.data.tags["git_commit"]
        epochs = int(r.data.params["train.epochs"])
        assert r.data.params["model"] == m and "n_params" in r.data.params
        assert len(client.get_metric_history(run_id, "val_miou")) == epochs
        assert len(client.get_metric_history(run_id, "train_loss")) == epochs
        assert 0.0 < r.data.metrics["test_miou_macro"] <= 1.0
        names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "eval")}
        assert {"model.pt", "curves.png", "eval/metrics.json", "eval/confusion.png"} <= names
