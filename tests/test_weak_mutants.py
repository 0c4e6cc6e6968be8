"""Exact checks of the weak-label generators and of the classical expansion on tiny hand-made arrays, each against
an independent reference (hand-computed masks, brute force, or scipy / scikit-image called here): written to kill
the mutants of eqseg.weak.generators and eqseg.weak.expansion that the tests on real tiles let live."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic
from skimage.segmentation import watershed as skimage_watershed

from eqseg.errors import EqsegError
from eqseg.weak import expand, generate
from eqseg.weak.expansion import features, kmeans, region_growing, superpixels, watershed
from eqseg.weak.generators import (
    background_skeleton, boxes, class_boundary, coarse, interior_distance, objects, partial, points, sample_per_group,
    scribbles, tags,
)

IGNORE = 255


def _chessboard_span(pixels: np.ndarray) -> int:
    rows, cols = np.nonzero(pixels)
    return int(max(np.ptp(rows), np.ptp(cols)))


# ------------------------------------------------------------------------------------------------------ helpers
def test_class_boundary_and_interior_distance_by_hand():
    mask = np.array([[0, 0, 1],
                     [0, 0, 1],
                     [255, 0, 0]], np.uint8)
    want = np.array([[0, 1, 1],
                     [1, 1, 1],
                     [1, 1, 1]], bool)
    assert np.array_equal(class_boundary(mask), want)
    without_ignore = np.array([[0, 1, 1],
                               [0, 1, 1],
                               [0, 0, 1]], bool)  # the 0|255 edges (left column) are left out
    assert np.array_equal(class_boundary(mask, with_ignore=False), without_ignore)
    # a vertical edge between columns 3 and 4 of a 5x8 tile: taxicab depth = distance to the nearer edge column
    half = np.zeros((5, 8), np.uint8)
    half[:, 4:] = 1
    assert np.array_equal(interior_distance(half), np.tile([3, 2, 1, 0, 0, 1, 2, 3], (5, 1)))
    blob = np.zeros((9, 9), np.uint8)
    blob[4, 4] = 1  # boundary = the pixel and its 4 neighbours: taxicab (not chessboard) depth at a diagonal
    assert interior_distance(blob)[3, 3] == 1 and interior_distance(blob)[2, 2] == 3
    # no boundary at all: deeper than anything in the tile (the tile border is not a boundary)
    assert (interior_distance(np.ones((4, 6), np.uint8)) >= 10).all()


def test_objects_are_8_connected_components_per_class():
    mask = np.array([[1, 0, 0, 2],
                     [0, 1, 0, 2],
                     [0, 0, 255, 0],
                     [1, 1, 0, 255]], np.uint8)
    labels, classes = objects(mask)
    assert classes.tolist() == [1, 1, 2]
    assert labels[0, 0] == labels[1, 1] != labels[3, 0] == labels[3, 1]  # the diagonal joins, the gap does not
    assert labels[0, 3] == labels[1, 3] == 3 and (labels[mask == 0] == 0).all() and (labels[mask == 255] == 0).all()
    with_bg, classes_bg = objects(mask, with_background=True)
    assert classes_bg.tolist() == [0, 1, 1, 2]  # 255 is never a region
    assert (with_bg[mask == 0] == 1).all() and (with_bg[mask == 255] == 0).all()
    assert sorted(np.unique(with_bg).tolist()) == [0, 1, 2, 3, 4]


def test_sample_per_group_counts_and_weights():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(4), [5, 1, 3, 7])
    k = np.array([2, 3, 0, 7])
    picked = sample_per_group(group, np.ones(group.size), k, rng)
    assert len(set(picked.tolist())) == picked.size  # without replacement
    assert np.bincount(group[picked], minlength=4).tolist() == [2, 1, 0, 7]  # k[g] of each group, all if fewer
    # 4000 groups of two items weighted 1 and 9, one draw each: the heavy item wins 90 % of the time
    n = 4000
    group = np.repeat(np.arange(n), 2)
    weight = np.tile([1.0, 9.0], n)
    picked = sample_per_group(group, weight, np.ones(n, int), np.random.default_rng(1))
    assert picked.size == n and np.array_equal(np.sort(group[picked]), np.arange(n))
    assert 0.87 < (picked % 2 == 1).mean() < 0.93


def test_background_skeleton_stays_inside_its_region():
    rng = np.random.default_rng(3)
    for shape in ((33, 47), (40, 40), (21, 64)):
        region = ndi.binary_opening(ndi.gaussian_filter(rng.random(shape), 3) > 0.5, iterations=2)
        skeleton = background_skeleton(region)
        assert (skeleton <= region).all() and skeleton.any()


# ------------------------------------------------------------------------------------------------------- points
def test_all_classes_refuse_any_background_count_even_zero():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    for fn in (points, scribbles):
        with pytest.raises(EqsegError, match="background applies to regions: objects only"):
            fn(mask, np.random.default_rng(0), regions="all_classes", background=0)


def test_a_tile_without_objects_still_gets_one_background_click_and_stroke():
    empty = np.zeros((24, 24), np.uint8)
    ann = points(empty, np.random.default_rng(0))
    assert ann.effort == 1 and np.count_nonzero(ann.labels != IGNORE) == 1
    assert (ann.labels[ann.labels != IGNORE] == 0).all()
    stroke = scribbles(empty, np.random.default_rng(0))
    assert stroke.effort == 1 and (stroke.labels == 0).any()
    assert ((stroke.labels == 0) | (stroke.labels == IGNORE)).all()


def test_default_background_clicks_count_the_kept_objects_only():
    mask = np.zeros((30, 30), np.uint8)
    mask[3:9, 3:9] = 1     # 36 px
    mask[15:20, 15:20] = 1  # 25 px
    mask[25, 25] = 1        # 1 px: skipped below
    mask[27:29, 2:4] = 2    # 4 px: skipped below
    for min_pixels, want_objects in ((1, 4), (4, 3), (5, 2), (25, 2), (26, 1)):
        ann = points(mask, np.random.default_rng(0), min_region_pixels=min_pixels)
        labelled = ann.labels != IGNORE
        objs, _ = objects(mask)
        # a region of exactly min_pixels pixels counts
        assert len(np.unique(objs[labelled & (objs > 0)])) == want_objects, min_pixels
        assert np.count_nonzero(labelled & (mask == 0)) == want_objects  # background: one per kept object
        assert ann.effort == np.count_nonzero(labelled) == 2 * want_objects
    all_classes = points(mask, np.random.default_rng(0), regions="all_classes", min_region_pixels=5)
    assert all_classes.effort == 3 and np.count_nonzero(all_classes.labels == 0) == 1  # 2 squares + the background


def test_clicks_favour_deep_pixels_and_focus_zero_is_uniform():
    """One object of 3x101 pixels surrounded by background: the middle row is the deep one (depth 1 vs 0)."""
    mask = np.zeros((5, 103), np.uint8)
    mask[1:4, 1:102] = 1
    rows = {focus: [] for focus in (0.0, 2.0, 6.0)}
    for seed in range(300):
        for focus in rows:
            labels = points(mask, np.random.default_rng(seed), focus=focus, background=0).labels
            rows[focus].append(np.nonzero(labels == 1)[0][0])
    middle = {focus: np.mean(np.array(r) == 2) for focus, r in rows.items()}
    # weights (depth + 1) ** focus; depth 1 on the 99 inner pixels of row 2, 0 on the 204 others:
    # P(middle) = 99 * 2 ** f / (99 * 2 ** f + 204) = 0.33, 0.66, 0.97 for f = 0, 2, 6
    assert 0.25 < middle[0.0] < 0.42 and 0.58 < middle[2.0] < 0.74 and middle[6.0] > 0.9


# ---------------------------------------------------------------------------------------------------- scribbles
def test_scribble_strokes_are_length_long_and_stay_in_their_object():
    """A 9x200 object filling the tile: its skeleton is a long line, a stroke the part of it within length / 2."""
    mask = np.ones((9, 200), np.uint8)
    spans = []
    for seed in range(12):
        ann = scribbles(mask, np.random.default_rng(seed), length=20, background=0)
        assert ann.effort == 1
        spans.append(_chessboard_span(ann.labels == 1))
    assert max(spans) == 20 and min(spans) >= 10


def test_width_widens_strokes_by_an_exact_disc():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:25, 5:45] = 1
    thin = scribbles(mask, np.random.default_rng(5), background=0).labels
    stroke = thin == 1
    for width in (3, 5):
        wide = scribbles(mask, np.random.default_rng(5), background=0, width=width).labels
        want = (ndi.distance_transform_edt(~stroke) <= (width - 1) / 2) & (mask == 1)
        assert np.array_equal(wide == 1, want), width
        assert ((wide == 1) | (wide == IGNORE)).all()


def test_scribbles_keep_a_dot_for_objects_erosion_removes_and_skip_small_ones():
    mask = np.zeros((30, 30), np.uint8)
    mask[4:14, 4:14] = 1    # survives erosion 2
    mask[20:23, 20:23] = 2  # 3x3: eroded away, gets a dot at its deepest pixel (its centre)
    mask[26, 5] = 1         # 1 px, skipped with min_region_pixels 2
    ann = scribbles(mask, np.random.default_rng(0), background=0, min_region_pixels=2)
    assert ann.effort == 2
    assert np.argwhere(ann.labels == 2).tolist() == [[21, 21]]
    assert (ann.labels[4:14, 4:14] == 1).any() and ann.labels[26, 5] == IGNORE
    assert ((ann.labels == mask) | (ann.labels == IGNORE)).all()


def test_scribbles_all_classes_strokes_count_per_region():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 1
    mask[5:15, 25:35] = 2
    mask[30:, :] = IGNORE
    ann = scribbles(mask, np.random.default_rng(0), regions="all_classes", per_object=2)
    assert ann.effort == 6  # 3 regions (0, 1 around the square, 2), 2 strokes each
    for c in (0, 1, 2):
        assert (ann.labels == c).any()
    assert ((ann.labels == mask) | (ann.labels == IGNORE)).all() and (ann.labels[30:] == IGNORE).all()


# -------------------------------------------------------------------------------------------------------- boxes
def test_boxes_on_a_tile_without_objects():
    mask = np.zeros((10, 12), np.uint8)
    mask[8:, :] = IGNORE
    ann = boxes(mask, np.random.default_rng(0), jitter=3)
    assert ann.effort == 0 and np.array_equal(ann.labels, mask)


def test_box_jitter_loosens_each_side_by_0_to_jitter_within_the_tile():
    mask = np.zeros((30, 30), np.uint8)
    mask[10:15, 12:18] = 1
    mask[25:, 26:] = 2  # touches the bottom-right corner of the tile
    seen = set()
    for seed in range(40):
        labels = boxes(mask, np.random.default_rng(seed), jitter=2).labels
        assert (labels[mask == 1] == 1).all() and (labels[mask == 2] == 2).all()  # boxes always contain their objects
        rows, cols = np.nonzero(labels == 1)
        assert np.array_equal(labels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 1, np.ones(
            (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), bool))  # a filled rectangle
        seen |= {("top", 10 - rows.min()), ("bottom", rows.max() - 14)}
        seen |= {("left", 12 - cols.min()), ("right", cols.max() - 17)}
        r2, c2 = np.nonzero(labels == 2)
        assert r2.max() == 29 and c2.max() == 29 and 23 <= r2.min() <= 25 and 24 <= c2.min() <= 26
    assert seen == {(side, d) for side in ("top", "bottom", "left", "right") for d in (0, 1, 2)}


def test_jittered_boxes_never_label_padding():
    mask = np.zeros((20, 20), np.uint8)
    mask[12:16, 5:9] = 1
    mask[16:, :] = IGNORE  # the object touches the padding
    mask[:, 17:] = IGNORE
    mask[3:6, 14:17] = 1   # touches the padding on its right
    for seed in range(10):
        for inside in ("class", "unknown"):
            labels = boxes(mask, np.random.default_rng(seed), inside=inside, jitter=3).labels
            assert (labels[mask == IGNORE] == IGNORE).all()
            assert ((labels == mask) | (labels == IGNORE) | ((labels == 1) & (mask == 0))).all()


def test_overlapping_boxes_by_hand():
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1] = mask[4, 4] = 1  # one class-1 object ...
    mask[2, 2] = mask[3, 3] = 1
    mask[3, 5] = mask[4, 5] = mask[5, 4] = mask[5, 3] = 2  # ... crossed by a class-2 one
    # boxes [1:5, 1:5] (class 1) and [3:6, 3:6] (class 2), unknown where they overlap
    want = np.zeros((8, 8), np.uint8)
    want[1:5, 1:5] = 1
    want[3:6, 3:6] = 2
    want[3:5, 3:5] = IGNORE
    assert np.array_equal(boxes(mask, np.random.default_rng(0)).labels, want)
    unknown = np.where(want > 0, IGNORE, 0)
    assert np.array_equal(boxes(mask, np.random.default_rng(0), inside="unknown").labels, unknown)


# ------------------------------------------------------------------------------------------------------- coarse
def _coarse_reference(mask: np.ndarray, factor: int, oy: int, ox: int) -> tuple[np.ndarray, int]:
    """Majority label (ties: lowest class) of each factor x factor cell of a grid offset by (oy, ox), by loops."""
    h, w = mask.shape
    out = np.full(mask.shape, IGNORE, np.uint8)
    cells = 0
    for top in range(-oy, h, factor):
        for left in range(-ox, w, factor):
            r0, c0 = max(top, 0), max(left, 0)
            block = mask[r0 : top + factor, c0 : left + factor]
            values = block[block != IGNORE]
            if values.size == 0:
                continue
            cells += 1
            counts = np.bincount(values)
            out[r0 : top + factor, c0 : left + factor] = int(np.flatnonzero(counts == counts.max())[0])
    out[mask == IGNORE] = IGNORE
    return out, cells


def test_coarse_is_the_majority_of_a_randomly_offset_grid():
    rng = np.random.default_rng(0)
    mask = (ndi.zoom(rng.integers(0, 3, (5, 6)), 3, order=0)[:14, :17]).astype(np.uint8)
    mask[12:, :] = IGNORE
    mask[:, 15:] = IGNORE
    mask[0, 0], mask[0, 1], mask[1, 0], mask[1, 1] = 2, 1, 2, 1  # a 2-2 tie somewhere once the grid is at (0, 0)
    factor = 3
    references = {(oy, ox): _coarse_reference(mask, factor, oy, ox) for oy in range(factor) for ox in range(factor)}
    offsets = set()
    for seed in range(30):
        ann = coarse(mask, np.random.default_rng(seed), factor=factor, band=0)
        found = [o for o, (ref, cells) in references.items() if np.array_equal(ann.labels, ref) and ann.effort == cells]
        assert found, seed
        offsets |= set(found)
    assert {oy for oy, _ in offsets} == {0, 1, 2} and {ox for _, ox in offsets} == {0, 1, 2}  # every offset occurs


def test_coarse_band_is_band_pixels_each_side_of_class_edges_only():
    mask = np.zeros((24, 16), np.uint8)
    mask[:, 8:] = 1
    mask[16:, :] = IGNORE  # two cells deep: the padding edge is not a class edge
    for band in (1, 2, 3):
        for seed in range(4):
            labels = coarse(mask, np.random.default_rng(seed), factor=4, band=band).labels
            assert (labels[16:] == IGNORE).all()
            unknown_cols = np.flatnonzero((labels[:16] == IGNORE).all(axis=0))
            assert ((labels[:16] == IGNORE).any(axis=0) == (labels[:16] == IGNORE).all(axis=0)).all()  # whole columns
            assert unknown_cols.size == 2 * band and np.ptp(unknown_cols) == 2 * band - 1
            assert set(np.unique(labels[:16, : unknown_cols[0]])) == {0}
            assert set(np.unique(labels[:16, unknown_cols[-1] + 1 :])) == {1}
    default = coarse(mask, np.random.default_rng(0), factor=4).labels
    # band defaults to factor // 2
    assert np.array_equal(default, coarse(mask, np.random.default_rng(0), factor=4, band=2).labels)


# ---------------------------------------------------------------------------------------------------- tags, partial
def test_tags_count_pixels_per_class_at_the_threshold():
    mask = np.zeros((6, 6), np.uint8)
    mask[0, :3] = 3      # 3 px
    mask[1, :2] = 7      # 2 px
    mask[2, 0] = 254     # 1 px: the highest class id there is
    mask[5, :] = IGNORE
    assert tags(mask, np.random.default_rng(0)).labels.tolist() == [0, 3, 7, 254]
    assert tags(mask, np.random.default_rng(0), min_pixels=3).labels.tolist() == [0, 3]
    assert tags(mask, np.random.default_rng(0), min_pixels=2).effort == 3


def test_partial_keeps_round_fraction_of_tiles_at_least_one():
    masks = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    ids = np.arange(10)
    for fraction, n in ((0.01, 1), (0.15, 2), (0.38, 4), (0.7, 7), (1.0, 10)):
        ann = partial(masks, ids, 0, fraction)
        kept = [i for i in range(10) if np.array_equal(ann.labels[i], masks[i])]
        assert len(kept) == ann.effort == n and (np.delete(ann.labels, kept, axis=0) == IGNORE).all(), fraction


def test_partial_depends_on_seed_and_tile_ids_as_documented():
    """The tiles kept are those with the smallest keys default_rng((seed, tile id)).random()."""
    masks = np.arange(20, dtype=np.uint8)[:, None, None] * np.ones((1, 3, 3), np.uint8)
    ids = np.arange(500, 520)
    chosen = {}
    for seed in range(4):
        ann = partial(masks, ids, seed, 0.2)
        chosen[seed] = {i for i in range(20) if (ann.labels[i] != IGNORE).all()}
        keys = [np.random.default_rng((seed, int(t))).random() for t in ids]
        assert chosen[seed] == set(np.argsort(keys)[:4].tolist())
        assert chosen[seed] == {i for i in range(20) if (partial(masks, ids, seed, 0.2).labels[i] != IGNORE).all()}
    assert len({frozenset(c) for c in chosen.values()}) == 4  # another seed, other tiles
    shifted = partial(masks, ids + 1000, 0, 0.2)
    assert {i for i in range(20) if (shifted.labels[i] != IGNORE).all()} != chosen[0]  # keys follow the tile ids


# ---------------------------------------------------------------------------------------------------- expansion
def test_features_standardise_every_band_and_leave_constant_bands_at_zero():
    rng = np.random.default_rng(0)
    bands = [rng.integers(0, 255, (6, 7)), np.full((6, 7), 9), rng.integers(0, 4000, (6, 7))]
    image = np.stack(bands).astype(np.uint16)
    feat = features(image)
    assert feat.shape == (6, 7, 3) and feat.dtype == np.float32 and np.isfinite(feat).all()
    assert np.allclose(feat.mean(axis=(0, 1)), 0, atol=1e-5)
    assert np.allclose(feat.std(axis=(0, 1)), [1, 0, 1], atol=1e-5)
    manual = (image[0] - image[0].mean()) / image[0].std()
    assert np.allclose(feat[..., 0], manual, atol=1e-5)


def test_expansions_ignore_the_scale_of_the_image_and_constant_bands():
    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(rng.random((2, 24, 24)), 2)
    labels = np.full((24, 24), IGNORE, np.uint8)
    labels[3, 3], labels[20, 20], labels[5, 18] = 0, 1, 1
    for method in ("region_growing", "watershed", "superpixels"):
        ref = expand(image, labels, method)
        assert np.array_equal(expand(image * 1000.0 + 7.0, labels, method), ref), method
        assert np.array_equal(expand(np.concatenate([image, np.full((1, 24, 24), 3.0)]), labels, method), ref), method
    with pytest.raises(EqsegError, match="uint8"):
        expand(image, labels.astype(np.int64), "none")


def _grow_1d(values: np.ndarray, threshold: float, steps: int) -> int:
    """Brute force Adams-Bischof on a 1 x N ramp seeded at pixel 0: how many pixels the region ends with."""
    region = [0]
    for _ in range(steps):
        nxt = len(region)
        if nxt == values.size or abs(values[nxt] - np.mean(values[region])) > threshold:
            break
        region.append(nxt)
    return len(region)


def test_region_growing_follows_its_running_mean_one_ring_per_step():
    values = (np.arange(30, dtype=np.float64) ** 1.5) / 10
    feat = values[None, :, None]
    labels = np.full((1, 30), IGNORE, np.uint8)
    labels[0, 0] = 1
    for threshold in (0.5, 1.0, 2.0, 4.0):
        for steps in (1, 3, 64):
            grown = region_growing(feat, labels, threshold=threshold, max_steps=steps)
            n = _grow_1d(values, threshold, steps)
            assert np.array_equal(grown[0], np.r_[np.ones(n), np.full(30 - n, IGNORE)]), (threshold, steps)


def test_region_growing_rings_and_competition_by_hand():
    feat = np.zeros((7, 7, 1))
    labels = np.full((7, 7), IGNORE, np.uint8)
    labels[3, 3] = 2
    yy, xx = np.mgrid[:7, :7]
    taxicab = np.abs(yy - 3) + np.abs(xx - 3)
    for steps in (1, 2, 3):
        assert np.array_equal(region_growing(feat, labels, max_steps=steps) == 2, taxicab <= steps)
    # two seeds on a step edge: the threshold is in feature units, a pixel joins the nearer mean
    feat = np.zeros((3, 8, 1))
    feat[:, 4:] = 2.0
    labels = np.full((3, 8), IGNORE, np.uint8)
    labels[1, 0], labels[1, 7] = 0, 1
    grown = region_growing(feat, labels, threshold=1.0)
    assert (grown[:, :4] == 0).all() and (grown[:, 4:] == 1).all()
    one_seed = labels.copy()
    one_seed[1, 7] = IGNORE
    assert (region_growing(feat, one_seed, threshold=1.9)[:, 4:] == IGNORE).all()
    assert (region_growing(feat, one_seed, threshold=2.1) == 0).all()


def test_watershed_meets_on_the_edge_of_any_band_and_compactness_pulls_to_the_middle():
    image = np.zeros((2, 16, 16), np.float32)
    image[1, :, 4:] = 1.0  # an edge in the second band only
    labels = np.full((16, 16), IGNORE, np.uint8)
    labels[:, 0], labels[:, 15] = 0, 1
    out = expand(image, labels, "watershed")
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 1).all()
    compact = expand(image, labels, "watershed", compactness=1e3)
    assert (compact[:, :8] == 0).all() and (compact[:, 8:] == 1).all()
    assert np.array_equal(watershed(features(image), np.full((16, 16), IGNORE, np.uint8)), np.full((16, 16), IGNORE))


@pytest.mark.parametrize("compactness", [0.0, 0.1])
def test_watershed_floods_the_sobel_magnitude_of_all_bands_as_skimage_does(compactness):
    rng = np.random.default_rng(4)
    feat = features(ndi.gaussian_filter(rng.random((3, 32, 32)), (0, 1.5, 1.5)))
    labels = np.full((32, 32), IGNORE, np.uint8)
    idx = rng.choice(32 * 32, 12, replace=False)
    labels.flat[idx] = rng.integers(0, 3, idx.size)
    magnitude = np.sqrt(sobel(feat[..., 0]) ** 2 + sobel(feat[..., 1]) ** 2 + sobel(feat[..., 2]) ** 2)
    markers = np.where(labels == IGNORE, 0, labels.astype(np.int32) + 1)
    want = skimage_watershed(magnitude, markers, compactness=compactness) - 1
    assert np.array_equal(watershed(feat, labels, compactness=compactness), want)


@pytest.mark.parametrize("algorithm", ["slic", "felzenszwalb"])
def test_superpixels_vote_by_majority_against_skimage_segments(algorithm):
    rng = np.random.default_rng(2)
    image = ndi.gaussian_filter(rng.random((3, 32, 32)), (0, 2, 2))
    feat = features(image)
    labels = np.full((32, 32), IGNORE, np.uint8)
    idx = rng.choice(32 * 32, 60, replace=False)
    labels.flat[idx] = rng.integers(0, 3, idx.size)
    if algorithm == "slic":
        segments = slic(feat, n_segments=32 * 32 // 64, compactness=0.3, channel_axis=-1, convert2lab=False,
                        start_label=0)
    else:
        segments = felzenszwalb(feat, scale=100.0, channel_axis=-1)
    labels[segments == segments[0, 0]] = IGNORE  # one segment without any label
    labels[segments == segments[31, 31]] = IGNORE
    first = np.flatnonzero(segments.ravel() == segments[31, 31])[:4]
    labels.flat[first] = [2, 1, 2, 1]  # a 2-2 tie: the lowest class wins
    want = np.full(labels.shape, IGNORE, np.uint8)
    for s in np.unique(segments):
        votes = labels[(segments == s) & (labels != IGNORE)]
        if votes.size:
            counts = np.bincount(votes)
            want[segments == s] = np.flatnonzero(counts == counts.max())[0]
    want = np.where(labels != IGNORE, labels, want)  # labelled pixels keep their label
    got = superpixels(feat, labels, algorithm=algorithm)
    assert np.array_equal(got, want)
    tied = segments == segments[31, 31]
    assert (got[segments == segments[0, 0]] == IGNORE).all() and (got[tied & (labels == IGNORE)] == 1).all()


def _kmeans_reference(feat: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """Two-means per box region by plain loops (centres: region mean, mean of the label-0 pixels)."""
    regions, _ = ndi.label((labels != 0) & (labels != IGNORE), structure=np.ones((3, 3)))  # one class here
    background = feat[labels == 0].mean(axis=0)
    solid = np.zeros(labels.shape, bool)
    for r in range(1, regions.max() + 1):
        pos = np.argwhere(regions == r)
        x = feat[regions == r]
        obj, bg = x.mean(axis=0), background.copy()
        for _ in range(iterations):
            is_obj = np.array([np.linalg.norm(p - obj) <= np.linalg.norm(p - bg) for p in x])
            obj = x[is_obj].mean(axis=0) if is_obj.any() else obj
            bg = x[~is_obj].mean(axis=0) if (~is_obj).any() else bg
        solid[tuple(pos[is_obj].T)] = True
    solid = ndi.binary_fill_holes(solid) & (regions > 0)
    return np.where(solid | (regions == 0), labels, 0).astype(np.uint8)


def test_kmeans_against_plain_lloyd_iterations_and_filled_holes():
    labels = np.zeros((12, 14), np.uint8)
    labels[1:10, 1:10] = 1
    labels[:, 12:] = IGNORE  # padding stays unlabelled
    yy, xx = np.mgrid[:12, :14]
    disc = (yy - 5) ** 2 + (xx - 5) ** 2 <= 12
    feat = np.zeros((12, 14, 1))
    feat[disc] = 5.0
    feat[5, 5] = 0.0                              # a background-like hole in the object: still object
    corners = ~disc[1:10, 1:10]
    feat[1:10, 1:10][corners] = np.linspace(0.2, 3.4, corners.sum())[:, None]  # the box's corners: a ramp
    feat[labels == 0] = -0.5
    for iterations in (1, 2, 10):
        got = kmeans(feat, labels, iterations=iterations)
        assert np.array_equal(got, _kmeans_reference(feat, labels, iterations)), iterations
        assert got[5, 5] == 1 and (got[disc] == 1).all() and (got[:, 12:] == IGNORE).all()
    assert not np.array_equal(kmeans(feat, labels, iterations=1), kmeans(feat, labels, iterations=10))
    # every box pixel is nearer the object centre at first: the background side is empty and keeps its centre
    feat = np.ones((10, 10, 1))
    feat[:, 2] = 0.0  # the box's left column: object-like next to a far background, background-like next to 0
    feat[labels[:10, :10] == 0] = 10.0
    got = kmeans(feat, labels[:10, :10], iterations=5)
    assert np.array_equal(got, labels[:10, :10]) and np.array_equal(got, _kmeans_reference(feat, labels[:10, :10], 5))
    whole = np.ones((6, 6), np.uint8)  # a box covering the tile: no background to compare with, unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for iterations in (1, 10):
            got = kmeans(np.random.default_rng(0).random((6, 6, 2)), whole, iterations=iterations)
            assert np.array_equal(got, whole)


def test_an_even_scribble_width_is_refused_in_one_line():
    """A stroke is a disc centred on its skeleton, so it is 1, 3, 5 ... pixels across: width 2 used to draw exactly
    what width 1 draws. Refused by the generator and by the params schema, naming the option."""
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError
    from eqseg.weak.generators import scribbles

    m = np.zeros((20, 20), np.uint8)
    m[3:17, 3:17] = 1
    with pytest.raises(EqsegError, match=r"^weak.scribbles: width must be odd \(a stroke is centred on its skeleton\), got 2$"):
        scribbles(m, np.random.default_rng(0), width=2)
    labelled = [int((scribbles(m, np.random.default_rng(0), width=w).labels != 255).sum()) for w in (1, 3)]
    assert labelled[1] > labelled[0]
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["weak"]["options"] = {"scribbles": {"width": 2}}
    with pytest.raises(EqsegError, match=r"weak.options.scribbles.width: must be odd \(a stroke is centred on its skeleton\) \(got 2\)$"):
        parse_params(raw)
