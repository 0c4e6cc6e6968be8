"""Every pixel counted once: tile ownership against a brute-force reference, and scores over tiles of a real scene
whose size is not a multiple of the tile (edge tiles shifted back inside it, so tiles overlap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eqseg.config import GeoTiffDataset, Scene, SplitConfig, TileConfig
from eqseg.data.normalise import Normaliser, pixel_sums, source_statistics
from eqseg.inference import confusion_on
from eqseg.labels import IGNORE
from eqseg.tiling import grid
from eqseg.tiling.store import TileStore, band_moments, build_tile_store

SPACENET = Path(__file__).resolve().parents[1] / "data" / "spacenet_atlanta"


def brute_force_owner(tiles: list[tuple[int, int, int, int]], size: int, height: int, width: int) -> np.ndarray:
    """Owner index of every scene pixel (-1: no tile covers it), pixel by pixel: the covering tile whose window
    centre is nearest, ties to the lower index."""
    owner = np.full((height, width), -1)
    for y in range(height):
        for x in range(width):
            best = None
            for k, (r, c, h, w) in enumerate(tiles):
                if r <= y < r + h and c <= x < c + w:
                    d = (y + 0.5 - (r + size / 2)) ** 2 + (x + 0.5 - (c + size / 2)) ** 2
                    if best is None or d < best[0]:
                        best = (d, k)
            if best is not None:
                owner[y, x] = best[1]
    return owner


def owners_from_masks(tiles, owned: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """From owned masks back to the scene: how many tiles own each pixel, and which (the last one, -1: none)."""
    count = np.zeros((height, width), int)
    ours = np.full((height, width), -1)
    for k, (r, c, h, w) in enumerate(tiles):
        assert not owned[k, h:].any() and not owned[k, :, w:].any()  # padding is never owned
        count[r : r + h, c : c + w] += owned[k, :h, :w]
        ours[r : r + h, c : c + w][owned[k, :h, :w]] = k
    return count, ours


@pytest.mark.parametrize("height, width, size, overlap, drop", [
    (45, 37, 16, 0, ()), (45, 37, 16, 4, ()), (40, 40, 16, 0, ()), (45, 37, 16, 4, (1, 4)), (12, 37, 16, 0, (0,)),
])
def test_owned_masks_match_a_brute_force_owner_and_cover_each_pixel_once(height, width, size, overlap, drop):
    tiles = [(r, c, min(size, height - r), min(size, width - c))
             for r, c in grid.tile_windows(0, 0, height, width, size, overlap)]
    tiles = [t for k, t in enumerate(tiles) if k not in drop]
    rows, cols, hs, ws = (np.array([t[j] for t in tiles]) for j in range(4))
    owned = grid.owned_masks(rows, cols, hs, ws, size)
    count, ours = owners_from_masks(tiles, owned, height, width)
    ref = brute_force_owner(tiles, size, height, width)
    covered = ref >= 0
    assert np.array_equal(count, covered.astype(int))  # each covered pixel exactly once, nothing else
    assert np.array_equal(ours, ref)


def test_owned_masks_of_a_subset_equal_those_of_all():
    tiles = grid.tile_windows(0, 0, 70, 50, 16, 4)
    rows, cols = np.array([t[0] for t in tiles]), np.array([t[1] for t in tiles])
    hs, ws = np.minimum(16, 70 - rows), np.minimum(16, 50 - cols)
    every = grid.owned_masks(rows, cols, hs, ws, 16)
    assert np.array_equal(grid.owned_masks(rows, cols, hs, ws, 16, np.array([3, 7])), every[[3, 7]])


@pytest.fixture(scope="module")
def spacenet_store(tmp_path_factory):
    """The 900 x 900 SpaceNet scene, 256-px blocks (edge blocks 132 px), 128-px tiles with 32 px overlap."""
    out = tmp_path_factory.mktemp("own") / "tiles"
    cfg = GeoTiffDataset(kind="geotiff", classes=["background", "building"],
                         scenes=[Scene(raster=str(SPACENET / "sample_geotiff.tif"), labels=str(SPACENET / "geotiff_labels.geojson"))],
                         split=SplitConfig(by="block", block_size=256))
    build_tile_store("spacenet", cfg, TileConfig(size=128, overlap=32), out)
    return TileStore(out)


def scene_canvas(store: TileStore, ids: np.ndarray, height: int = 900, width: int = 900) -> tuple[np.ndarray, np.ndarray]:
    """(covered, label) of the scene: which pixels the tiles `ids` cover (in-extent, valid) and their labels,
    pasted from the tiles' rows and columns."""
    index = store.index.set_index("tile_id")
    covered = np.zeros((height, width), bool)
    label = np.full((height, width), IGNORE, np.uint8)
    for t in ids:
        r, c = int(index.row[t]), int(index.col[t])
        h, w = min(128, height - r), min(128, width - c)
        v = np.asarray(store.valid[t])[:h, :w]
        covered[r : r + h, c : c + w] |= v
        label[r : r + h, c : c + w][v] = np.asarray(store.masks[t])[:h, :w][v]
    return covered, label


