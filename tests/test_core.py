"""Small pure functions against known answers: metrics, tiling geometry, splits, .npy shrinking, config."""

from __future__ import annotations

import math
import warnings

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
    assert s["fwiou"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 1 * 0) / 5)  # true pixels per class: 2, 2, 1
    assert s["pixel_accuracy"] == pytest.approx(3 / 5) and s["pixels"] == 5


@pytest.mark.parametrize("trial", range(6))
def test_fwiou_matches_sklearn_jaccard_weighted_by_support(trial):
    """fwIoU (Long et al. 2015) = sum_c n_c / N * IoU_c, recomputed from scikit-learn's per-class Jaccard on the same
    pixels; one class never true (weighs 0, in the prediction in odd trials), some pixels unlabelled (255)."""
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(trial)
    k = int(rng.integers(3, 7))
    absent = int(rng.integers(k))
    present = [c for c in range(k) if c != absent]
    target = rng.choice(present, size=5000, p=rng.dirichlet(np.ones(k - 1)))
    pred = np.where(rng.random(5000) < 0.6, target, rng.integers(0, k, 5000))  # often right, else any class
    if trial % 2 == 0:
        pred[pred == absent] = present[0]
    target[rng.random(5000) < 0.1] = 255
    keep = target != 255
    per_class = jaccard_score(target[keep], pred[keep], labels=list(range(k)), average=None, zero_division=0)
    support = np.bincount(target[keep], minlength=k)
    assert support[absent] == 0
    expected = float(np.sum(support * per_class) / support.sum())
    s = scores(confusion(pred, target, k), [f"c{c}" for c in range(k)])
    assert s["fwiou"] == pytest.approx(expected, abs=1e-12)
    assert "iou_micro" not in s


def test_fwiou_is_not_a_function_of_pixel_accuracy():
    """Micro IoU was acc / (2 - acc) for every matrix; fwIoU separates matrices of equal accuracy."""
    a = scores(np.array([[80, 10], [0, 10]]), ["a", "b"])  # the 10 errors land in the big class's row
    b = scores(np.array([[90, 0], [10, 0]]), ["a", "b"])  # the small class is never found
    assert a["pixel_accuracy"] == b["pixel_accuracy"] == 0.9
    assert a["fwiou"] == pytest.approx(0.9 * 80 / 90 + 0.1 * 10 / 20)
    assert b["fwiou"] == pytest.approx(0.9 * 90 / 100 + 0.1 * 0)
    assert np.isnan(scores(np.zeros((2, 2)), ["a", "b"])["fwiou"])


def test_class_absent_from_truth_and_prediction_is_not_averaged():
    s = scores(confusion(np.array([0, 1]), np.array([0, 1]), 3), ["a", "b", "c"])
    assert np.isnan(s["iou_c"]) and s["miou_macro"] == 1.0 and s["fwiou"] == 1.0  # its NaN IoU weighs 0


def test_scores_in_float64_from_a_float32_matrix():
    """Counts past 2**24 are not float32 sums: 2**24 + 3 pixels (hand-computed IoU and accuracy)."""
    s = scores(np.array([[2**24, 1], [1, 1]], dtype=np.float32), ["a", "b"])
    assert s["pixels"] == 2**24 + 3
    assert s["pixel_accuracy"] == (2**24 + 1) / (2**24 + 3)
    assert s["iou_a"] == 2**24 / (2**24 + 2) and s["iou_b"] == 1 / 3


def test_scores_of_absent_classes_and_an_empty_matrix_are_quiet():
    """An absent class (0/0 IoU) and a matrix without pixels give NaN without a numpy warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]]), ["a", "b", "c"])
        empty = scores(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert math.isnan(s["iou_c"]) and s["iou_a"] == 2 / 3 and s["iou_b"] == 1 / 2 and s["miou_macro"] == pytest.approx(7 / 12, abs=1e-15)
    assert empty["pixels"] == 0
    assert all(math.isnan(empty[k]) for k in ("miou_macro", "fwiou", "pixel_accuracy", "iou_a", "iou_b"))


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
