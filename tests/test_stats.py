"""Spread over seeds, paired intervals vs the unet baseline on a made-up table, nested label budgets."""

import math

import numpy as np
import pandas as pd
import pytest

from eqseg.errors import EqsegError
from eqseg.metrics import scores
from eqseg.stats import mean_std, nested_budget_ids, paired_bootstrap_interval, paired_t_interval, summarise

T975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), from tables
T975_DF1 = 12.706204736174707


def test_mean_std_and_t_interval_hand_values():
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    one = mean_std([0.4, float("nan")])
    assert one["mean"] == 0.4 and math.isnan(one["std"]) and one["n"] == 1
    res = paired_t_interval([0.6, 0.8, 0.7], [0.5, 0.6, 0.7])  # diffs .1 .2 0: mean .1, sd .1
    half = T975_DF2 * 0.1 / math.sqrt(3)
    assert res["diff"] == pytest.approx(0.1)
    assert (res["lo"], res["hi"]) == pytest.approx((0.1 - half, 0.1 + half))
    assert res["n"] == 3
    assert math.isnan(paired_t_interval([0.7], [0.6])["lo"])
    with pytest.raises(EqsegError):
        paired_t_interval([1, 2], [1])


def test_bootstrap_over_images_is_seeded_and_paired():
    rng = np.random.default_rng(0)
    base = rng.random(30)
    better = base + 0.05  # better by exactly 0.05 on every image: every resample gives 0.05
    res = paired_bootstrap_interval(better, base, seed=3)
    assert res["diff"] == pytest.approx(0.05)
    assert (res["lo"], res["hi"]) == pytest.approx((0.05, 0.05))
    noisy = base + rng.normal(0.02, 0.05, 30)
    r1 = paired_bootstrap_interval(noisy, base, n_boot=500, seed=7)
    r2 = paired_bootstrap_interval(noisy, base, n_boot=500, seed=7)
    assert r1 == r2 and r1["lo"] < r1["diff"] < r1["hi"]


def test_bootstrap_with_confusion_matrices_rescores_miou():
    # two images; per-image confusion matrices; the metric is mIoU of the summed matrix
    a = np.array([[[4, 0], [0, 4]], [[3, 1], [1, 3]]])
    b = np.array([[[2, 2], [2, 2]], [[3, 1], [1, 3]]])

    def miou(cm):
        return scores(cm, ["x", "y"])["miou_macro"]

    res = paired_bootstrap_interval(a, b, metric=miou, n_boot=200, seed=0)
    # all images: a sums to [[7,1],[1,7]] -> IoU 7/9; b to [[5,3],[3,5]] -> 5/11
    assert res["diff"] == pytest.approx(7 / 9 - 5 / 11)
    assert 0 <= res["lo"] <= res["diff"] <= res["hi"] <= 1 - 1 / 3  # resamples of image 2 only give 0


def test_nested_budgets_nest_and_are_deterministic():
    ids = [f"tile_{i:03d}" for i in range(40)]
    fr = [0.1, 0.25, 0.3, 1.0]
    sub = nested_budget_ids(ids, fr, seed=0)
    assert [len(sub[f]) for f in fr] == [4, 10, 12, 40]
    assert set(sub[0.1]) <= set(sub[0.25]) <= set(sub[0.3]) <= set(sub[1.0]) == set(ids)
    assert nested_budget_ids(list(reversed(ids)), fr, seed=0) == sub  # input order does not matter
    other = nested_budget_ids(ids, fr, seed=1)
    assert other[0.25] != sub[0.25] and set(other[0.1]) <= set(other[0.25])
    assert len(nested_budget_ids(ids[:3], [0.1], seed=0)[0.1]) == 1  # at least one tile
    for bad in ([0.0], [1.5]):
        with pytest.raises(EqsegError):
            nested_budget_ids(ids, bad, seed=0)


