"""Edge cases of eqseg.stats and eqseg.tiling.grid written against the mutants that survived hand-made mutation
testing of both modules. Every expected value comes from somewhere else than the function under test: scipy.stats,
numpy or the standard library computed here, a small case worked out by hand (the working is in the comments), or
brute force (pixels enumerated one by one, rectangles tested pairwise)."""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eqseg.errors import EqsegError
from eqseg.stats import nested_budget_ids, paired_bootstrap_interval, paired_t_interval, summarise
from eqseg.tiling import grid
from test_ownership import brute_force_owner, owners_from_masks


# ----------------------------------------------------------------------------------------------- paired t interval
def test_t_interval_wants_one_value_per_seed_on_each_side():
    """A table of values (2-D) or a single number (0-D) is no vector of per-seed values, even with equal shapes."""
    with pytest.raises(EqsegError, match="one value per seed"):
        paired_t_interval(np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(EqsegError, match="one value per seed"):
        paired_t_interval(0.7, 0.6)


def test_t_interval_of_one_pair_keeps_its_difference_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "degrees of freedom <= 0" on the way to the NaN bounds
        res = paired_t_interval([0.7], [0.6])
    assert res["diff"] == pytest.approx(0.1, abs=1e-15) and res["n"] == 1 and res["diffs"] == pytest.approx([0.1])
    assert math.isnan(res["lo"]) and math.isnan(res["hi"])


def test_t_interval_drops_pairs_with_an_infinite_value():
    inf = float("inf")
    res = paired_t_interval([0.6, inf, 0.9, 0.7, 0.8], [0.5, 0.6, 0.6, -inf, 0.6])  # kept: .1, .3, .2
    d = np.array([0.6 - 0.5, 0.9 - 0.6, 0.8 - 0.6])
    ci = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert res["n"] == 3 and res["diffs"] == pytest.approx(d.tolist(), abs=1e-15)
    assert (res["diff"], res["lo"], res["hi"]) == pytest.approx((d.mean(), ci.low, ci.high), rel=1e-12)


def test_t_interval_of_float32_values_is_computed_in_float64():
    rng = np.random.default_rng(3)
    model = (rng.uniform(0, 1, 12) + 1000).astype(np.float32)
    base = rng.uniform(0, 1, 12).astype(np.float32)
    d = [float(m) - float(b) for m, b in zip(model, base)]  # exact float64 differences of the float32 values
    half = sps.t.ppf(0.975, 11) * statistics.stdev(d) / math.sqrt(12)
    res = paired_t_interval(model, base)
    assert res["diff"] == pytest.approx(statistics.fmean(d), rel=1e-13)
    assert (res["lo"], res["hi"]) == pytest.approx((statistics.fmean(d) - half, statistics.fmean(d) + half), rel=1e-12)


# ------------------------------------------------------------------------------------------------------ bootstrap
def _type7_quantile(sorted_values: np.ndarray, p: float) -> float:
    """The percentile with linear interpolation between order statistics (Hyndman & Fan type 7), by hand."""
    h = (len(sorted_values) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo]))


@pytest.mark.parametrize("seed, confidence", [(0, None), (3, None), (3, 0.9)])
def test_bootstrap_reproduces_a_loop_over_resamples_drawn_from_the_seed(seed, confidence):
    """The published intervals must be reproducible: resample b draws its n image indices with
    default_rng(seed).integers(0, n, n), one resample after the other, and the bounds are the linearly interpolated
    percentiles of the finite differences. None: the default confidence, 95 %."""
    rng = np.random.default_rng(11)
    base = rng.beta(4, 3, 25)
    model = np.clip(base + rng.normal(0.02, 0.05, 25), 0, 1)
    draws = np.random.default_rng(seed)
    ref = np.sort([model[i].mean() - base[i].mean() for i in (draws.integers(0, 25, 25) for _ in range(400))])
    alpha = (1 - (confidence or 0.95)) / 2
    kw = {} if confidence is None else {"confidence": confidence}
    res = paired_bootstrap_interval(model, base, n_boot=400, seed=seed, **kw)
    assert res["diff"] == pytest.approx(model.mean() - base.mean(), abs=1e-14)
    assert (res["lo"], res["hi"]) == pytest.approx((_type7_quantile(ref, alpha), _type7_quantile(ref, 1 - alpha)),
                                                   abs=1e-13)


