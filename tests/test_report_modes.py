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
