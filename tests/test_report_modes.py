"""The report's normalisation-mode table on a made-up table, against hand-computed means and scipy's t interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eqseg.report import best_mode, modes_markdown, modes_pooled, modes_pooled_markdown, normalisation_modes


def _table() -> pd.DataFrame:
    rows = []
    train = {0: 0.50, 1: 0.60, 2: 0.55}
    image = {0: 0.80, 1: 0.82, 2: 0.79}
    adabn = {0: 0.70, 1: float("nan"), 2: 0.74}  # a NaN seed (e.g. a skipped mode) drops out of its pair
    for seed in (2, 0, 1):  # out of order: pairs must follow the seed, not the row order
        rows.append(dict(dataset="a", testset="b", model="unet", variant="d4", supervision="full", budget=100,
                         seed=seed, mode_image_adabn_miou_macro=adabn[seed], mode_image_miou_macro=image[seed],
                         mode_train_miou_macro=train[seed], miou_macro=0.1))  # columns as json's sorted keys
    rows.append(dict(dataset="a", testset="a", model="unet", variant="d4", supervision="full", budget=100, seed=0,
                     mode_train_miou_macro=0.9, mode_image_miou_macro=0.88, mode_image_adabn_miou_macro=0.87, miou_macro=0.9))
    return pd.DataFrame(rows)


def test_modes_are_paired_by_seed_against_train():
    modes = normalisation_modes(_table())
    ext = modes[(modes.test_set == "b")].set_index("mode")
    assert set(ext.index) == {"train", "image", "image+adabn"}
    d = np.array([0.80 - 0.50, 0.82 - 0.60, 0.79 - 0.55])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    r = ext.loc["image"]
    assert r["mean"] == pytest.approx(np.mean([0.80, 0.82, 0.79]), abs=1e-12)
    assert r["std"] == pytest.approx(np.std([0.80, 0.82, 0.79], ddof=1), abs=1e-12)
    assert (r["diff"], r["diff_lo"], r["diff_hi"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half), abs=1e-12)
    a = ext.loc["image+adabn"]
    d2 = np.array([0.70 - 0.50, 0.74 - 0.55])
    half2 = sps.t.ppf(0.975, 1) * d2.std(ddof=1) / math.sqrt(2)
    assert (a["n"], a["mean"]) == (2, pytest.approx(0.72, abs=1e-12))
    assert (a["diff"], a["diff_lo"], a["diff_hi"]) == pytest.approx((d2.mean(), d2.mean() - half2, d2.mean() + half2), abs=1e-12)
    assert ext.loc["train", "diff"] == 0.0
    own = modes[(modes.test_set == "a")].set_index("mode")
    assert own.loc["image", "n"] == 1 and own.loc["image", "diff"] == pytest.approx(-0.02, abs=1e-12)
    assert np.isnan(own.loc["image", "diff_lo"])  # one seed: no interval


def test_modes_markdown_shows_each_mode_with_its_difference():
    text = modes_markdown(normalisation_modes(_table()))
    header, _, first, second = text.strip().splitlines()
    assert header == "| dataset | test set | model | variant | supervision | budget | train | image | image+adabn |"
    assert first.startswith("| a | b | unet | d4 | full | 100 % | 0.550 | 0.803 (+0.253 [")
    assert second == "| a | a | unet | d4 | full | 100 % | 0.900 | 0.880 (-0.020) | 0.870 (-0.030) |"


def test_no_axis_no_table():
    table = _table().drop(columns=[c for c in _table().columns if c.startswith("mode_")])
    assert normalisation_modes(table).empty and modes_markdown(normalisation_modes(table)) == ""


def _pool_table() -> pd.DataFrame:
    """Two trained models x 2 seeds of one dataset "a", scored in-domain and on "b" under train, dataset, image and
    train+adabn (values chosen by hand: dataset costs nothing in-domain, image costs 0.03, adabn gains most outside
    but costs 0.05 inside)."""
    scores = {  # (model, seed): {test set: (train, dataset, image, train+adabn)}
        ("unet", 0): {"a": (0.90, 0.90, 0.87, 0.85), "b": (0.50, 0.70, 0.70, 0.80)},
        ("unet", 1): {"a": (0.88, 0.88, 0.85, 0.83), "b": (0.55, 0.65, 0.66, 0.79)},
        ("p4m", 0): {"a": (0.86, 0.86, 0.83, 0.81), "b": (0.60, 0.58, 0.75, 0.81)},
        ("p4m", 1): {"a": (0.87, 0.87, 0.84, 0.82), "b": (0.52, 0.72, 0.70, 0.78)},
    }
    rows = []
    for (model, seed), by_set in scores.items():
        for testset, (train, dataset, image, adabn) in by_set.items():
            rows.append(dict(dataset="a", testset=testset, model=model, variant="d4", supervision="full", budget=100,
                             seed=seed, mode_train_miou_macro=train, mode_dataset_miou_macro=dataset,
                             mode_image_miou_macro=image, mode_train_adabn_miou_macro=adabn))
    return pd.DataFrame(rows)


def test_modes_pooled_over_every_trained_model_against_scipy():
    pooled = modes_pooled(_pool_table()).set_index(["test_set", "mode"])
    assert set(pooled.index) == {(t, m) for t in "ab" for m in ("dataset", "image", "train+adabn")}
    r = pooled.loc[("b", "dataset")]
    d = np.array([0.70 - 0.50, 0.65 - 0.55, 0.58 - 0.60, 0.72 - 0.52])
    ref = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (r["n"], bool(r["in_domain"])) == (4, False)
    assert (r["diff"], r["diff_lo"], r["diff_hi"]) == pytest.approx((d.mean(), ref.low, ref.high), abs=1e-12)
    assert (r["worst"], r["n_worse"]) == (pytest.approx(-0.02, abs=1e-12), 1)
    assert r["mean"] == pytest.approx(np.mean([0.70, 0.65, 0.58, 0.72]), abs=1e-12)
    inside = pooled.loc[("a", "image")]
    assert bool(inside["in_domain"]) and inside["diff"] == pytest.approx(-0.03, abs=1e-12) and inside["n_worse"] == 4


def test_best_mode_holds_off_domain_without_costing_in_domain():
    table = _pool_table()
    # train+adabn gains most outside (+0.255) but costs 0.05 inside; image gains +0.16 outside but costs 0.03 inside;
    # dataset costs nothing inside and gains +0.12 outside
    assert best_mode(modes_pooled(table)) == "dataset"
    cheap = table.assign(mode_image_miou_macro=np.where(table.testset == "a", table.mode_train_miou_macro + 0.001,
                                                       table.mode_image_miou_macro))
    assert best_mode(modes_pooled(cheap)) == "image"  # now harmless inside, and it gains more outside than dataset
    assert best_mode(modes_pooled(table[table.testset == "a"])) is None  # no external test set: nothing to choose
    worse = table.assign(**{c: table.mode_train_miou_macro - 0.1 for c in
                            ("mode_dataset_miou_macro", "mode_image_miou_macro", "mode_train_adabn_miou_macro")})
    assert best_mode(modes_pooled(worse)) is None  # no mode gains outside


def test_modes_pooled_markdown_names_in_domain_rows():
    text = modes_pooled_markdown(modes_pooled(_pool_table()))
    header, _, first, second = text.strip().splitlines()
    assert header == "| dataset | test set | pairs | dataset − train | image − train | train+adabn − train |"
    assert first.startswith("| a | a (in-domain) | 4 | +0.000 [0.000, 0.000]; worst +0.000, 0 lose | -0.030 [")
    assert second.startswith("| a | b | 4 | +0.120 [") and "worst -0.020, 1 lose" in second
    assert modes_pooled_markdown(modes_pooled(_pool_table().drop(columns="mode_train_miou_macro"))) == ""


def test_summary_pairs_models_under_every_normalisation():
    """summary.csv has each mode's test mIoU with its paired difference to the unet: the answer (model against
    baseline) under every normalisation, not only the grid's own."""
    from eqseg.report import summarise

    s = summarise(_pool_table()).set_index(["test_set", "metric", "model"])
    r = s.loc[("b", "mode_dataset_miou_macro", "p4m")]
    d = np.array([0.58 - 0.70, 0.72 - 0.65])  # seeds 0 and 1, p4m minus unet, dataset mode, test set b
    ref = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (r["diff"], r["diff_lo"], r["diff_hi"], r["n_pairs"]) == pytest.approx((d.mean(), ref.low, ref.high, 2), abs=1e-12)
    assert s.loc[("b", "mode_train_miou_macro", "p4m"), "diff"] == pytest.approx(np.mean([0.60 - 0.50, 0.52 - 0.55]), abs=1e-12)
    assert {"mode_image_miou_macro", "mode_train_adabn_miou_macro"} <= set(s.index.get_level_values("metric"))


