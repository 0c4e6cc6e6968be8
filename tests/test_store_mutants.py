"""Edge cases of eqseg.tiling.store written against the mutants that survived hand-made mutation testing of its
numeric parts: the leak-free split (split_units, group_units, the shared-ground units, candidate_tiles,
unit_splits), the band statistics (tile_sums, batch_sums, band_moments) and the store's lookups. Every expected
value comes from somewhere else than the function under test: a small case worked out by hand (the working is in
the comments), or brute force in the test (pixels enumerated one by one, rectangles tested pairwise, the seeded
permutation applied by hand)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from eqseg.config import SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling.store import (TileStore, _Extent, band_moments, batch_sums, candidate_tiles, group_units,
                                split_units, tile_rows, tile_sums, unit_splits)

UTM33 = CRS.from_epsg(32633)


# ------------------------------------------------------------------------------------------------ references
def brute_blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """Square blocks of a scene in reading order, by walking the scene in steps of `block`."""
    out, r = [], 0
    while r < height:
        c = 0
        while c < width:
            out.append((r, c, min(block, height - r), min(block, width - c)))
            c += block
        r += block
    return out


def ground_box(x0: float, y0: float, res: float, r: int, c: int, h: int, w: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of pixels [r, r+h) x [c, c+w) of a north-up raster whose top left corner is (x0, y0)."""
    return (x0 + c * res, y0 - (r + h) * res, x0 + (c + w) * res, y0 - r * res)


def first_appearance(labels: list) -> list[int]:
    ids: dict = {}
    return [ids.setdefault(x, len(ids)) for x in labels]


def brute_shared_units(boxes: list, owners: list) -> list[int]:
    """Units of blocks: blocks of different owners (sources) whose boxes share an area are one unit, transitively
    (repeated pairwise passes until nothing changes); None boxes (no georeference) stay alone."""
    label = list(range(len(boxes)))
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(boxes):
            for j, b in enumerate(boxes):
                if a is None or b is None or owners[i] == owners[j] or label[i] == label[j]:
                    continue
                dx = min(a[2], b[2]) - max(a[0], b[0])
                dy = min(a[3], b[3]) - max(a[1], b[1])
                if dx > 0 and dy > 0:
                    label[i] = label[j] = min(label[i], label[j])
                    changed = True
    return first_appearance(label)


def seeded_assignment(n: int, counts: dict[str, int], seed: int) -> list[str]:
    """The documented draw: labels train.. val.. test.. (counts given by hand) dealt to the items of one seeded
    permutation, item perm[j] getting label j."""
    labels = ["train"] * counts["train"] + ["val"] * counts["val"] + ["test"] * counts["test"]
    assert len(labels) == n
    perm = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for j, item in enumerate(perm):
        out[int(item)] = labels[j]
    return out


def brute_sums(images: np.ndarray, valid: np.ndarray, step: int = 2) -> np.ndarray:
    """(3, C) count, sum and sum of squares over valid pixels on every step-th row and column, in Python integers
    pixel by pixel (exact), returned as float64 (the integers stay far below 2**53)."""
    bands, height, width = images.shape
    out = [[0] * bands for _ in range(3)]
    for y in range(0, height, step):
        for x in range(0, width, step):
            if valid[y, x]:
                for b in range(bands):
                    v = int(images[b, y, x])
                    out[0][b] += 1
                    out[1][b] += v
                    out[2][b] += v * v
    return np.array(out, dtype=np.float64)


def fake_store(**arrays) -> TileStore:
    store = object.__new__(TileStore)  # no files: the cached properties are set directly
    store.__dict__.update(arrays)
    return store


