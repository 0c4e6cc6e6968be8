"""A cell is selected with its own labels (train.select), and trains without a validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from eqseg.config import load_params
from eqseg.labels import IGNORE
from eqseg.models.checkpoint import read_model_file
from eqseg.tiling.store import TileStore, build_tile_store
from eqseg.train.loop import Observer, train
from eqseg.train.validate import Validation, selected_epoch, validation_for
from eqseg.weak import annotate
from eqseg.weak.stage import make_weak_stage


@pytest.fixture(scope="module")
def setup(tmp_path_factory, root):
    """CPM-15 tiles (64 px); points and full labels; params for 2 short epochs; a second store without val tiles."""
    tmp = tmp_path_factory.mktemp("select")
    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    p["datasets"]["cpm15"]["images"] = str(root / "data/cpm15/images")
    p["datasets"]["cpm15"]["masks"] = str(root / "data/cpm15/masks")
    p["train"].update(epochs=2, max_train_tiles=16, num_workers=0, threads=1)
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp / "params.yaml")
    build_tile_store("cpm15", params.dataset("cpm15"), params.tile, tmp / "tiles")
    for sup in ("full", "points"):
        make_weak_stage(params, "cpm15", params.supervision(sup), tmp / "tiles", tmp / sup)
    p["datasets"]["cpm15"]["split"] = {"by": "source", "fractions": {"train": 0.8, "test": 0.2}}
    (tmp / "noval.yaml").write_text(yaml.safe_dump(p))
    noval = load_params(tmp / "noval.yaml")
    build_tile_store("cpm15", noval.dataset("cpm15"), noval.tile, tmp / "tiles-noval")
    make_weak_stage(noval, "cpm15", noval.supervision("full"), tmp / "tiles-noval", tmp / "full-noval")
    return tmp, params, noval


class Constant(torch.nn.Module):
    """Predicts class `k` everywhere."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, self.k] = 1
        return out


def test_weak_stage_writes_the_val_tiles_labels_with_the_same_generator_and_seed(setup):
    tmp, params, _ = setup
    store = TileStore(tmp / "tiles")
    val_ids = np.load(tmp / "points/val_ids.npy")
    assert np.array_equal(val_ids, store.ids("val")) and len(val_ids)
    val = np.load(tmp / "points/val_labels.npy")
    options = params.weak.options.get("points", {})
    for row, t in enumerate(val_ids[:3]):
        ref, _ = annotate(np.asarray(store.masks[t]), "points", np.random.default_rng((params.weak.seed, int(t))), **options)
        assert np.array_equal(val[row], ref)
    assert (val != IGNORE).mean() < 0.05  # points, not masks
    assert np.array_equal(np.load(tmp / "full/val_labels.npy"), np.asarray(store.masks[val_ids]))


def test_own_validation_scores_only_the_points_of_the_val_tiles(setup):
    tmp, _, _ = setup
    store = TileStore(tmp / "tiles")
    own = validation_for("own", store, tmp / "points")
    dense = validation_for("dense", store, tmp / "points")
    val = np.load(tmp / "points/val_labels.npy")
    counted = store.counted(np.load(tmp / "points/val_ids.npy"))
    points = np.where(counted, val, IGNORE)
    n1, n0 = int((points == 1).sum()), int((points == 0).sum())
    from eqseg.data.normalise import Normaliser

    norm = Normaliser("train", store.meta.band_mean, store.meta.band_std)
    s = own.score(Constant(1), store, 8, torch.device("cpu"), norm, precision="fp32")
    # all points predicted "nucleus": IoU_nucleus = n1 / (n1 + n0), IoU_background = 0 (hand-computed)
    assert s["val_score"] == pytest.approx((n1 / (n1 + n0) + 0.0) / 2)
    d = dense.score(Constant(1), store, 8, torch.device("cpu"), norm, precision="fp32")
    truth = store.scored_masks(store.ids("val"))
    m1, m0 = int((truth == 1).sum()), int((truth == 0).sum())
    assert d["val_score"] == pytest.approx(m1 / (m1 + m0) / 2) and d["val_score"] != s["val_score"]