def test_bootstrap_of_two_images_reaches_both_ends_of_its_support():
    """Per-image differences 0 and 1: a resample's mean difference is 0 (both draws image 0, p = 1/4), 1/2 or 1
    (p = 1/4). With 2000 resamples about 500 land on each end, so the 2.5 % and 97.5 % percentiles are 0 and 1."""
    base = np.array([0.4, 0.3])
    res = paired_bootstrap_interval(base + np.array([0.0, 1.0]), base, n_boot=2000, seed=5)
    assert res["diff"] == pytest.approx(0.5, abs=1e-15)
    assert (res["lo"], res["hi"]) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_bootstrap_drops_resamples_whose_metric_is_not_finite():
    """Stats (correct, labelled) per image, metric correct / labelled; image 0 has no labelled pixel, so the
    ~1/27 of resamples made of image 0 alone score 0/0 = NaN for both models and are dropped. On every other
    resample the model is better by exactly 0.1 (its correct count is 0.1 x labelled higher)."""
    labelled = np.array([0.0, 50.0, 80.0])
    base = np.stack([np.array([0.0, 30.0, 60.0]), labelled], axis=1)
    model = np.stack([base[:, 0] + 0.1 * labelled, labelled], axis=1)

    def ratio(s):
        return s[0] / s[1] if s[1] > 0 else float("nan")

    res = paired_bootstrap_interval(model, base, metric=ratio, n_boot=500, seed=0)
    assert (res["diff"], res["lo"], res["hi"]) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


def test_bootstrap_metric_scores_the_sum_over_images():
    """`metric` maps the SUM of the statistics to a score: with metric = total count, the difference on all images is
    the difference of the totals, and every resample of n images differs by n x 2 when each image differs by 2."""
    base = np.array([3.0, 7.0, 1.0, 4.0])
    res = paired_bootstrap_interval(base + 2, base, metric=lambda s: float(s), n_boot=50, seed=1)
    assert (res["diff"], res["lo"], res["hi"]) == pytest.approx((8.0, 8.0, 8.0), abs=1e-12)


# ----------------------------------------------------------------------------------------------------- budgets
def test_nested_budgets_are_the_first_rounded_share_of_the_seeded_permutation():
    """As documented: ids sorted, one permutation from default_rng(seed), budget f takes the first
    max(1, floor(f * n + 0.5)) of it, each subset sorted. n = 10: 0.25 -> 2.5 rounds half up to 3 (not to even, 2);
    0.75 -> 7.5 -> 8; 0.34 -> 3.4 -> 3; 0.04 -> 0.4 -> 0 -> at least 1."""
    ids = [f"t{i}" for i in (7, 2, 9, 0, 5, 3, 8, 1, 6, 4)]
    fractions = [0.04, 0.25, 0.34, 0.75, 1.0]
    for seed in (0, 1, 7):
        perm = np.random.default_rng(seed).permutation(10)
        ordered = sorted(ids)
        got = nested_budget_ids(ids, fractions, seed=seed)
        for f, k in zip(fractions, (1, 3, 3, 8, 10)):
            assert got[f] == sorted(ordered[i] for i in perm[:k]), (seed, f)
            assert got[f] == sorted(got[f])


@pytest.mark.parametrize("fractions", [["0.5"], [None], [0.5, 1.5], [0.5, 0.0]])
def test_nested_budgets_check_every_fraction_and_its_type(fractions):
    with pytest.raises(EqsegError, match="budget fractions must be in"):
        nested_budget_ids(["a", "b", "c"], fractions, seed=0)