def _table():
    rows = []
    cell = dict(dataset="cpm15", variant="none", supervision="full")
    for seed, (u, p) in enumerate([(0.5, 0.6), (0.6, 0.8), (0.7, 0.7)]):
        rows.append(dict(cell, model="unet", budget=1.0, seed=seed, miou=u, dice=u + 0.1))
        rows.append(dict(cell, model="p4m_unet", budget=1.0, seed=seed, miou=p, dice=p + 0.1))
    # budget 0.1: unet has seeds 0, 1 only -> two pairs
    rows += [dict(cell, model="unet", budget=0.1, seed=0, miou=0.30, dice=0.4),
             dict(cell, model="unet", budget=0.1, seed=1, miou=0.40, dice=0.5),
             dict(cell, model="p4m_unet", budget=0.1, seed=0, miou=0.35, dice=0.45),
             dict(cell, model="p4m_unet", budget=0.1, seed=1, miou=0.55, dice=0.6),
             dict(cell, model="p4m_unet", budget=0.1, seed=2, miou=0.50, dice=0.6)]
    # another variant with no unet: no partner
    rows.append(dict(cell, variant="d4", model="p4_unet", budget=1.0, seed=0, miou=0.9, dice=0.95))
    return pd.DataFrame(rows)


def test_summarise_made_up_table():
    out = summarise(_table(), metrics=["miou", "dice"])
    assert set(out.columns) >= {"dataset", "model", "variant", "supervision", "budget", "metric", "mean", "std",
                                "n", "diff", "diff_lo", "diff_hi", "n_pairs"}
    assert len(out) == 5 * 2

    def row(model, budget, metric, variant="none"):
        r = out[(out.model == model) & (out.budget == budget) & (out.metric == metric) & (out.variant == variant)]
        assert len(r) == 1
        return r.iloc[0]

    r = row("p4m_unet", 1.0, "miou")
    half = T975_DF2 * 0.1 / math.sqrt(3)
    assert (r["mean"], r["std"], r["n"]) == pytest.approx((0.7, 0.1, 3))
    assert (r["diff"], r["diff_lo"], r["diff_hi"], r["n_pairs"]) == pytest.approx((0.1, 0.1 - half, 0.1 + half, 3))
    r = row("p4m_unet", 0.1, "miou")  # pairs seeds 0, 1: diffs .05, .15 -> mean .1, sd .0707
    half = T975_DF1 * np.std([0.05, 0.15], ddof=1) / math.sqrt(2)
    assert r["n"] == 3 and r["n_pairs"] == 2
    assert (r["diff"], r["diff_lo"], r["diff_hi"]) == pytest.approx((0.1, 0.1 - half, 0.1 + half))
    u = row("unet", 1.0, "dice")
    assert u["mean"] == pytest.approx(0.7) and math.isnan(u["diff"]) and u["n_pairs"] == 0
    lone = row("p4_unet", 1.0, "miou", variant="d4")
    assert lone["n"] == 1 and math.isnan(lone["std"]) and math.isnan(lone["diff"]) and lone["n_pairs"] == 0
    # metric columns are found automatically (numeric, not keys, not seed)
    assert set(summarise(_table())["metric"]) == {"miou", "dice"}


def test_summarise_rejects_bad_tables():
    t = _table()
    with pytest.raises(EqsegError, match="seed"):
        summarise(t.drop(columns="seed"))
    with pytest.raises(EqsegError, match="duplicate"):
        summarise(pd.concat([t, t.iloc[:1]]))
    with pytest.raises(EqsegError, match="iou_x"):
        summarise(t, metrics=["iou_x"])


