"""How a GeoTIFF scene is read for tiling: validity equal to rasterio's dataset mask on every nodata kind, strip
memory recycled only once nothing refers to it, every block row decoded once even where the last row of tiles is
shifted back, and band statistics equal to the plain float64 sums."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from eqseg.tiling.geotiff import GeoSource, _as_pixel, _Recycler

H, W = 300, 520  # not multiples of the 128-px blocks: edge strips and shifted tiles


def _scene(path: Path, data: np.ndarray, mask: np.ndarray | None = None, **profile) -> Path:
    prof = dict(driver="GTiff", width=W, height=H, count=data.shape[0], dtype=data.dtype, crs="EPSG:32633",
                transform=from_origin(0, 1000, 1.0, 1.0), tiled=True, blockxsize=128, blockysize=128) | profile
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(mask)
    return path


def _scenes(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(1, 250, (3, H, W)).astype(np.uint8)
    u8 = base.copy()
    u8[:, :100, :200] = 0
    u8[0, 150:200] = 0  # one band at nodata only: still valid
    f32 = base.astype(np.float32)
    f32[:, 20:60, 100:400] = np.nan
    f32[1, 200:250] = np.nan  # NaN in one band: invalid
    f32_nd = base.astype(np.float32)
    f32_nd[:, :, :50] = -9999
    i16 = base.astype(np.int16) - 100
    i16[:, :40] = -32768
    mask = np.full((H, W), 255, np.uint8)
    mask[100:200, 300:500] = 0
    return {
        "u8_nodata": _scene(tmp_path / "u8.tif", u8, nodata=0),
        "f32_nan": _scene(tmp_path / "f32.tif", f32, nodata=float("nan")),
        "f32_nodata": _scene(tmp_path / "f32nd.tif", f32_nd, nodata=-9999),
        "i16_nodata": _scene(tmp_path / "i16.tif", i16, nodata=-32768),
        "u16_unrepresentable": _scene(tmp_path / "u16.tif", base.astype(np.uint16) * 200, nodata=0.5),
        "u8_mask_band": _scene(tmp_path / "mask.tif", base, mask=mask),
        "u8_plain": _scene(tmp_path / "plain.tif", base),
    }


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32])
def test_nodata_as_pixel_type_compares_as_float64_does(dtype):
    info = np.iinfo(dtype)
    band = np.unique(np.r_[np.linspace(info.min, info.max, 1001).astype(dtype), np.array([0, 1, info.min, info.max], dtype)])
    for nd in (0.0, -0.0, 1.0, 0.5, -1.0, float(info.min), float(info.max), float(info.max) + 1, float(info.min) - 1,
               float("inf"), -float("inf"), 1e300):
        assert np.array_equal(band != _as_pixel(nd, band.dtype), band != nd), (dtype, nd)


def test_tile_validity_equals_rasterio_dataset_mask(tmp_path):
    """Every kind of nodata: the valid pixels of every tile are those of rasterio's dataset mask (NaN pixels of float
    rasters are nodata too), and NaN pixels are stored as 0."""
    for name, path in _scenes(tmp_path).items():
        with rasterio.open(path) as ds:
            want = ds.dataset_mask() > 0
            data = ds.read()
        if np.issubdtype(data.dtype, np.floating):
            want &= ~np.isnan(data).any(axis=0)
        src = GeoSource(path, [])
        try:
            src.will_read([(r, min(128, H - r)) for r in range(0, H, 128)])
            for r in range(0, H, 128):
                for c in range(0, W, 128):
                    t = src.read_tile(r, c, 128, H, W)
                    h, w = min(128, H - r), min(128, W - c)
                    assert np.array_equal(t.valid[:h, :w], want[r : r + h, c : c + w]), (name, r, c)
                    assert not t.valid[h:].any() and not t.valid[:, w:].any()
                    assert t.valid_fraction == np.count_nonzero(want[r : r + h, c : c + w]) / 128**2
                    assert np.array_equal(t.image[:, :h, :w], np.nan_to_num(data[:, r : r + h, c : c + w], nan=0.0))
                    assert (t.mask[:h, :w][~t.valid[:h, :w]] == 255).all()
        finally:
            src.close()


def test_strip_memory_comes_back_only_when_nothing_refers_to_it():
    mem = _Recycler(keep=2)
    a = mem.take(1000)
    view = a[10:20].view(np.uint16).reshape(5)  # a view of a view: its base is still the lent array
    addr = a.__array_interface__["data"][0]
    del a
    gc.collect()
    b = mem.take(1000)  # the first block is still referred to by `view`: a new one
    assert b.__array_interface__["data"][0] != addr
    b[:] = 7
    assert view.base is not None
    del view
    gc.collect()
    c = mem.take(900)  # now the first block is free again (and large enough)
    assert c.__array_interface__["data"][0] == addr
    assert (b == 7).all()  # the block still lent out was not touched
    mem.clear()


class _CountingSource(GeoSource):
    def _decode(self, row, col, height, width):
        decoded = super()._decode(row, col, height, width)
        self.reads.append((int(decoded.win.row_off), int(decoded.win.row_off + decoded.win.height)))
        return decoded


def _reads(path: Path, rows: list[tuple[int, int]], size: int, told: bool) -> list[tuple[int, int]]:
    from eqseg.tiling import grid

    src = _CountingSource(path, [])
    src.reads = []
    try:
        if told:
            src.will_read(rows)
        for r, h in rows:
            for c in grid.window_origins(W, size, 0):
                src.read_tile(r, c, size, r + h, W)
    finally:
        src.close()
    return src.reads


def test_each_block_row_is_decoded_once_where_the_last_row_of_tiles_is_shifted(tmp_path):
    """128-px tiles over 300 rows of 128-px blocks: the last row of tiles is shifted back to 172, inside the strip
    of the row before; told the rows (will_read), the source reads that strip to the end of the scene at once, so
    every block is decoded once and no strip is read in vain. Guessing by stride, it read rows 256-300 in vain and
    rows 128-256 twice."""
    from eqseg.tiling import grid

    path = _scenes(tmp_path)["u8_plain"]
    rows = [(r, 128) for r in grid.window_origins(H, 128, 0)]
    assert [r for r, _ in rows] == [0, 128, 172]
    assert _reads(path, rows, 128, told=True) == [(0, 128), (128, 300)]
    assert _reads(path, rows, 128, told=False) == [(0, 128), (128, 256), (256, 300), (128, 300)]


def test_strips_read_ahead_are_always_used_with_shifted_rows_in_blocks(tmp_path):
    """96-px tiles in 200-px blocks (rows 0, 96, 104, 200, 204): every strip read is one a row of tiles is cut
    from, and no block row is decoded more than twice."""
    from eqseg.tiling import grid

    path = _scenes(tmp_path)["u8_plain"]
    rows = [(r, min(96, end - r)) for r0, end in ((0, 200), (200, H)) for r in sorted({r for r, _ in grid.tile_windows(r0, 0, end - r0, W, 96, 0)})]
    assert [r for r, _ in rows] == [0, 96, 104, 200, 204]
    reads = _reads(path, rows, 96, told=True)
    assert all(any(r0 <= r and r + h <= r1 for r, h in rows) for r0, r1 in reads), reads
    decoded = [row for r0, r1 in reads for row in range(r0, r1)]
    assert set(decoded) == set(range(H)) and max(decoded.count(r) for r in range(H)) <= 2


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("size", [255, 256, 257, 513])
def test_band_sums_are_the_exact_float64_sums(dtype, size):
    """batch_sums (BLAS on float32 or float64 rows) equals float64 sums over every other row and column."""
    from eqseg.tiling.store import batch_sums

    rng = np.random.default_rng(size)
    info = np.iinfo(dtype)
    images = rng.integers(info.min, info.max, (3, 2, size, size), endpoint=True).astype(dtype)
    images[0] = info.max  # the largest sums
    valid = rng.random((3, size, size)) > 0.3
    valid[0] = True
    got = batch_sums(images, valid)
    x = images[:, :, ::2, ::2].astype(np.float64) * valid[:, None, ::2, ::2]
    assert np.array_equal(got[:, 0], np.broadcast_to(valid[:, ::2, ::2].sum(axis=(1, 2))[:, None], (3, 2)))
    assert np.array_equal(got[:, 1], x.sum(axis=(2, 3)))
    assert np.array_equal(got[:, 2], (x * x).sum(axis=(2, 3)))
