"""Classical baselines as grid models: `eqseg train` fits them (no epochs), evaluate and predict read them like
networks, on real CPM-15 tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import BIN, run


def test_fit_evaluate_predict_a_classical_model(small_setup, tmp_path):
    tmp = small_setup
    p = yaml.safe_load((tmp / "params.yaml").read_text())
    p["models"]["kmeans"] = {"k": 6, "max_fit_tiles": 24}
    p["mlflow"]["experiment"] = "classical"
    (tmp / "classical.yaml").write_text(yaml.safe_dump(p))
    common = ["--params", str(tmp / "classical.yaml")]
    out = tmp_path / "model"
    run([str(BIN / "eqseg"), "train", *common, "--dataset", "cpm15", "--model", "kmeans", "--tiles", str(tmp / "tiles"),
         "--labels", str(tmp / "labels"), "--out", str(out)], cwd=tmp)
    fitted = json.loads((out / "classical.json").read_text())
    assert fitted["state"]["method"] == "kmeans" and fitted["info"]["model"] == "kmeans"
    assert {p.name for p in out.iterdir()} >= {"model.pt", "config.json", "run.json", "history.csv", "curves.png"}
    config = json.loads((out / "config.json").read_text())
    assert config["summary"]["n_params"] == 0 and config["n_train_tiles"] == 24
    run([str(BIN / "eqseg"), "evaluate", *common, "--model-dir", str(out), "--tiles", str(tmp / "tiles"),
         "--out", str(tmp_path / "eval")], cwd=tmp)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    cm = np.loadtxt(tmp_path / "eval" / "confusion.csv", delimiter=",")
    assert cm[:, 1].sum() > 0 and metrics["iou_nucleus"] > 0.2, metrics  # it finds nuclei (measured 0.288 on 64-px tiles)
    # the recorded score is the one recomputed from the confusion matrix
    iou = cm[1, 1] / (cm[1].sum() + cm[:, 1].sum() - cm[1, 1])
    assert abs(iou - metrics["iou_nucleus"]) < 1e-12
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=p["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("classical").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["classical"] == "true"
    assert runs[0].data.metrics["test_miou_macro"] == metrics["miou_macro"]


@pytest.mark.parametrize("name", ["kmeans"])  # felzenszwalb, split_merge: the same path; their seeds in test_classical
def test_the_cell_seed_makes_another_fit(name, small_setup, tmp_path):
    """The seeds of a classical cell are different fits: with every train tile fitted (no seeded tile sample), the cell
    seed alone changes the fitted state; the same seed fits the identical state. (The seed used to be a model option
    that the cell seed did not reach: the fits of every seed were one.)"""
    from eqseg.config import load_params
    from eqseg.train.loop import train

    tmp = small_setup
    p = yaml.safe_load((tmp / "params.yaml").read_text())
    p["models"][name] = {"max_fit_tiles": 100_000}
    p["train"]["max_train_tiles"] = None
    p["mlflow"]["experiment"] = f"classical_seeds_{name}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    fitted = {}
    for run_id, seed in (("a", 0), ("b", 1), ("c", 0)):
        out = tmp_path / f"seed{seed}{run_id}"
        train(params, "cpm15", name, "full", seed, tmp / "tiles", tmp / "labels", out)
        fitted[run_id] = json.loads((out / "classical.json").read_text())["state"]
        assert json.loads((out / "config.json").read_text())["n_train_tiles"] == fitted_tiles(tmp)  # every train tile
    assert fitted["a"] == fitted["c"]
    assert not np.allclose(np.sort(fitted["a"]["centres"], 0), np.sort(fitted["b"]["centres"], 0))
    assert fitted["a"]["seed"] == 0 and fitted["b"]["seed"] == 1


def fitted_tiles(tmp) -> int:
    from eqseg.tiling.store import TileStore

    return len(TileStore(tmp / "tiles").ids("train"))