def test_report_table_counts_parameters_per_dataset():
    """The same model has another parameter count on a dataset with other bands: the table shows each."""
    from eqseg.report import summarise as report_summary, to_markdown, wide

    rows = [dict(dataset=d, testset=d, model=m, supervision="full", variant="d4", budget=100, seed=0,
                 miou_macro=0.5, n_params=n)
            for d, m, n in [("rgb", "unet", 488_018), ("rgb", "p4m_unet", 61_320),
                            ("pan", "unet", 487_730), ("pan", "p4m_unet", 61_284)]]
    table = pd.DataFrame(rows)
    text = to_markdown(wide(report_summary(table)), table)
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()[2:]}
    assert "| 487,730 |" in lines[("pan", "pan", "unet")] and "| 488,018 |" in lines[("rgb", "rgb", "unet")]
    assert "| 61,284 |" in lines[("pan", "pan", "p4m_unet")]


def test_report_has_a_column_per_test_set():
    from eqseg.report import by_test_set, summarise as report_summary, wide

    rows = [dict(dataset="a", testset=t, model=m, supervision="full", variant="none", budget=100, seed=seed,
                 miou_macro=base + 0.01 * seed)
            for t, shift in [("a", 0.0), ("b", -0.2)] for m, base0 in [("unet", 0.8), ("p4m_unet", 0.7)]
            for base in [base0 + shift] for seed in range(3)]
    rows += [dict(dataset="c", testset="c", model="unet", supervision="full", variant="none", budget=100, seed=0,
                  miou_macro=0.5)]  # one test set only: not in the table
    text = by_test_set(wide(report_summary(pd.DataFrame(rows))))
    lines = text.splitlines()
    assert lines[0] == "| dataset | model | variant | supervision | budget | a | b |"
    assert "| a | unet | none | full | 100 % | 0.810 ± 0.010 | 0.610 ± 0.010 |" in lines
    assert "| a | p4m_unet | none | full | 100 % | 0.710 ± 0.010 | 0.510 ± 0.010 |" in lines
    assert not any(line.startswith("| c |") for line in lines)
    single = [r for r in rows if r["dataset"] == "c"]
    assert by_test_set(wide(report_summary(pd.DataFrame(single)))) == ""
    # a partial run: a cell scored on one test set only shows "-" for the other, not nan
    partial = [r for r in rows if not (r["model"] == "p4m_unet" and r["testset"] == "b")]
    assert "| a | p4m_unet | none | full | 100 % | 0.710 ± 0.010 | - |" in by_test_set(wide(report_summary(pd.DataFrame(partial)))).splitlines()


# --------------------------------------------------------------------------------------------- against scipy
# The intervals against an independent implementation: scipy.stats.bootstrap (percentile method, the same statistic,
# paired where eqseg's is paired) and scipy.stats.t. Both bootstraps use 20,000 resamples, so each bound carries a
# Monte-Carlo error of about 0.02 bootstrap standard errors; the tolerance (0.1 SE) is 5 such errors wide, while
# reporting a 90 % interval as 95 % moves each bound by 0.31 SE (1.96 - 1.645), and resampling the two models
# independently (unpaired) widens the interval several times over here.
N_BOOT = 20_000


def _scipy_percentile(data, statistic, confidence, **kw):
    import inspect

    from scipy import stats as sps

    seeded = np.random.default_rng(12345)  # scipy >= 1.15 calls it rng, older versions random_state
    kw["rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"] = seeded
    res = sps.bootstrap(data, statistic, n_resamples=N_BOOT, method="percentile", confidence_level=confidence, **kw)
    return res.confidence_interval.low, res.confidence_interval.high, res.standard_error


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_bootstrap_interval_matches_scipy_percentile_bootstrap(confidence):
    rng = np.random.default_rng(4)
    base = rng.beta(5, 3, 60)  # per-image scores of the baseline
    model = np.clip(base + rng.normal(0.03, 0.04, 60), 0, 1)  # the same images, a little better: strongly paired

    ours = paired_bootstrap_interval(model, base, n_boot=N_BOOT, seed=1, confidence=confidence)
    lo, hi, se = _scipy_percentile((model, base), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), confidence,
                                   paired=True, vectorized=True)
    assert ours["diff"] == pytest.approx(model.mean() - base.mean(), abs=1e-12)
    assert ours["n_images"] == 60 and ours["n_boot"] == N_BOOT
    assert abs(ours["lo"] - lo) < 0.1 * se and abs(ours["hi"] - hi) < 0.1 * se, (ours, lo, hi, se)
    # the tolerance can tell the confidence levels apart (else this test would not guard the level)
    other = 0.9 if confidence == 0.95 else 0.95
    lo2, hi2, _ = _scipy_percentile((model, base), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), other,
                                    paired=True, vectorized=True)
    assert abs(lo2 - lo) > 0.25 * se and abs(hi2 - hi) > 0.25 * se
    # and pairing matters: scipy's unpaired interval is far wider than eqseg's (paired) one
    ulo, uhi, _ = _scipy_percentile((model, base), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), confidence,
                                    paired=False, vectorized=True)
    assert uhi - ulo > 3 * (ours["hi"] - ours["lo"])


