"""Classical baselines as grid models: `eqseg train` fits them (no epochs), evaluate and predict read them like
networks, on real CPM-15 tiles."""

from __future__ import annotations

import json

import numpy as np
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