def test_scores_over_test_tiles_count_each_distinct_labelled_pixel_once(spacenet_store):
    store = spacenet_store
    ids = np.sort(store.ids("test"))
    covered, label = scene_canvas(store, ids)
    distinct = int(np.count_nonzero(covered & (label != IGNORE)))
    scored = store.scored_masks(ids)
    assert int(np.count_nonzero(scored != IGNORE)) == distinct
    every = int(np.count_nonzero(np.asarray(store.masks[ids]) != IGNORE))
    assert every > 1.1 * distinct  # the overlap that was counted several times (measured 1.32x before)

    class Constant(torch.nn.Module):  # predicts "building" everywhere: the confusion matrix's total is what counts
        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], dim=1)

    norm = Normaliser("train", store.meta.band_mean, store.meta.band_std)
    cm = confusion_on(Constant(), store, ids, 8, torch.device("cpu"), norm, precision="fp32")
    assert cm.sum() == distinct
    assert cm[1, 1] == np.count_nonzero(covered & (label == 1))  # building pixels of the test area, once


def test_every_pixel_of_the_store_has_one_owner(spacenet_store):
    store = spacenet_store
    index = store.index
    count = np.zeros((900, 900), int)
    for t, r, c in zip(index.tile_id, index.row, index.col):
        h, w = min(128, 900 - r), min(128, 900 - c)
        count[r : r + h, c : c + w] += np.asarray(store.owned[t])[:h, :w]
    assert count.max() == 1 and count.sum() == 900 * 900  # every tile kept here: the whole scene, once


def test_statistics_come_from_valid_owned_pixels_never_from_labels(spacenet_store, tmp_path):
    """Band statistics of the train split (meta.json) equal those of the distinct valid train pixels (every other
    row and column of each tile, as pixel_sums samples), and mode image's per-source statistics do not change when
    labels are removed."""
    store = spacenet_store
    ids = np.sort(store.ids("train"))
    keep = np.asarray(store.valid[ids]) & np.asarray(store.owned[ids])
    mean, std = band_moments(pixel_sums(np.asarray(store.images[ids]), keep))
    assert np.allclose(store.meta.band_mean, mean, rtol=1e-9) and np.allclose(store.meta.band_std, std, rtol=1e-9)
    before = source_statistics(store)

    class Unlabelled(TileStore):  # the same store with no label at all: statistics must not move
        @property
        def masks(self):
            return np.full(store.masks.shape, IGNORE, np.uint8)

    assert source_statistics(Unlabelled(store.path)) == before


# --------------------------------------------------------------------------------- mutation testing (bench/README.md)
def test_write_ownership_in_chunks_matches_the_brute_force_owner_of_each_source(tmp_path):
    """owned.npy written a few tiles at a time (chunk smaller than a source's tiles), two sources side by side in id
    order: every row is the brute-force owner's mask of that tile within its own source."""
    from eqseg.tiling.store import write_ownership

    size = 8
    plans = {0: (20, 19, 3), 1: (13, 21, 2)}  # source: height, width, overlap
    src_i, tiles = [], []
    for s, (h, w, ov) in plans.items():
        for r in grid.window_origins(h, size, ov):
            for c in grid.window_origins(w, size, ov):
                src_i.append(s)
                tiles.append((r, c, min(size, h - r), min(size, w - c)))
    rows, cols, heights, widths = (np.array(v) for v in zip(*tiles))
    write_ownership(tmp_path / "owned.npy", np.array(src_i), rows, cols, heights, widths, size, chunk=2)
    owned = np.load(tmp_path / "owned.npy")
    assert owned.shape == (len(tiles), size, size) and owned.dtype == bool
    for s, (h, w, _) in plans.items():
        at = [k for k, i in enumerate(src_i) if i == s]
        owner = brute_force_owner([tiles[k] for k in at], size, h, w)
        for local, k in enumerate(at):
            r, c, th, tw = tiles[k]
            expected = np.zeros((size, size), bool)
            expected[:th, :tw] = owner[r : r + th, c : c + tw] == local
            assert np.array_equal(owned[k], expected), (s, local)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