def test_tags_validation_is_the_mean_jaccard_of_predicted_and_given_tags(setup):
    """A model predicting "nucleus" everywhere: present on every val tile, "background" on none. Hand-computed:
    Jaccard(background) = 0, Jaccard(nucleus) = tiles tagged nucleus / all val tiles."""
    from eqseg.data.normalise import Normaliser

    tmp, _, _ = setup
    store = TileStore(tmp / "tiles")
    ids = np.sort(store.ids("val"))
    tags = np.zeros((len(ids), 2), np.uint8)
    tags[:, 0] = 1
    tags[::3, 1] = 1  # every third val tile tagged nucleus
    v = Validation("own", "own", ids, tags)
    norm = Normaliser("train", store.meta.band_mean, store.meta.band_std)
    s = v.score(Constant(1), store, 8, torch.device("cpu"), norm, precision="fp32")
    assert s["val_score"] == pytest.approx((0.0 + len(ids[::3]) / len(ids)) / 2)
    assert np.isnan(s["val_miou"])


def test_selected_epoch_is_the_first_best_or_the_last_without_validation():
    history = [dict(epoch=1, val_score=0.5), dict(epoch=2, val_score=0.7), dict(epoch=3, val_score=0.7),
               dict(epoch=4, val_score=0.6)]
    assert selected_epoch(history, Validation("own", "own", np.arange(2)))["epoch"] == 2
    assert selected_epoch(history, Validation("last", "none", np.arange(2)))["epoch"] == 4
    nan = [dict(epoch=1, val_score=float("nan")), dict(epoch=2, val_score=float("nan"))]
    assert selected_epoch(nan, Validation("own", "own", np.arange(2)))["epoch"] == 2


def test_own_labels_of_an_earlier_eqseg_are_refused_in_one_line(setup, tmp_path):
    import shutil

    from eqseg.errors import EqsegError

    tmp, _, _ = setup
    old = tmp_path / "old"
    shutil.copytree(tmp / "points", old)
    (old / "val_labels.npy").unlink()
    with pytest.raises(EqsegError, match="val_labels.npy"):
        validation_for("own", TileStore(tmp / "tiles"), old)


@pytest.mark.parametrize("select", ["own", "dense", "last"])
def test_points_cell_records_its_selection(setup, tmp_path, select, one_torch_thread):
    tmp, params, _ = setup
    params = params.model_copy(update={"train": params.train.model_copy(update={"select": select})})
    out = tmp_path / "model"
    summary = train(params, "cpm15", "unet", "points", 0, tmp / "tiles", tmp / "points", out, observer=Observer())
    _, info = read_model_file(out / "model.pt")
    config = json.loads((out / "config.json").read_text())
    assert info.select == select == config["select"] == summary["select"]
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    if select == "last":
        assert summary["best_epoch"] == 2 and np.isnan(history["val_score"]).all()
        assert info.selected_by == "last epoch"
    else:
        assert np.isfinite(history["val_score"]).all()
        assert summary["best_epoch"] == 1 + int(np.argmax(history["val_score"]))
        assert ("own labels" in info.selected_by) == (select == "own")


def test_training_without_a_validation_split_keeps_the_last_epoch(setup, tmp_path, one_torch_thread):
    tmp, _, noval = setup
    assert len(TileStore(tmp / "tiles-noval").ids("val")) == 0
    out = tmp_path / "model"
    summary = train(noval, "cpm15", "unet", "full", 0, tmp / "tiles-noval", tmp / "full-noval", out, observer=Observer())
    assert summary["best_epoch"] == 2 and summary["selected_by"] == "last epoch (no validation tiles)"
    last = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v.float()).all() for v in last.values())
