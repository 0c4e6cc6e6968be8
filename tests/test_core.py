"""Small pure functions against known answers: metrics, tiling geometry, splits, .npy shrinking, config."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from eqseg.config import load_params, parse_params
from eqseg.errors import EqsegError
from eqseg.metrics import confusion, scores
from eqseg.tiling import grid, npy


def test_confusion_and_scores_known_answer():
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = scores(cm, ["a", "b", "c"])
    assert s["iou_a"] == pytest.approx(1 / 3) and s["iou_b"] == pytest.approx(2 / 3) and s["iou_c"] == 0.0
    assert s["miou_macro"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["iou_micro"] == pytest.approx(3 / (3 + 2 + 2))
    assert s["pixel_accuracy"] == pytest.approx(3 / 5) and s["pixels"] == 5


def test_class_absent_from_truth_and_prediction_is_not_averaged():
    s = scores(confusion(np.array([0, 1]), np.array([0, 1]), 3), ["a", "b", "c"])
    assert np.isnan(s["iou_c"]) and s["miou_macro"] == 1.0


@pytest.mark.parametrize("extent, size, overlap, expected", [
    (256, 128, 0, [0, 128]), (257, 128, 0, [0, 128, 256]), (100, 128, 0, [0]), (300, 128, 32, [0, 96, 192]),
])
def test_tile_origins_cover_the_extent(extent, size, overlap, expected):
    origins = grid.tile_origins(extent, size, overlap)
    assert origins == expected and origins[-1] + size >= extent


def test_split_counts_give_every_split_a_share():
    assert grid.split_counts(15, {"train": 0.6, "val": 0.2, "test": 0.2}) == {"train": 9, "val": 3, "test": 3}
    assert grid.split_counts(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 1, "val": 1, "test": 1}
    a = grid.assign_splits(10, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert a == grid.assign_splits(10, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert a != grid.assign_splits(10, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=2)
    assert sorted(a).count("train") == 6


def test_shrink_npy_in_place(tmp_path):
    path = tmp_path / "a.npy"
    a = npy.open_for_write(path, (1000, 2, 3), np.uint16)
    a[:] = np.arange(1000)[:, None, None]
    a.flush()
    del a
    npy.shrink(path, 7)
    b = np.load(path)
    assert b.shape == (7, 2, 3) and (b[:, 0, 0] == np.arange(7)).all()
    assert path.stat().st_size == 128 + 7 * 2 * 3 * 2


def test_default_and_smoke_params_are_valid(root):
    for f in ("params.yaml", "tests/smoke/params.yaml"):
        p = load_params(root / f)
        assert p.grid.datasets and p.mlflow.tracking_uri.startswith("sqlite:///")


def test_shipped_configs_are_valid_and_the_pilot_is_the_study_on_a_smaller_grid(root):
    """Every config in configs/ loads; the pilot differs from the study only in what it runs (grid, compare), so
    its numbers are the study's cells."""
    loaded = {f.name: load_params(f) for f in sorted((root / "configs").glob("*.yaml"))}
    assert {"study.yaml", "study_pilot.yaml", "selftrain.yaml", "weak_study.yaml"} <= set(loaded)
    study, pilot = loaded["study.yaml"].model_dump(), loaded["study_pilot.yaml"].model_dump()
    assert [k for k in study if study[k] != pilot[k]] == ["grid", "compare"]
    cells = {tuple(c.items()) for c in loaded["study_pilot.yaml"].cells()}
    assert len(cells) == 36 and cells <= {tuple(c.items()) for c in loaded["study.yaml"].cells()}


def test_tile_size_must_suit_model_depth(root):
    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw["tile"]["size"] = 66
    with pytest.raises(EqsegError, match=r"tile.size \(66\) must be a multiple of 4 for model .unet."):
        parse_params(raw)


def test_file_store_uri_is_refused(root):
    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = "./mlruns"
    with pytest.raises(EqsegError, match="mlflow.tracking_uri"):
        parse_params(raw)