def test_store_sums_count_valid_owned_pixels_on_every_other_row_and_column(tmp_path, dtype):
    """store_sums against a loop over pixels: count, sum and sum of squares per band over pixels that are valid AND
    owned, sampled on even rows and columns, over several chunks, for integer and float images."""
    from eqseg.tiling.store import store_sums

    rng = np.random.default_rng(3)
    n, bands, size = 7, 2, 6
    images = (rng.integers(0, 250, size=(n, bands, size, size)) + (0.25 if dtype == np.float32 else 0)).astype(dtype)
    valid, owned = rng.random((n, size, size)) < 0.7, rng.random((n, size, size)) < 0.6
    for name, a in (("images", images), ("valid", valid), ("owned", owned)):
        np.save(tmp_path / f"{name}.npy", a)
    ids = [5, 0, 2, 3, 6]
    expected = np.zeros((3, bands))
    for k in ids:
        for y in range(0, size, 2):
            for x in range(0, size, 2):
                if valid[k, y, x] and owned[k, y, x]:
                    v = images[k, :, y, x].astype(np.float64)
                    expected += np.stack([np.ones(bands), v, v * v])
    got = store_sums(tmp_path, np.array(ids), chunk=2)
    assert got == pytest.approx(expected, rel=1e-12)


def test_owned_masks_of_tiles_that_are_near_but_do_not_overlap():
    """Tiles of any shape, not only a grid: a short tile within a tile's reach that does not overlap it must not stop
    the comparison with the tiles after it (brute-force owner as the reference)."""
    size, height, width = 8, 16, 12
    tiles = [(0, 0, 3, 8), (4, 0, 8, 8), (6, 2, 8, 8), (5, 4, 8, 8)]  # (row, col, height, width)
    owner = brute_force_owner(tiles, size, height, width)
    rows, cols, heights, widths = (np.array(v) for v in zip(*tiles))
    masks = grid.owned_masks(rows, cols, heights, widths, size)
    for k, (r, c, h, w) in enumerate(tiles):
        expected = np.zeros((size, size), bool)
        expected[:h, :w] = owner[r : r + h, c : c + w] == k
        assert np.array_equal(masks[k], expected), k


def test_owned_masks_of_unsigned_coordinates_and_float_sizes():
    """Coordinates in any integer-valued dtype: unsigned rows/cols (r - size would wrap around below 0) and float
    heights/widths and tile numbers `which` (not slice bounds or indices as floats) give the brute-force owner."""
    size, height, width = 16, 45, 37
    tiles = [(r, c, min(size, height - r), min(size, width - c)) for r, c in grid.tile_windows(0, 0, height, width, size, 4)]
    owner = brute_force_owner(tiles, size, height, width)
    rows, cols, heights, widths = (np.array(v) for v in zip(*tiles))
    for args in [(rows.astype(np.uint16), cols, heights, widths), (rows, cols.astype(np.uint16), heights, widths),
                 (rows, cols, heights.astype(np.float64), widths), (rows, cols, heights, widths.astype(np.float64))]:
        masks = grid.owned_masks(*args, size)
        assert np.array_equal(grid.owned_masks(*args, size, np.array([3.0, 5.0])), masks[[3, 5]])  # float `which`
        for k, (r, c, h, w) in enumerate(tiles):
            expected = np.zeros((size, size), bool)
            expected[:h, :w] = owner[r : r + h, c : c + w] == k
            assert np.array_equal(masks[k], expected), k


def test_owned_masks_of_tiles_sharing_one_row_or_one_column():
    """The farthest neighbours that still overlap: size - 1 rows (or columns) apart, one row (column) shared. Its
    pixels are at equal distance from both centres: the lower index owns them (brute-force owner)."""
    size = 8
    for tiles, height, width in [([(0, 0, 8, 8), (7, 0, 8, 8)], 15, 8), ([(0, 0, 8, 8), (0, 7, 8, 8)], 8, 15),
                                 ([(0, 2, 8, 6), (7, 0, 8, 8), (7, 7, 8, 8)], 15, 15)]:
        owner = brute_force_owner(tiles, size, height, width)
        rows, cols, heights, widths = (np.array(v) for v in zip(*tiles))
        masks = grid.owned_masks(rows, cols, heights, widths, size)
        for k, (r, c, h, w) in enumerate(tiles):
            expected = np.zeros((size, size), bool)
            expected[:h, :w] = owner[r : r + h, c : c + w] == k
            assert np.array_equal(masks[k], expected), (tiles, k)