# ------------------------------------------------------------------------------------------------ split by group
def test_split_by_group_is_whole_sources_numbered_by_first_appearance_of_their_group():
    """Non-square sources, so a swapped height and width shows; groups b, a, b, c -> units 0, 1, 0, 2."""
    sources = [SimpleNamespace(height=h, width=w, group=g, path=f"p{k}", crs=None, transform=None)
               for k, (h, w, g) in enumerate([(30, 50, "b"), (7, 9, "a"), (40, 20, "b"), (5, 6, "c")])]
    blocks, units = split_units(sources, SplitConfig(by="group", fractions={"train": 0.5, "test": 0.5}))
    assert blocks == [(0, 0, 0, 30, 50), (1, 0, 0, 7, 9), (2, 0, 0, 40, 20), (3, 0, 0, 5, 6)]
    assert units == [0, 1, 0, 2]
    assert group_units(["x", "y", "y", "z", "x"], list("abcde")) == [0, 1, 1, 2, 0]
    assert group_units([], []) == []


def test_split_by_group_refuses_a_source_without_group_naming_it():
    with pytest.raises(EqsegError, match=r"^data/b\.png: split\.by=group needs sources in groups"):
        group_units(["a", None, "a"], ["data/a.png", "data/b.png", "data/c.png"])
    group_units(["a", "a"], ["x", "y"])  # every source in a group: no error


# ------------------------------------------------------------------------------------------------ shared ground
def _scenes():
    """Five sources, georeference given as (x0, y0) of a 1 m north-up raster in UTM 33N, or None:
      0 'plain'  20 x 20, no CRS at all (pixel coordinates): never joined, and first so that nothing may take its
                 CRS for the common one
      1 'a'      30 high x 50 wide at (500000, 4000000): x 500000..500050, y 3999970..4000000
      2 'half'   a CRS but no transform: not georeferenced, never joined
      3 'b'      40 x 30 at (500035, 3999971): x 500035..500065, y 3999931..3999971; its top row overlaps the
                 bottom row of 'a' (y 3999970..3999971) over x 500035..500050: one metre of shared ground
      4 'edge'   10 x 10 at (500050, 4000000): x 500050..500060, y 3999990..4000000, touching 'a' along x = 500050
                 only (no area) and overlapping nothing else"""
    geo = [None, (500000.0, 4000000.0), None, (500035.0, 3999971.0), (500050.0, 4000000.0)]
    shapes = [(20, 20), (30, 50), (12, 12), (40, 30), (10, 10)]
    sources = []
    for k, ((h, w), g) in enumerate(zip(shapes, geo)):
        if g is None:
            sources.append(_Extent(h, w, UTM33 if k == 2 else None, None))
        else:
            sources.append(_Extent(h, w, UTM33, from_origin(g[0], g[1], 1.0, 1.0)))
    return sources, geo


def test_split_by_block_joins_blocks_sharing_ground_against_a_pairwise_brute_force():
    """Blocks of 16 px: of 'a' (30 x 50) rows 0, 16 (14 high), columns 0, 16, 32, 48 (2 wide). Units are numbered in
    block order; a unit is every block of other sources overlapping it by an area, transitively."""
    sources, geo = _scenes()
    split = SplitConfig(by="block", block_size=16)
    blocks, units = split_units(sources, split)
    expected_blocks = [(i, *b) for i, s in enumerate(sources) for b in brute_blocks(s.height, s.width, 16)]
    assert blocks == expected_blocks
    boxes = [None if geo[i] is None else ground_box(*geo[i], 1.0, r, c, h, w) for i, r, c, h, w in expected_blocks]
    expected = brute_shared_units(boxes, [b[0] for b in expected_blocks])
    assert units == expected
    # the reference really joins something, across the one-metre strip only, and leaves the rest alone
    a_bottom = [k for k, b in enumerate(blocks) if b[0] == 1 and b[1] == 16 and b[2] in (32, 48)]
    b_top = [k for k, b in enumerate(blocks) if b[0] == 3 and b[1] == 0 and b[2] in (0, 16)]
    assert len(a_bottom) == 2 and len(b_top) == 2
    # b's top left block (x 35..51) overlaps a's bottom blocks at columns 32 (x 32..48) and 48 (x 48..50): one unit
    # of three blocks; b's top right block (x 51..65) overlaps nothing
    assert units[a_bottom[0]] == units[a_bottom[1]] == units[b_top[0]] != units[b_top[1]]
    assert len(set(units)) == len(blocks) - 2
    assert units[:4] == [0, 1, 2, 3]  # the plain source's blocks come first and keep their own units