# ----------------------------------------------------------------------------------------------------- summarise
def test_summarise_wants_a_model_column():
    table = pd.DataFrame({"seed": [0, 1], "miou": [0.5, 0.6]})
    with pytest.raises(EqsegError, match=r"^summarise: the table has no 'model' column$"):
        summarise(table)


def test_summarise_keeps_text_columns_as_keys_not_metrics():
    rows = [dict(model=m, note=n, seed=s, miou=v)
            for m, n, vals in (("unet", "x", (0.5, 0.6)), ("p4m_unet", "x", (0.6, 0.9)), ("unet", "y", (0.1, 0.2)))
            for s, v in enumerate(vals)]
    out = summarise(pd.DataFrame(rows))
    assert list(out.metric) == ["miou"] * 3
    assert list(zip(out.model, out.note)) == [("p4m_unet", "x"), ("unet", "x"), ("unet", "y")]
    p4m = out.iloc[0]  # paired with the unet of note x only: differences .1 and .3
    ci = sps.ttest_rel([0.6, 0.9], [0.5, 0.6]).confidence_interval(0.95)
    assert (p4m["diff"], p4m["diff_lo"], p4m["diff_hi"], p4m["n_pairs"]) == pytest.approx((0.2, ci.low, ci.high, 2))


# ------------------------------------------------------------------------------------------------------- grid
def test_tile_windows_of_a_rectangle_off_the_origin():
    """Height 20, size 16, overlap 4: rows 0 and 20 - 16 = 4; width 30: columns 0, 12 and 30 - 16 = 14; offset by
    the rectangle's corner (5, 100), in reading order (row by row)."""
    assert grid.tile_windows(5, 100, 20, 30, 16, 4) == [(5, 100), (5, 112), (5, 114), (9, 100), (9, 112), (9, 114)]


@pytest.mark.parametrize("n, fractions, expected", [
    # 3.5, 1.75, 1.75 -> floors 3, 1, 1; the two left over go to the largest remainders (.75, .75)
    (7, {"train": 0.5, "val": 0.25, "test": 0.25}, {"train": 3, "val": 2, "test": 2}),
    # 4, 1 and no test share: test gets nothing
    (5, {"train": 0.8, "val": 0.2}, {"train": 4, "val": 1, "test": 0}),
    # 1.6, .2, .2 -> 2, 0, 0; val takes one from train; test cannot: the donor would be left with none
    (2, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 1, "val": 1, "test": 0}),
    # .3, 2.4, .3 -> 0, 2, 0, the one left over to val (3); train and test each take one from the largest, val
    (3, {"train": 0.1, "val": 0.8, "test": 0.1}, {"train": 1, "val": 1, "test": 1}),
])
def test_split_counts_by_hand(n, fractions, expected):
    assert grid.split_counts(n, fractions) == expected


def test_blocks_cover_the_scene_once_in_reading_order():
    """5 x 7 scene, blocks of 3: rows 0 (3 high) and 3 (2 high), columns 0, 3 (3 wide) and 6 (1 wide)."""
    got = grid.blocks(5, 7, 3)
    assert got == [(0, 0, 3, 3), (0, 3, 3, 3), (0, 6, 3, 1), (3, 0, 2, 3), (3, 3, 2, 3), (3, 6, 2, 1)]
    count = np.zeros((5, 7), int)
    for r, c, h, w in got:
        count[r : r + h, c : c + w] += 1
    assert (count == 1).all()


def test_check_block_size_boundary():
    grid.check_block_size(144, 128, 16, "split.block_size")  # exactly tile + overlap: allowed
    with pytest.raises(EqsegError, match=r"block_size \(143\) must be at least tile size \+ overlap \(144\)"):
        grid.check_block_size(143, 128, 16, "split.block_size")


def _brute_force_groups(boxes, owners):
    """Connected components of 'different owners and the intersection has an area' (pairwise, by hand), numbered by
    first appearance."""
    n = len(boxes)
    label = list(range(n))
    changed = True
    while changed:
        changed = False
        for i in range(n):
            for j in range(n):
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[i], boxes[j]
                area = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
                if owners[i] != owners[j] and area > 0 and label[i] != label[j]:
                    label[i] = label[j] = min(label[i], label[j])
                    changed = True
    ids: dict[int, int] = {}
    return [ids.setdefault(x, len(ids)) for x in label]