def test_a_partial_report_shows_the_evaluations_done_so_far(root, tmp_path, monkeypatch):
    """A long run's progress: `report --partial` reports the cells whose evaluation exists and says how many of the
    grid's are done; without --partial a missing evaluation is refused in one line naming it."""
    import json

    import yaml

    from eqseg import paths
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError
    from eqseg.report import report

    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw["grid"].update(seeds=[0, 1], test_on=[])
    raw["digits"]["models"] = ["cnn"]  # not run: a partial report leaves its section out
    params = parse_params(raw)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EqsegError, match="none of the .* evaluations"):
        report(params, tmp_path / "out", partial=True)
    evaluations = params.evaluations()
    done = [e for e in evaluations if e["seed"] == 0]
    classes = params.dataset(done[0]["dataset"]).classes
    for i, cell in enumerate(done):
        folder = tmp_path / paths.EVAL.format(**cell)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"miou_macro": 0.5 + 0.01 * i, "normalise": "train", "equivariance_error_rotations": 0.1, "equivariance_error_reflections": 0.1,
                                                         **{f"iou_{c}": 0.5 for c in classes}}))
    missing = paths.EVAL.format(**next(e for e in evaluations if e["seed"] == 1))
    with pytest.raises(EqsegError, match=rf"{missing}/metrics.json: missing.*--partial"):
        report(params, tmp_path / "full")
    report(params, tmp_path / "out", partial=True)
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"Partial report: {len(done)} of the grid's {len(evaluations)} evaluations are done" in text
    assert "Rotated digits" not in text
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert len(cells) == len(done) and set(cells.seed) == {0}