def test_split_by_source_joins_whole_sources_sharing_ground():
    """Whole sources: 'a' and 'b' share ground (unit 1), 'edge' only touches 'a' (its own unit)."""
    sources, _ = _scenes()
    blocks, units = split_units(sources, SplitConfig(by="source"))
    assert blocks == [(0, 0, 0, 20, 20), (1, 0, 0, 30, 50), (2, 0, 0, 12, 12), (3, 0, 0, 40, 30), (4, 0, 0, 10, 10)]
    assert units == [0, 1, 2, 1, 3]
    # exactly two georeferenced sources sharing ground are joined too; 'a' and 'edge' only touch
    assert split_units([sources[3], sources[1]], SplitConfig(by="source"))[1] == [0, 0]
    assert split_units([sources[1], sources[4]], SplitConfig(by="source"))[1] == [0, 1]


def test_one_georeferenced_source_keeps_every_block_its_own_unit():
    """Only one source has a georeference (blocks of one scene are never joined) and a plain one: units are the block
    positions 0..n-1."""
    sources, _ = _scenes()
    blocks, units = split_units([sources[0], sources[1]], SplitConfig(by="block", block_size=16))
    assert units == list(range(len(blocks))) == list(range(4 + 2 * 4))


def test_blocks_of_a_scene_in_another_crs_stay_apart_where_nothing_joins_them():
    """Scene b lies in UTM 32N, 3 degrees off its central meridian, 10 km from scene a (UTM 33N): nothing overlaps,
    so every block is its own unit. Reprojected into 33N, b's blocks are rotated, and the bounding boxes of
    neighbouring blocks overlap each other (checked here with pyproj): only blocks of different scenes may be joined
    by such overlaps, never two blocks of one scene."""
    from pyproj import Transformer

    to32 = Transformer.from_crs("EPSG:32633", "EPSG:32632", always_xy=True)
    x, y = to32.transform(510000, 4000000)
    sources = [_Extent(64, 64, UTM33, from_origin(500000, 4000000, 1.0, 1.0)),
               _Extent(96, 96, CRS.from_epsg(32632), from_origin(x, y, 1.0, 1.0))]
    blocks, units = split_units(sources, SplitConfig(by="block", block_size=32))
    assert units == list(range(len(blocks))) == list(range(4 + 9))
    back = Transformer.from_crs("EPSG:32632", "EPSG:32633", always_xy=True)

    def box33(c0, c1, r0, r1):  # bounding box in 33N of the corners of a block of b
        xs, ys = back.transform([x + c0, x + c1, x + c0, x + c1], [y - r0, y - r0, y - r1, y - r1])
        return min(xs), min(ys), max(xs), max(ys)

    left, right = box33(0, 32, 0, 32), box33(32, 64, 0, 32)
    assert min(left[2], right[2]) - max(left[0], right[0]) > 0.1  # the two boxes overlap by more than 10 cm
    assert min(left[3], right[3]) - max(left[1], right[1]) > 0.1