@pytest.mark.parametrize("boxes, owners, expected", [
    ([(0, 0, 10, 10), (5, 5, 15, 15)], [0, 1], [0, 0]),  # two owners only: joined
    ([(0, 0, 10, 10), (5, 5, 15, 15), (50, 50, 60, 60)], [0, 0, 1], [0, 1, 2]),  # one owner's blocks: never
    ([(0, 0, 10, 10), (2, 2, 4, 4)], [0, 1], [0, 0]),  # a small scene inside a large one
    ([(0, 0, 10, 10), (0, 0, 10, 10)], [0, 1], [0, 0]),  # the same ground twice
])
def test_overlap_groups_small_cases(boxes, owners, expected):
    assert _brute_force_groups(boxes, owners) == expected  # the reference agrees with the hand-made answer
    assert grid.overlap_groups(boxes, owners) == expected


def test_overlap_groups_match_a_pairwise_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 9))
        xy = rng.integers(0, 20, size=(n, 2))
        wh = rng.integers(1, 8, size=(n, 2))
        boxes = [(float(x), float(y), float(x + w), float(y + h)) for (x, y), (w, h) in zip(xy, wh)]
        owners = [int(o) for o in rng.integers(0, 3, n)]
        assert grid.overlap_groups(boxes, owners) == _brute_force_groups(boxes, owners), (boxes, owners)


@pytest.mark.parametrize("height, width, size, overlap", [(31, 29, 8, 1), (20, 23, 6, 5), (13, 9, 5, 2)])
def test_owned_masks_of_grids_with_neighbours_one_pixel_short_of_a_tile(height, width, size, overlap):
    """Overlap 1: neighbouring tiles are size - 1 apart, the farthest a neighbour that still overlaps can be."""
    tiles = [(r, c, min(size, height - r), min(size, width - c))
             for r, c in grid.tile_windows(0, 0, height, width, size, overlap)]
    rows, cols, hs, ws = (np.array([t[j] for t in tiles]) for j in range(4))
    count, ours = owners_from_masks(tiles, grid.owned_masks(rows, cols, hs, ws, size), height, width)
    ref = brute_force_owner(tiles, size, height, width)
    assert np.array_equal(count, (ref >= 0).astype(int)) and np.array_equal(ours, ref)


def test_owned_masks_of_random_tiles_match_a_brute_force_owner():
    """Tiles anywhere (any order, any in-extent height and width up to the tile size), as the docstring allows."""
    rng = np.random.default_rng(1)
    size, height, width = 6, 16, 15
    for trial in range(25):
        n = int(rng.integers(2, 10))
        rows, cols = rng.integers(0, height - 1, n), rng.integers(0, width - 1, n)
        hs = np.minimum(rng.integers(1, size + 1, n), height - rows)
        ws = np.minimum(rng.integers(1, size + 1, n), width - cols)
        tiles = list(zip(rows.tolist(), cols.tolist(), hs.tolist(), ws.tolist()))
        owned = grid.owned_masks(rows, cols, hs, ws, size)
        count, ours = owners_from_masks(tiles, owned, height, width)
        ref = brute_force_owner(tiles, size, height, width)
        assert np.array_equal(count, (ref >= 0).astype(int)), trial
        assert np.array_equal(ours, ref), trial
        which = rng.permutation(n)[: max(1, n // 2)]  # a subset, in any order: each tile's mask from the reference
        part = grid.owned_masks(rows, cols, hs, ws, size, which)
        for i, k in enumerate(which):
            expect = np.zeros((size, size), bool)
            expect[: hs[k], : ws[k]] = ref[rows[k] : rows[k] + hs[k], cols[k] : cols[k] + ws[k]] == k
            assert np.array_equal(part[i], expect), (trial, k)
