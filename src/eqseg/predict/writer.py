"""Tiled, compressed GeoTIFF output written in whole rows of blocks, as the rows are finished.

GDAL compresses a tile when it is complete; rows handed over in block-aligned strips mean each tile is compressed
once and never rewritten (a partly written compressed tile would be re-read and appended again, bloating the file).
"""

from __future__ import annotations

import warnings

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

BLOCK = 256


def profile(height: int, width: int, count: int, dtype, crs, transform, nodata) -> dict:
    return dict(
        driver="GTiff", height=height, width=width, count=count, dtype=dtype, crs=crs, transform=transform, nodata=nodata,
        tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", predictor=1, bigtiff="IF_SAFER", num_threads="ALL_CPUS",
    )


class RowWriter:
    """Append rows (count, n, width) to a GeoTIFF, flushing them to the file only in whole rows of blocks."""

    def __init__(self, path: Path, **prof):
        with warnings.catch_warnings():  # unreferenced sources (pathology images) are written in pixel space
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self._ds = rasterio.open(path, "w", **prof)
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._row = 0

    @property
    def dataset(self):
        return self._ds

    def push(self, rows: np.ndarray) -> None:
        self._parts.append(rows)
        self._buffered += rows.shape[1]
        if self._buffered >= BLOCK:
            self._flush(self._buffered // BLOCK * BLOCK)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._parts, axis=1)
        self._ds.write(data[:, :n], window=Window(0, self._row, data.shape[2], n))
        self._row += n
        rest = data[:, n:]
        self._parts, self._buffered = ([rest] if rest.shape[1] else []), rest.shape[1]

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        self._ds.close()


def add_overviews(path: Path, resampling: Resampling = Resampling.nearest) -> None:
    """Internal overviews down to one block, streamed by GDAL: what makes the output a pyramidal TIFF."""
    with rasterio.open(path, "r+") as ds:
        factors, side = [], max(ds.height, ds.width)
        while side // 2 ** (len(factors) + 1) >= BLOCK // 2:
            factors.append(2 ** (len(factors) + 1))
        if factors:
            ds.build_overviews(factors, resampling)