# ------------------------------------------------------------------------------------------------ candidate tiles
def test_candidate_tiles_of_a_small_case_by_hand():
    """Source 0: 13 high x 20 wide, blocks of 10: (0,0,10,10), (0,10,10,10), (10,0,3,10), (10,10,3,10), units 0-3.
    Tiles of 6 px with overlap 2 (stride 4): along a 10-px side origins 0 and 10 - 6 = 4; along the 3-px side only 0
    (padded). Source 1: 5 high x 4 wide, one block smaller than a tile: one padded tile at (0, 0), unit 4. Rows
    (source, unit, row, col, row_end, col_end), sorted by source, row, col."""
    sources = [_Extent(13, 20, None, None), _Extent(5, 4, None, None)]
    plan, n_units = candidate_tiles(sources, SplitConfig(by="block", block_size=10), TileConfig(size=6, overlap=2))
    assert plan == [
        (0, 0, 0, 0, 10, 10), (0, 0, 0, 4, 10, 10), (0, 1, 0, 10, 10, 20), (0, 1, 0, 14, 10, 20),
        (0, 0, 4, 0, 10, 10), (0, 0, 4, 4, 10, 10), (0, 1, 4, 10, 10, 20), (0, 1, 4, 14, 10, 20),
        (0, 2, 10, 0, 13, 10), (0, 2, 10, 4, 13, 10), (0, 3, 10, 10, 13, 20), (0, 3, 10, 14, 13, 20),
        (1, 4, 0, 0, 5, 4),
    ]
    assert n_units == 5


def test_candidate_tiles_by_source_cover_each_source_and_count_shared_units_once():
    """Split by source, 'a' and 'b' share ground: 5 sources but 4 units; every tile ends at its source's edges."""
    sources, _ = _scenes()
    plan, n_units = candidate_tiles(sources, SplitConfig(by="source"), TileConfig(size=8, overlap=0))
    assert n_units == 4
    unit_of = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
    for i, u, r, c, r_end, c_end in plan:
        assert (u, r_end, c_end) == (unit_of[i], sources[i].height, sources[i].width)
    assert plan == sorted(plan, key=lambda t: (t[0], t[2], t[3]))


def test_candidate_tiles_of_a_larger_scene_cover_every_block_without_crossing_an_edge():
    """Properties checked pixel by pixel on a scene whose size is no multiple of anything: each tile lies inside one
    block (or starts at the block's corner when the block is smaller than a tile), the tiles of a block cover it, the
    ends are the block's ends, consecutive origins are a stride apart but for the last one, and the plan is in
    reading order."""
    height, width, block, size, overlap = 53, 37, 20, 8, 3
    plan, n_units = candidate_tiles([_Extent(height, width, None, None)], SplitConfig(by="block", block_size=block),
                                    TileConfig(size=size, overlap=overlap))
    blocks = brute_blocks(height, width, block)
    assert n_units == len(blocks) == 6  # rows 0, 20, 40 (13 high); columns 0, 20 (17 wide)
    assert [(t[2], t[3]) for t in plan] == sorted((t[2], t[3]) for t in plan)
    for u, (r0, c0, h, w) in enumerate(blocks):
        tiles = [t for t in plan if t[1] == u]
        cover = np.zeros((height, width), int)
        for _, _, r, c, r_end, c_end in tiles:
            assert (r_end, c_end) == (r0 + h, c0 + w)
            assert r0 <= r and c0 <= c
            assert r + size <= r_end or r == r0
            assert c + size <= c_end or c == c0
            cover[r : min(r + size, r_end), c : min(c + size, c_end)] += 1
        inside = np.zeros((height, width), bool)
        inside[r0 : r0 + h, c0 : c0 + w] = True
        assert (cover[inside] >= 1).all() and (cover[~inside] == 0).all()
        for axis, extent in ((2, h), (3, w)):
            origins = sorted({t[axis] for t in tiles})
            gaps = np.diff(origins)
            assert (gaps[:-1] == size - overlap).all() if len(gaps) > 1 else True
            assert origins[-1] - origins[0] == max(extent - size, 0)


def test_candidate_tiles_check_the_block_against_tile_plus_overlap():
    """Blocks of 9 cannot hold a 6-px tile with 4 px of overlap (6 + 4 = 10); blocks of 10 can."""
    with pytest.raises(EqsegError, match=r"block_size \(9\) must be at least tile size \+ overlap \(10\)"):
        candidate_tiles([_Extent(30, 30, None, None)], SplitConfig(by="block", block_size=9),
                        TileConfig(size=6, overlap=4))
    plan, _ = candidate_tiles([_Extent(30, 30, None, None)], SplitConfig(by="block", block_size=10),
                              TileConfig(size=6, overlap=4))
    assert len(plan) == 9 * 9  # 3 x 3 blocks of 10, each with origins 0, 2 (stride 6 - 4) and 10 - 6 = 4 on both axes


