"""The report's weak-against-full and per-class tables on made-up tables, against hand-computed means, ratios and
scipy's t interval (issue 20, item 4: the study's README tables are built from these files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eqseg.report import per_class, per_class_markdown, weak_vs_full, weak_vs_full_markdown

CELL = dict(dataset="aerial", testset="aerial", variant="d4", budget=100)


def _scores() -> pd.DataFrame:
    full = {"unet": [0.60, 0.64, 0.62], "p4m_unet": [0.58, 0.61, 0.66]}
    points = {"unet": [0.45, 0.50, 0.47], "p4m_unet": [0.52, float("nan"), 0.55]}
    rows = []
    for model in ("unet", "p4m_unet"):
        for seed in (2, 0, 1):  # out of order: pairs follow the seed
            rows.append(dict(CELL, model=model, supervision="full", seed=seed, miou_macro=full[model][seed]))
            rows.append(dict(CELL, model=model, supervision="points", seed=seed, miou_macro=points[model][seed]))
    # a weak cell without a full cell of its model and budget is left out, not compared with another budget
    rows.append(dict(CELL, model="unet", supervision="points", seed=0, miou_macro=0.3) | {"budget": 10})
    return pd.DataFrame(rows)


def test_weak_against_full_is_paired_by_seed():
    r = weak_vs_full(_scores()).set_index(["model", "budget", "supervision"])
    assert list(r.index) == [("unet", 100, "points"), ("p4m_unet", 100, "points")]
    u = r.loc[("unet", 100, "points")]
    d = np.array([0.45 - 0.60, 0.50 - 0.64, 0.47 - 0.62])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (u.weak, u.full) == pytest.approx((np.mean([0.45, 0.50, 0.47]), np.mean([0.60, 0.64, 0.62])), abs=1e-12)
    assert u.ratio == pytest.approx(np.mean([0.45, 0.50, 0.47]) / np.mean([0.60, 0.64, 0.62]), abs=1e-12)
    assert (u["diff"], u.diff_lo, u.diff_hi, u.n) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half, 3), abs=1e-12)
    # a NaN seed drops out of both means and of the pair: only the seeds both cells have are compared
    p = r.loc[("p4m_unet", 100, "points")]
    assert p.n == 2 and (p.weak, p.full) == pytest.approx((0.535, 0.62), abs=1e-12)
    assert p.ratio == pytest.approx(0.535 / 0.62, abs=1e-12)


def test_weak_against_full_markdown():
    text = weak_vs_full_markdown(weak_vs_full(_scores()))
    row = text.strip().splitlines()[2]
    assert row.startswith("| aerial | aerial | unet | d4 | 100 % | points | 0.473 / 0.620 | 0.76 | -0.147 [")
    assert row.endswith("| 3 |")
    assert weak_vs_full_markdown(weak_vs_full(_scores().query("supervision != 'full'"))) == ""


def test_per_class_only_for_multi_class_datasets():
    rows = []
    iou = {0: (0.9, 0.2, 0.5), 1: (0.8, 0.4, 0.6)}
    for seed in (1, 0):
        land, road, water = iou[seed]
        rows.append(dict(CELL, model="unet", supervision="full", seed=seed, iou_land=land, iou_road=road, iou_water=water))
        rows.append(dict(CELL, dataset="nuclei", testset="nuclei", model="unet", supervision="full", seed=seed,
                         iou_background=0.9, iou_nucleus=0.7))
    table = per_class(pd.DataFrame(rows), {"aerial": ["land", "road", "water"], "nuclei": ["background", "nucleus"]})
    assert set(table.dataset) == {"aerial"}
    by = table.set_index("class")
    assert list(by.index) == ["land", "road", "water"]  # the dataset's class order
    assert by.loc["road", "mean"] == pytest.approx(0.3, abs=1e-12)
    assert by.loc["road", "std"] == pytest.approx(np.std([0.2, 0.4], ddof=1), abs=1e-12)
    text = per_class_markdown(table)
    assert "| test set | model | variant | supervision | budget | land | road | water | seeds |" in text
    assert "| aerial | unet | d4 | full | 100 % | 0.850 ± 0.071 | 0.300 ± 0.141 | 0.550 ± 0.071 | 2 |" in text