def _miou(cm: np.ndarray) -> float:
    """Mean IoU of a confusion matrix, written out here (not eqseg.metrics.scores): diag / (row + column - diag)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_bootstrap_of_a_pooled_metric_matches_scipy():
    """mIoU re-scored from the summed confusion matrices of each resample of images (not a mean of per-image
    scores): scipy resamples the image indices, and its statistic re-scores both models on those same images."""
    rng = np.random.default_rng(5)
    n, c = 40, 3
    truth = rng.integers(50, 400, size=(n, c))  # pixels of each class per image

    def image_cms(skill):  # row k of an image's matrix: its class-k pixels spread over the predicted classes
        cms = np.zeros((n, c, c), dtype=np.int64)
        for i in range(n):
            for k in range(c):
                cms[i, k] = rng.multinomial(truth[i, k], rng.dirichlet(1.0 + skill * rng.uniform(0.5, 1.5) * np.eye(c)[k]))
        return cms
    a, b = image_cms(12.0), image_cms(9.0)

    ours = paired_bootstrap_interval(a, b, metric=_miou, n_boot=N_BOOT, seed=2)
    assert ours["diff"] == pytest.approx(_miou(a.sum(0)) - _miou(b.sum(0)), abs=1e-12)
    assert ours["diff"] != pytest.approx(np.mean([_miou(x) for x in a]) - np.mean([_miou(x) for x in b]), abs=1e-4)
    def stat(i, axis=-1):  # i: resampled image indices, (..., n); one score difference per resample
        rows = np.asarray(i).reshape(-1, n)
        return np.array([_miou(a[r].sum(0)) - _miou(b[r].sum(0)) for r in rows]).reshape(np.shape(i)[:-1])

    lo, hi, se = _scipy_percentile((np.arange(n),), stat, 0.95, vectorized=True)
    assert abs(ours["lo"] - lo) < 0.1 * se and abs(ours["hi"] - hi) < 0.1 * se, (ours, lo, hi, se)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(n, confidence):
    from scipy import stats as sps

    rng = np.random.default_rng(n)
    base = rng.uniform(0.4, 0.8, n)
    model = base + rng.normal(0.02, 0.03, n)
    res = paired_t_interval(model, base, confidence)
    d = model - base
    lo, hi = sps.t.interval(confidence, n - 1, loc=d.mean(), scale=sps.sem(d))
    assert (res["diff"], res["lo"], res["hi"], res["n"]) == pytest.approx((d.mean(), lo, hi, n), rel=1e-12, abs=1e-14)
    test = sps.ttest_rel(model, base)
    if hasattr(test, "confidence_interval"):  # the paired t test's own interval (scipy >= 1.10)
        ci = test.confidence_interval(confidence)
        assert (res["lo"], res["hi"]) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-14)


# --------------------------------------------------------------------------------- edge cases (mutation testing)
# Written for the mutants that survived `mutmut` over eqseg.stats (bench/README.md, "Mutation testing"); the
# expected values come from the standard library (statistics, math.fsum) or by hand.


def test_mean_std_of_two_values_and_of_none_is_quiet_nan():
    import statistics
    import warnings

    assert mean_std([1.0, 2.0]) == pytest.approx({"mean": 1.5, "std": statistics.stdev([1.0, 2.0]), "n": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" / "degrees of freedom <= 0" on the way
        for values, n in (([], 0), ([None, float("nan"), float("inf")], 0), ([0.3], 1)):
            res = mean_std(values)
            assert res["n"] == n and math.isnan(res["std"])
            assert math.isnan(res["mean"]) if n == 0 else res["mean"] == 0.3


def test_float32_values_are_summarised_in_float64():
    import statistics

    values = np.random.default_rng(0).uniform(0, 1, 101).astype(np.float32) + np.float32(1000)
    exact = [float(v) for v in values]  # the float32 values, each exactly, as Python floats
    res = mean_std(values)
    assert res["mean"] == pytest.approx(statistics.fmean(exact), rel=1e-14)
    assert res["std"] == pytest.approx(statistics.stdev(exact), rel=1e-9)
    boot = paired_bootstrap_interval(values, np.zeros(101, dtype=np.float32), n_boot=3)
    assert boot["diff"] == pytest.approx(math.fsum(exact) / 101, rel=1e-14)
    boot = paired_bootstrap_interval(np.zeros(101, dtype=np.float32), values, n_boot=3)
    assert boot["diff"] == pytest.approx(-math.fsum(exact) / 101, rel=1e-14)


def test_t_interval_drops_pairs_with_a_nan_on_either_side_and_keeps_the_differences():
    nan = float("nan")
    res = paired_t_interval([0.6, nan, 0.7, 0.9], [0.5, 0.6, nan, 0.6])  # kept pairs: diffs .1 and .3
    half = T975_DF1 * np.std([0.1, 0.3], ddof=1) / math.sqrt(2)
    assert res["n"] == 2 and res["diffs"] == pytest.approx([0.1, 0.3])
    assert (res["diff"], res["lo"], res["hi"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = paired_t_interval([nan, 0.5], [0.4, nan])
    assert empty["n"] == 0 and empty["diffs"] == [] and all(math.isnan(empty[k]) for k in ("diff", "lo", "hi"))
    with pytest.raises(EqsegError, match=r"^paired_t_interval: model \(\(2,\)\) and baseline \(\(1,\)\) need one value"):
        paired_t_interval([1, 2], [1])


def test_bootstrap_edge_cases_defaults_and_messages():
    x = np.array([0.5, 0.7, 0.6])
    res = paired_bootstrap_interval(x, x - 0.1)
    assert (res["n_boot"], res["seed"], res["n_images"]) == (2000, 0, 3)  # the defaults, recorded
    assert res == paired_bootstrap_interval(x, x - 0.1, n_boot=2000, seed=0)
    assert paired_bootstrap_interval(x, x - 0.1, seed=1)["seed"] == 1
    one = paired_bootstrap_interval([0.8], [0.5], n_boot=1)  # one image, one resample: the difference itself
    assert (one["diff"], one["lo"], one["hi"]) == pytest.approx((0.3, 0.3, 0.3))
    # a metric that is never finite leaves no resample: NaN bounds, not an error
    none = paired_bootstrap_interval(x, x, metric=lambda s: float("nan"), n_boot=5)
    assert math.isnan(none["lo"]) and math.isnan(none["hi"])
    shape = r"^paired_bootstrap_interval: model \(.*\) and baseline \(.*\) statistics must have one shape \(n_images, \.\.\.\)$"
    for a, b in (([0.1, 0.2], [0.1]), ([], []), (0.5, 0.5), (np.zeros((2, 2)), np.zeros((3, 2)))):
        with pytest.raises(EqsegError, match=shape):
            paired_bootstrap_interval(a, b)
    with pytest.raises(EqsegError, match=r"^paired_bootstrap_interval: n_boot must be >= 1 \(got 0\)$"):
        paired_bootstrap_interval(x, x, n_boot=0)


def test_nested_budget_errors_say_what_is_wrong():
    with pytest.raises(EqsegError, match=r"^nested_budget_ids: train ids must be unique$"):
        nested_budget_ids(["a", "b", "a"], [0.5], seed=0)
    with pytest.raises(EqsegError, match=r"^nested_budget_ids: no train ids$"):
        nested_budget_ids([], [0.5], seed=0)
    with pytest.raises(EqsegError, match=r"^nested_budget_ids: budget fractions must be in \(0, 1\] \(got 0\)$"):
        nested_budget_ids(["a"], [0], seed=0)


def test_summarise_keys_with_missing_values_order_confidence_and_schema():
    nan = float("nan")
    rows = []
    for variant in (None, "d4"):  # one cell's variant is missing (NaN in the table); it still pairs with its own unet
        for seed, (u, p) in enumerate([(0.5, 0.6), (0.6, 0.8), (0.7, 0.7)]):
            shift = 0.0 if variant is None else 0.2
            rows.append(dict(model="unet", variant=variant, seed=seed, miou=u + shift))
            rows.append(dict(model="p4m_unet", variant=variant, seed=seed, miou=p + 3 * shift))
    table = pd.DataFrame(rows[::-1])  # rows given in reverse: the summary is still sorted by its keys
    out = summarise(table, confidence=0.9)
    assert list(out.columns) == ["model", "variant", "metric", "mean", "std", "n", "diff", "diff_lo", "diff_hi",
                                 "n_pairs"]
    assert list(zip(out.model, out.variant.fillna("-"))) == [("p4m_unet", "d4"), ("p4m_unet", "-"), ("unet", "d4"),
                                                              ("unet", "-")]
    t95_df2 = 2.919985580355516  # scipy.stats.t.ppf(0.95, 2): the 90 % interval
    for variant, diff, diffs in (("d4", 0.5, [0.5, 0.6, 0.4]), (None, 0.1, [0.1, 0.2, 0.0])):
        r = out[(out.model == "p4m_unet") & (out.variant.isna() if variant is None else out.variant == variant)]
        assert len(r) == 1
        half = t95_df2 * np.std(diffs, ddof=1) / math.sqrt(3)
        assert (r.iloc[0]["diff"], r.iloc[0]["diff_lo"], r.iloc[0]["diff_hi"], r.iloc[0]["n_pairs"]) == pytest.approx(
            (diff, diff - half, diff + half, 3))
    # a table of the baseline alone: its differences are NaN floats
    base = summarise(table[table.model == "unet"])
    assert (base[["diff", "diff_lo", "diff_hi"]].dtypes == np.float64).all()
    assert base[["diff", "diff_lo", "diff_hi"]].isna().all().all()
    # no rows: the same columns
    empty = summarise(table.iloc[:0], metrics=["miou"])
    assert list(empty.columns) == list(out.columns) and len(empty) == 0
    # a row repeated for the same cell and seed with another value is a duplicate too
    dup = pd.concat([table, table.iloc[:1].assign(miou=nan)])
    with pytest.raises(EqsegError, match=r"^summarise: 1 duplicate rows for the same cell and seed$"):
        summarise(dup)
    with pytest.raises(EqsegError, match=r"^summarise: expected a pandas DataFrame$"):
        summarise(rows)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1])
def test_confidence_outside_the_open_unit_interval_is_refused(confidence):
    msg = rf"^confidence must be in \(0, 1\) \(got {confidence}\)$"
    with pytest.raises(EqsegError, match=msg):
        paired_t_interval([0.5, 0.6], [0.4, 0.5], confidence)
    with pytest.raises(EqsegError, match=msg):
        paired_bootstrap_interval([0.5, 0.6], [0.4, 0.5], confidence=confidence)