# ------------------------------------------------------------------------------------------------ unit splits
def test_unit_splits_by_block_draw_among_kept_units_only():
    """Kept units 0, 2, 5, 7, 9 of 12: 5 draws; fractions .6/.2/.2 of 5 -> 3, 1, 1 (no remainder)."""
    split = SplitConfig(by="block", fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=5)
    got = unit_splits([0, 2, 5, 7, 9], 12, 1, split)
    want = seeded_assignment(5, {"train": 3, "val": 1, "test": 1}, 5)
    assert got == dict(zip([0, 2, 5, 7, 9], want))


@pytest.mark.parametrize("by", ["source", "group"])
def test_unit_splits_by_source_or_group_draw_among_all_units(by):
    """4 units (of 5 sources: two share ground), only 0 and 3 kept: still 4 draws, so that a source without tiles
    takes its share. Fractions .5/.25/.25 of 4 -> 2, 1, 1."""
    split = SplitConfig(by=by, fractions={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    counts = {"train": 2, "val": 1, "test": 1}
    assert seeded_assignment(4, counts, 3) != seeded_assignment(4, counts, 0)  # the seed shows (seed 7 would not)
    got = unit_splits([0, 3], 4, 5, split)
    assert got == dict(enumerate(seeded_assignment(4, counts, 3)))


@pytest.mark.parametrize("by", ["source", "group"])
def test_unit_splits_need_a_unit_for_each_split_with_a_share(by):
    """Three shares need three units: two are refused, three are enough; a split with share 0 needs none."""
    three = SplitConfig(by=by, fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    with pytest.raises(EqsegError, match=f"split.by={by} needs a"):
        unit_splits([0, 1], 2, 2, three)
    assert sorted(unit_splits([0, 1, 2], 3, 3, three).values()) == ["test", "train", "val"]
    two = SplitConfig(by=by, fractions={"train": 0.5, "val": 0.0, "test": 0.5})
    assert sorted(unit_splits([0, 1], 2, 2, two).values()) == ["test", "train"]


def test_unit_splits_by_source_count_sources_sharing_ground_once():
    """Three sources but two units (two share ground) cannot fill three splits; the message says both numbers, and
    says nothing of shared ground where there was none."""
    three = SplitConfig(by="source", fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    with pytest.raises(EqsegError, match=r"\(dataset has 3, 2 once sources covering the same ground count as one\)"):
        unit_splits([0, 1], 2, 3, three)
    with pytest.raises(EqsegError) as err:
        unit_splits([0, 1], 2, 2, three)
    assert "dataset has 2): use split.by=block" in str(err.value) and "once" not in str(err.value)


# ------------------------------------------------------------------------------------------------ tile sums
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tile_sums_against_a_loop_over_pixels(dtype):
    """Odd sizes (so the last row and column are sampled), partly valid; uint8 squares overflow 8 bits and uint16
    squares need more than float32's 24 bits, so the sums must be taken in float64."""
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype) if dtype != np.float32 else None
    high = info.max if info else 1000
    image = rng.integers(0, high, (2, 11, 9), endpoint=True).astype(dtype)
    image[:, ::2, ::2][:, :2, :2] = high  # the largest values on sampled pixels
    valid = rng.random((11, 9)) < 0.6
    valid[0, 0] = True
    got = tile_sums(image, valid)
    assert got.shape == (3, 2) and got.dtype == np.float64
    assert np.array_equal(got, brute_sums(image, valid))
    everything = np.ones((11, 9), bool)
    assert np.array_equal(tile_sums(image, everything), brute_sums(image, everything))


def test_tile_sums_of_one_and_of_no_valid_pixel():
    image = np.arange(2 * 6 * 6, dtype=np.uint16).reshape(2, 6, 6)
    one = np.zeros((6, 6), bool)
    one[2, 4] = True  # sampled: row 2, column 4
    assert np.array_equal(tile_sums(image, one), [[1, 1], [16, 52], [256, 2704]])  # pixels 2*6+4 and 36+16
    odd = np.zeros((6, 6), bool)
    odd[1, 1] = odd[3, 0] = True  # never sampled
    assert np.array_equal(tile_sums(image, odd), np.zeros((3, 2)))


@pytest.mark.parametrize("true_value", [1, 255])
def test_tile_and_batch_sums_take_validity_as_any_truthy_array(true_value):
    """Validity as bytes (0/1, or 0/255 as a raster's dataset mask gives it) counts exactly as the same validity as
    bool: a weight of 1 per valid pixel, never of 255."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 1, 8, 8)).astype(np.uint8)
    valid = rng.random((2, 8, 8)) < 0.5
    as_bytes = valid.astype(np.uint8) * np.uint8(true_value)
    assert np.array_equal(tile_sums(images[0], as_bytes[0]), brute_sums(images[0], valid[0]))
    want = np.stack([brute_sums(images[k], valid[k]) for k in range(2)])
    assert np.array_equal(batch_sums(images, as_bytes), want)


# ------------------------------------------------------------------------------------------------ batch sums
@pytest.mark.parametrize("size, n_cols", [(513, 257), (517, 259)])
def test_batch_sums_stay_exact_at_the_float32_limit(size, n_cols):
    """8-bit tiles of 255 everywhere: a sampled row of n_cols pixels sums squares to n_cols * 65025, which is below
    2**24 for 257 columns (16711425, exact in float32) and above it for 259 (16841475: odd, so not representable in
    float32; that width must be summed in float64). Every count and sum is an integer worked out here."""
    images = np.full((1, 1, size, size), 255, np.uint8)
    valid = np.ones((1, size, size), bool)
    n = n_cols * n_cols
    got = batch_sums(images, valid)
    assert got.shape == (1, 3, 1)
    assert got[0, :, 0].tolist() == [n, n * 255, n * 255 * 255]
    valid[0, :, -1] = False  # the last column (sampled) is invalid: n_cols - 1 columns count
    m = n_cols * (n_cols - 1)
    assert batch_sums(images, valid)[0, :, 0].tolist() == [m, m * 255, m * 255 * 255]


def test_batch_sums_count_and_mask_only_sampled_pixels():
    """Validity that differs between even and odd columns and rows: only the even ones may count."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 2, 10, 10)).astype(np.uint8)
    valid = np.zeros((3, 10, 10), bool)
    valid[0] = True
    valid[1, :, 1::2] = True  # odd columns only: nothing sampled is valid
    valid[2, 1::2, :] = True  # odd rows only
    valid[2, ::2, ::4] = True  # and every other sampled column
    got = batch_sums(images, valid)
    for b in range(3):
        assert np.array_equal(got[b], brute_sums(images[b], valid[b])), b


def test_batch_sums_reuse_the_scratch_buffer_across_batch_sizes_and_shapes():
    """One scratch dict through batches of 3, 2 (smaller: a view of the buffer), 4 (larger) and a new tile size, each
    against the loop over pixels; the buffer is kept in the dict and reused by an equal or smaller batch."""
    rng = np.random.default_rng(5)
    scratch: dict = {}
    first = None
    for b, size in ((3, 10), (2, 10), (4, 10), (2, 14), (2, 14)):
        images = rng.integers(0, 256, (b, 2, size, size)).astype(np.uint8)
        valid = rng.random((b, size, size)) < 0.7
        got = batch_sums(images, valid, scratch=scratch)
        want = np.stack([brute_sums(images[k], valid[k]) for k in range(b)])
        assert np.array_equal(got, want), (b, size)
        assert len(scratch) == 1
        buf = next(iter(scratch.values()))
        if first is None:
            first = buf
        if (b, size) == (2, 10):
            assert buf is first  # a smaller batch reuses the buffer
    assert buf.shape[0] >= 2 and buf.shape[-1] == 14


# ------------------------------------------------------------------------------------------------ band moments
def test_band_moments_by_hand():
    """Band 0 holds 1, 2, 3, 4: mean 2.5, variance 30/4 - 6.25 = 1.25. Band 1 holds 10, 10, 10, 10: mean 10,
    variance 0. Std gets 1e-6 added."""
    sums = np.array([[4.0, 4.0], [10.0, 40.0], [30.0, 400.0]])
    mean, std = band_moments(sums)
    assert isinstance(mean, list) and isinstance(std, list)
    assert mean == pytest.approx([2.5, 10.0], abs=1e-15)
    assert std == pytest.approx([math.sqrt(1.25) + 1e-6, 1e-6], abs=1e-15)


def test_band_moments_of_no_pixel_and_of_a_rounding_below_zero():
    mean, std = band_moments(np.zeros((3, 2)))  # no valid pixel: zeros, not 0/0
    assert mean == [0.0, 0.0] and std == pytest.approx([1e-6, 1e-6], abs=1e-18)
    v = 0.1
    sums = np.array([[3.0], [3 * v], [3 * v * v]])  # three pixels of 0.1: variance 0, computed as a hair below 0
    assert sums[2, 0] / 3 - (sums[1, 0] / 3) ** 2 < 0  # the case really arises
    mean, std = band_moments(sums)
    assert mean == pytest.approx([0.1], abs=1e-15) and std == pytest.approx([1e-6], abs=1e-15)


# ------------------------------------------------------------------------------------------------ store lookups
def test_counted_and_scored_masks_against_a_loop_over_pixels():
    rng = np.random.default_rng(8)
    n, s = 5, 4
    valid, owned = rng.random((n, s, s)) < 0.6, rng.random((n, s, s)) < 0.6
    masks = rng.integers(0, 3, (n, s, s)).astype(np.uint8)
    masks[0, 0, :] = 255  # unlabelled pixels stay unlabelled
    store = fake_store(valid=valid, owned=owned, masks=masks)
    ids = [4, 0, 2]
    counted, scored = store.counted(ids), store.scored_masks(ids)
    assert scored.dtype == np.uint8 and scored.shape == counted.shape == (3, s, s)
    for j, t in enumerate(ids):
        for y in range(s):
            for x in range(s):
                both = bool(valid[t, y, x]) and bool(owned[t, y, x])
                assert counted[j, y, x] == both
                assert scored[j, y, x] == (masks[t, y, x] if both else 255)
    assert counted.any() and not counted.all()  # both cases were seen


def test_ids_of_a_split_are_tile_ids_not_row_positions():
    index = pd.DataFrame({"tile_id": [3, 0, 2, 1], "split": ["val", "train", "val", "test"], "source": list("abca")})
    store = fake_store(index=index)
    assert store.ids("val").tolist() == [3, 2]
    assert store.ids("train").tolist() == [0] and store.ids("test").tolist() == [1]


def test_source_of_tile_ids_with_gaps_and_of_an_empty_index():
    store = fake_store(index=pd.DataFrame({"tile_id": [4, 0, 2], "source": ["c", "a", "b"]}))
    assert store.source_of.tolist() == ["a", None, "b", None, "c"]
    assert store.sources([4, 2, 4]) == ["c", "b", "c"] and store.sources([4, 2, 0], distinct=True) == ["a", "b", "c"]
    empty = fake_store(index=pd.DataFrame({"tile_id": np.array([], np.int64), "source": np.array([], object)}))
    assert len(empty.source_of) == 0


def test_tile_rows_of_ids_given_as_a_column():
    """Row ids may come as a column (n, 1), as np.load of a saved column gives them."""
    assert tile_rows(np.array([[7], [3], [11]]), [3, 11, 4]).tolist() == [1, 2, -1]
    out = tile_rows([], np.array([[1, 2]]))
    assert out.shape == (1, 2) and out.dtype == np.int64 and (out == -1).all()
