"""The report's normalisation-mode table on a made-up table, against hand-computed means and scipy's t interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eqseg.report import modes_markdown, normalisation_modes


def _table() -> pd.DataFrame:
    rows = []
    train = {0: 0.50, 1: 0.60, 2: 0.55}
    image = {0: 0.80, 1: 0.82, 2: 0.79}
    adabn = {0: 0.70, 1: float("nan"), 2: 0.74}  # a NaN seed (e.g. a skipped mode) drops out of its pair
    for seed in (2, 0, 1):  # out of order: pairs must follow the seed, not the row order
        rows.append(dict(dataset="a", testset="b", model="unet", variant="d4", supervision="full", budget=100,
                         seed=seed, mode_train_miou_macro=train[seed], mode_image_miou_macro=image[seed],
                         mode_image_adabn_miou_macro=adabn[seed], miou_macro=0.1))
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
