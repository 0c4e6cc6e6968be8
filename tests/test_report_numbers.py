"""The numbers behind the README's headlines, on made-up tables whose answers are worked out by hand here.

`report.distill_gains` gives each NAME+distill student against its teacher (the NAME cell with the same dataset,
test set, model, variant and budget): means over the seeds both have, the paired difference per seed with its 95 %
Student-t interval, and the teacher's pseudo-label record (kept fraction and precision, from quality.json).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

T975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (from tables)
T975_DF1 = 12.706204736174707  # 1 degree of freedom


def _rows(dataset, testset, model, supervision, budget, scores, variant="d4"):
    return [dict(dataset=dataset, testset=testset, model=model, supervision=supervision, variant=variant, budget=budget,
                 seed=seed, miou_macro=value, dice_macro=0.9) for seed, value in scores.items()]


def _table() -> pd.DataFrame:
    rows = []
    # cell A: unet, points teacher (3 seeds) and its student (4 seeds: seed 3 has no teacher, so it is not paired)
    rows += _rows("sn", "sn", "unet", "points", 100, {0: 0.50, 1: 0.55, 2: 0.60})
    rows += _rows("sn", "sn", "unet", "points+distill", 100, {0: 0.54, 1: 0.58, 2: 0.65, 3: 0.99})
    # the same cell scored on another test set: its own pair
    rows += _rows("sn", "ext", "unet", "points", 100, {0: 0.30, 1: 0.30, 2: 0.30})
    rows += _rows("sn", "ext", "unet", "points+distill", 100, {0: 0.31, 1: 0.32, 2: 0.33})
    # cell B: p4m_unet, scribbles teacher and student, two seeds
    rows += _rows("sn", "sn", "p4m_unet", "scribbles", 100, {0: 0.40, 1: 0.42})
    rows += _rows("sn", "sn", "p4m_unet", "scribbles+distill", 100, {0: 0.41, 1: 0.47})
    # distractors that must not be taken as teachers: another budget, another variant, another model, dense labels
    rows += _rows("sn", "sn", "unet", "points", 50, {0: 0.10, 1: 0.10, 2: 0.10})
    rows += _rows("sn", "sn", "unet", "points", 100, {0: 0.95, 1: 0.95, 2: 0.95}, variant="none")
    rows += _rows("sn", "sn", "p4m_unet", "points", 100, {0: 0.05, 1: 0.05, 2: 0.05})
    rows += _rows("sn", "sn", "unet", "full", 100, {0: 0.80, 1: 0.81, 2: 0.82})
    return pd.DataFrame(rows)


def _quality(root, model, parent, seed, kept, precision, budget=100, variant="d4"):
    q = root / f"results/pseudo/sn/{model}/{parent}/{variant}/b{budget}/seed{seed}/quality.json"
    q.parent.mkdir(parents=True, exist_ok=True)
    q.write_text(json.dumps({"labelled_fraction": 0.5, "distill": {"kept_fraction": kept, "pseudo_precision": precision}}))


def test_distill_gains_on_a_made_up_table(tmp_path):
    from eqseg.report import distill_gains, distill_markdown

    for seed, kept, precision in [(0, 0.2, 0.9), (1, 0.4, 0.8), (2, 0.6, 0.7), (3, 1.0, 0.0)]:  # seed 3: unpaired
        _quality(tmp_path, "unet", "points", seed, kept, precision)
    _quality(tmp_path, "unet", "points", 0, 0.99, 0.01, budget=50)  # another budget's teacher: not this one
    gains = distill_gains(_table(), root=tmp_path)

    assert len(gains) == 3
    rows = {(r["test_set"], r["model"], r["supervision"]): r for r in gains.to_dict("records")}
    assert set(rows) == {("sn", "unet", "points+distill"), ("ext", "unet", "points+distill"),
                         ("sn", "p4m_unet", "scribbles+distill")}

    # cell A, paired seeds 0-2: differences .04 .03 .05 -> mean .04, sd .01; student .59, teacher .55
    a = rows[("sn", "unet", "points+distill")]
    half = T975_DF2 * 0.01 / math.sqrt(3)
    assert (a["dataset"], a["variant"], a["budget"], a["parent"], a["n"]) == ("sn", "d4", 100, "points", 3)
    assert (a["student"], a["teacher"]) == pytest.approx((0.59, 0.55), abs=1e-12)
    assert (a["diff"], a["diff_lo"], a["diff_hi"]) == pytest.approx((0.04, 0.04 - half, 0.04 + half), abs=1e-12)
    assert (a["kept_fraction"], a["pseudo_precision"]) == pytest.approx((0.4, 0.8), abs=1e-12)  # seeds 0-2 only

    # the same cell on the other test set: differences .01 .02 .03 -> mean .02, sd .01; same pseudo-labels
    e = rows[("ext", "unet", "points+distill")]
    assert (e["student"], e["teacher"], e["n"]) == pytest.approx((0.32, 0.30, 3), abs=1e-12)
    assert (e["diff"], e["diff_lo"], e["diff_hi"]) == pytest.approx((0.02, 0.02 - half, 0.02 + half), abs=1e-12)
    assert (e["kept_fraction"], e["pseudo_precision"]) == pytest.approx((0.4, 0.8), abs=1e-12)

    # cell B: differences .01 .05 -> mean .03, sd .02 * sqrt(2); no pseudo-label record: NaN
    b = rows[("sn", "p4m_unet", "scribbles+distill")]
    half_b = T975_DF1 * (0.04 / math.sqrt(2)) / math.sqrt(2)
    assert (b["parent"], b["n"], b["student"], b["teacher"]) == pytest.approx(("scribbles", 2, 0.44, 0.41), abs=1e-12)
    assert (b["diff"], b["diff_lo"], b["diff_hi"]) == pytest.approx((0.03, 0.03 - half_b, 0.03 + half_b), abs=1e-12)
    assert math.isnan(b["kept_fraction"]) and math.isnan(b["pseudo_precision"])

    # the README's line: student / teacher, the difference with its interval, the record, the seeds
    text = distill_markdown(gains)
    assert ("| sn | sn | unet | d4 | 100 % | points+distill | points | 0.590 / 0.550 | +0.040 [0.015, 0.065] | "
            "0.400 | 0.800 | 3 |") in text.splitlines()
    assert ("| sn | sn | p4m_unet | d4 | 100 % | scribbles+distill | scribbles | 0.440 / 0.410 | +0.030 [-0.224, 0.284] | "
            "- | - | 2 |") in text.splitlines()


def test_distill_gains_without_students_is_empty():
    from eqseg.report import distill_gains

    table = _table()
    out = distill_gains(table[~table.supervision.str.endswith("+distill")])
    assert out.empty and {"diff", "diff_lo", "diff_hi", "n", "student", "teacher"} <= set(out.columns)


def test_distill_gains_of_another_metric(tmp_path):
    """metric= picks the column: the gains in dice_macro (0.9 everywhere) are exactly 0 with a zero-width interval."""
    from eqseg.report import distill_gains

    gains = distill_gains(_table(), root=tmp_path, metric="dice_macro")
    assert len(gains) == 3
    assert (gains["diff"].abs().max(), gains["diff_lo"].abs().max(), gains["diff_hi"].abs().max()) == pytest.approx((0, 0, 0), abs=1e-12)


def test_headline_metrics_are_the_mean_miou_per_test_set_and_cell():
    """results/report/metrics.json, what `dvc exp show` and `dvc metrics diff` show: one mean per test set and cell."""
    from eqseg.report import headline, summarise, wide

    rows = _rows("sn", "sn", "unet", "full", 100, {0: 0.80, 1: 0.82}) + _rows("sn", "sn", "p4m_unet", "full", 100, {0: 0.70})
    rows += _rows("sn", "ext", "unet", "full", 100, {0: 0.30, 1: 0.40})
    got = headline(wide(summarise(pd.DataFrame(rows))))
    assert got == {"mean_miou": {"unet": pytest.approx(0.81), "p4m_unet": 0.70},
                   "test_miou": {"sn": {"unet_full_d4_b100": pytest.approx(0.81), "p4m_unet_full_d4_b100": 0.70},
                                 "sn_on_ext": {"unet_full_d4_b100": pytest.approx(0.35)}}}
