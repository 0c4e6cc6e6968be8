"""Hand-made mutation testing of eqseg.data.normalise: tests that kill the mutants the other normalise tests let
survive. Every expected number is computed by hand (small cases, written out) or by plain numpy in the test,
never by eqseg itself."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from eqseg.data import normalise as norm
from eqseg.errors import EqsegError


class _Store:
    """What normalise reads of a TileStore: images, index (tile_id, source), counted(ids), meta, path."""

    def __init__(self, images: np.ndarray, sources: list[str], counted: np.ndarray, order=None):
        order = np.arange(len(images)) if order is None else np.asarray(order)
        self.images, self._counted, self.path = images, counted, Path("fake-store")
        self.index = pd.DataFrame({"tile_id": order, "source": [sources[i] for i in order]})
        self.meta = SimpleNamespace(band_mean=(7.0, 8.0), band_std=(2.0, 4.0))

    def counted(self, ids) -> np.ndarray:
        return self._counted[np.asarray(ids)]


# ----------------------------------------------------------------------------------------------- normalise
def test_normalise_of_a_hand_computed_tile():
    # band 0: (0, 10) with mean 5, std 5 -> (-1, 1); band 1: (4, 8) with mean 6, std 2 -> (-1, 1)
    x = np.array([[[[0, 10]], [[4, 8]]]], dtype=np.uint8)
    out = norm.normalise(x, [5.0, 6.0], [5.0, 2.0])
    assert out.dtype == np.float32 and out.shape == (1, 2, 1, 2)
    assert out.tolist() == [[[[-1.0, 1.0]], [[-1.0, 1.0]]]]


# ---------------------------------------------------------------------------------------------- pixel_sums
def test_pixel_sums_of_a_hand_computed_tile():
    # one tile, two bands, 2 x 2 pixels: band 0 = 1 2 / 3 4, band 1 = 10 x band 0
    b0 = np.array([[1, 2], [3, 4]])
    x = np.stack([b0, 10 * b0])[None].astype(np.uint16)
    assert norm.pixel_sums(x, None, 1).tolist() == [[4, 4], [10, 100], [30, 3000]]
    diag = np.array([[[True, False], [False, True]]])  # pixels 1 and 4
    assert norm.pixel_sums(x, diag, 1).tolist() == [[2, 2], [5, 50], [17, 1700]]
    assert norm.pixel_sums(x, None).tolist() == [[1, 1], [1, 10], [1, 100]]  # step 2: the top-left pixel only
    assert norm.pixel_sums(x, ~diag, 1).tolist() == [[2, 2], [5, 50], [13, 1300]]  # pixels 2 and 3


def test_pixel_sums_of_an_empty_mask_and_of_large_values_are_exact():
    x = np.full((2, 3, 4, 4), 65535, np.uint16)
    assert norm.pixel_sums(x, np.zeros((2, 4, 4), bool)).tolist() == [[0.0] * 3] * 3
    s = norm.pixel_sums(x, None, 1)  # 32 pixels of 65535: no uint16 overflow, float64 exact
    assert s.dtype == np.float64
    assert s.tolist() == [[32] * 3, [32 * 65535] * 3, [32 * 65535**2] * 3]


# ------------------------------------------------------------------------------------------------ Normaliser
@pytest.mark.parametrize("mode", ["train", "dataset"])
def test_stats_outside_mode_image_are_mean_then_std_whatever_the_source(mode):
    n = norm.Normaliser(mode, [1.0, 2.0], [3.0, 4.0], per_source={"a": ([9.0, 9.0], [9.0, 9.0])})
    assert n.stats() == ([1.0, 2.0], [3.0, 4.0])
    assert n.stats("a") == ([1.0, 2.0], [3.0, 4.0])  # per_source is mode image's only


def test_mode_image_normalises_a_first_tile_whose_source_appears_once():
    """The first tile's source appears nowhere else in the batch: it must still be normalised (a loop that skipped
    it would return uninitialised memory for it)."""
    raw = np.zeros((3, 1, 1, 2), np.uint8)
    raw[0, 0, 0] = (10, 30)
    raw[1, 0, 0] = (5, 7)
    raw[2, 0, 0] = (1, 9)
    n = norm.Normaliser("image", [0.0], [1.0], per_source={"a": ([20.0], [10.0]), "b": ([5.0], [2.0])})
    for names in (["a", "b", "b"], ("a", "b", "b")):
        out = n(raw, names)
        # a: (10 - 20) / 10, (30 - 20) / 10; b: (5 - 5) / 2, (7 - 5) / 2; (1 - 5) / 2, (9 - 5) / 2
        assert out.tolist() == [[[[-1.0, 1.0]]], [[[0.0, 1.0]]], [[[-2.0, 2.0]]]]
    assert n(raw[:1], "a").tolist() == [[[[-1.0, 1.0]]]]
    assert n(raw[:1], ["a"]).tolist() == [[[[-1.0, 1.0]]]]


def test_record_lists_sources_sorted_with_their_own_mean_and_std():
    per_source = {"c": ([3.0], [30.0]), "a": ([1.0], [10.0]), "b": ([2.0], [20.0])}  # inserted unsorted
    rec = norm.Normaliser("image", [0.0], [1.0], per_source=per_source).record
    assert list(rec["sources"]) == ["a", "b", "c"]  # metrics files list sources in one fixed order
    assert rec == {"mode": "image", "sources": {"a": {"mean": [1.0], "std": [10.0]}, "b": {"mean": [2.0], "std": [20.0]},
                                                "c": {"mean": [3.0], "std": [30.0]}}}
    assert norm.Normaliser("dataset", [1.0], [2.0]).record == {"mode": "dataset", "mean": [1.0], "std": [2.0]}
    stain = SimpleNamespace(record={"method": "reinhard"})
    assert norm.Normaliser("train", [1.0], [2.0], stain=stain).record == {
        "mode": "train", "mean": [1.0], "std": [2.0], "stain": {"method": "reinhard"}}


# ---------------------------------------------------------------------------------------- source_statistics
def _hand_store() -> _Store:
    """Two sources of one-band 2 x 2 tiles, every pixel counted except where marked; step 2 reads pixel (0, 0).

    Source "p": tiles 0 and 2 with top-left values 2 and 6 -> mean 4, std 2. Source "q": tiles 1, 3, 4 with
    top-left values 1, 1, 7 -> mean 3, variance (4 + 4 + 16) / 3 = 8. Tile 5 ("q") has its top-left pixel not
    counted, and a top-left value 100 that must not count."""
    tl = [2, 1, 6, 1, 7, 100]
    images = np.full((6, 1, 2, 2), 50, np.uint8)
    images[:, 0, 0, 0] = tl
    counted = np.ones((6, 2, 2), bool)
    counted[5, 0, 0] = False
    return _Store(images, ["p", "q", "p", "q", "q", "q"], counted, order=[4, 1, 5, 0, 3, 2])


@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_source_statistics_of_a_hand_computed_store(chunk):
    stats = norm.source_statistics(_hand_store(), chunk=chunk)
    assert list(stats) == ["p", "q"]
    assert stats["p"][0] == pytest.approx([4.0], abs=1e-12) and stats["p"][1] == pytest.approx([2.0 + 1e-6], abs=1e-12)
    assert stats["q"][0] == pytest.approx([3.0], abs=1e-12)
    assert stats["q"][1] == pytest.approx([math.sqrt(8.0) + 1e-6], abs=1e-12)
    assert list(norm.source_statistics(_hand_store(), ["q"], chunk=chunk)) == ["q"]


def test_source_statistics_lists_many_sources_in_sorted_order():
    names = [f"s{k:02d}" for k in range(16)]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 1, 2, 2)).astype(np.uint8)
    store = _Store(images, names[::-1], np.ones((16, 2, 2), bool), order=rng.permutation(16))
    stats = norm.source_statistics(store)
    assert list(stats) == names
    rec = norm.for_store("image", ([0.0], [1.0]), store).record
    assert list(rec["sources"]) == names


def test_for_store_image_with_named_sources_and_its_fallback_statistics():
    store = _hand_store()
    n = norm.for_store("image", ((1.0,), (2.0,)), store, ["p"])
    assert (n.mode, n.mean, n.std, list(n.per_source)) == ("image", [1.0], [2.0], ["p"])
    raw = np.array([[[[4, 8]]]], np.uint8)  # (4 - 4) / 2, (8 - 4) / 2 with p's statistics
    assert np.allclose(n(raw, "p"), [[[[0.0, 2.0]]]], atol=1e-5)
    with pytest.raises(EqsegError, match=r"no statistics for source 'q'"):
        n(raw, "q")


# -------------------------------------------------------------------------------------- stained_statistics
def test_stained_statistics_of_a_hand_computed_store():
    """Tiles by id 0..5 with top-left values 2, 1, 6, 1, 7, 100 (tile 5's not counted); stain doubles each value.
    limit 3: the lowest ids 0, 1, 2 -> doubled 4, 2, 12: mean 6, variance (4 + 16 + 36) / 3."""
    store = _hand_store()
    stain = lambda x: np.asarray(x).astype(np.int64) * 2  # noqa: E731
    for chunk in (1, 2, 32):
        mean, std = norm.stained_statistics(store, [5, 2, 4, 0, 3, 1], stain, limit=3, chunk=chunk)
        assert mean == pytest.approx([6.0], abs=1e-12) and std == pytest.approx([math.sqrt(56 / 3) + 1e-6], abs=1e-12)
    mean, std = norm.stained_statistics(store, [5, 2, 4, 0, 3, 1], stain)  # limit 256: all, tile 5 not counted
    vals = np.array([2, 1, 6, 1, 7]) * 2.0
    assert mean == pytest.approx([vals.mean()], abs=1e-12)
    assert std == pytest.approx([math.sqrt(((vals - vals.mean()) ** 2).mean()) + 1e-6], abs=1e-12)


# --------------------------------------------------------------------------------------- for_source_pixels
def test_for_source_pixels_from_hand_computed_sums():
    # two bands over 4 pixels: band 0 sums 10, squares 30 -> mean 2.5, var 7.5 - 6.25; band 1: 20, 120 -> 5, var 5
    sums = np.array([[4.0, 4.0], [10.0, 20.0], [30.0, 120.0]])
    mean, std = [2.5, 5.0], [math.sqrt(1.25) + 1e-6, math.sqrt(5.0) + 1e-6]
    n = norm.for_source_pixels("dataset", ((0.0, 0.0), (1.0, 1.0)), "scene", sums)
    assert n.mode == "dataset" and n.per_source == {}
    assert n.mean == pytest.approx(mean, abs=1e-12) and n.std == pytest.approx(std, abs=1e-12)
    assert n.record["mean"] == pytest.approx(mean, abs=1e-12)
    n = norm.for_source_pixels("image", ((0.0, 0.0), (1.0, 1.0)), "scene", sums)
    assert n.mode == "image" and (n.mean, n.std) == ([0.0, 0.0], [1.0, 1.0]) and list(n.per_source) == ["scene"]
    assert n.stats("scene")[0] == pytest.approx(mean, abs=1e-12) and n.stats("scene")[1] == pytest.approx(std, abs=1e-12)
    n = norm.for_source_pixels("train", ((9.0, 8.0), (7.0, 6.0)), "scene", sums)
    assert (n.mode, n.mean, n.std, n.per_source) == ("train", [9.0, 8.0], [7.0, 6.0], {})


def test_store_statistics_are_the_meta_lists():
    store = _hand_store()
    assert norm.store_statistics(store) == ([7.0, 8.0], [2.0, 4.0])
    n = norm.for_store("dataset", ((0.0,), (1.0,)), store)
    assert (n.mode, n.mean, n.std) == ("dataset", [7.0, 8.0], [2.0, 4.0])


def test_source_statistics_do_not_depend_on_the_index_row_order():
    """Float tiles whose float64 sums round differently in another order (2**53 + 1 rounds back to 2**53): the
    statistics are those of the tiles taken by id, whatever the order of the index's rows, bit for bit (one
    store, rebuilt with its index shuffled, must give the same inputs)."""
    big = 2.0**53
    images = np.array([big, 1.0, 1.0, -big]).reshape(4, 1, 1, 1)
    counted = np.ones((4, 1, 1), bool)
    # by id, one tile a chunk: ((2**53 + 1) + 1) - 2**53 = 0 (each +1 is rounded away); 1 + 1 + 2**53 - 2**53 = 2
    by_id = norm.source_statistics(_Store(images, ["s"] * 4, counted), chunk=1)
    assert by_id["s"][0] == [0.0]
    for order in ([1, 2, 0, 3], [3, 2, 1, 0], [2, 1, 3, 0]):
        assert norm.source_statistics(_Store(images, ["s"] * 4, counted, order=order), chunk=1) == by_id, order
