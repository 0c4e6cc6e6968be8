"""Pyramidal TIFF slides (tiled TIFF, OME-TIFF, Aperio SVS, NDPI...) read by region through tifffile.

Only the TIFF tiles (or strips) under a region are read and decoded (by tifffile's TiffPage.decode), and recently
decoded ones are kept in a small LRU cache, so that tiling a slide whose tiles are not aligned with the file's tiles
decodes each of them once. Kept rather than tifffile's `aszarr(level=...)` + zarr or tiffslide, which read the same
pixels: on the tiling access pattern (row by row, 128- or 256-px regions) those were 3-12x and 6-20x slower
(bench/README.md, `bench/bench_tiling.py --slide-readers`): zarr has no chunk cache, so a 256-px TIFF tile is
decoded again for each of the four 128-px regions in it, and each read costs about a millisecond of overhead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from eqseg.errors import EqsegError

_UNIT_TO_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Level:
    height: int
    width: int
    downsample: float  # level-0 pixels per pixel of this level
    mpp: float | None  # microns per pixel, when the file says


def level_for_mpp(mpps: list[float], target: float) -> int:
    """The level whose resolution is closest to `target` on a log scale (0.3 is as far from 0.25 as 0.208)."""
    return int(np.argmin([abs(math.log(m / target)) for m in mpps]))


def _ome_mpp(ome: str | None) -> float | None:
    if not ome:
        return None
    size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
    return float(size.group(1)) * _UNIT_TO_MICRONS.get(unit.group(1) if unit else "µm", 1.0)


def _tag_mpp(page, imagej: dict | None) -> float | None:
    """Microns per pixel from the TIFF resolution tags (centimetre or inch; ImageJ's own unit when it gives one)."""
    xres = page.resolution[0] if page.resolution else 0
    if not xres or xres <= 0:
        return None
    unit = int(page.resolutionunit)
    if imagej and imagej.get("unit") in _UNIT_TO_MICRONS:
        return _UNIT_TO_MICRONS[imagej["unit"]] / xres
    return {3: 1e4 / xres, 2: 25400.0 / xres}.get(unit)


def base_mpp(tif, page) -> float | None:
    """Microns per pixel of level 0: OME metadata, Aperio's `MPP =`, or resolution tags, in that order."""
    aperio = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    for found in (_ome_mpp(tif.ome_metadata), float(aperio.group(1)) if aperio else None, _tag_mpp(page, tif.imagej_metadata)):
        if found and found > 0:
            return found
    return None


class PyramidTiff:
    """Region reader over the levels of a tiled pyramidal TIFF; pixels come back as (C, H, W)."""

    def __init__(self, path: Path):
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise EqsegError(f"{self.path}: slide not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._pages = [lvl.keyframe for lvl in series.levels]
        except Exception as err:
            raise EqsegError(f"{self.path}: cannot open slide ({_first_line(err)})") from None
        for page in self._pages:
            if page.planarconfig != 1 and page.samplesperpixel > 1 or page.imagedepth > 1:
                raise EqsegError(f"{self.path}: unsupported TIFF layout (planar or 3-D pages); convert to interleaved RGB")
        self._check_complete()
        mpp0 = base_mpp(self._tif, self._pages[0])
        w0 = self._pages[0].imagewidth
        self.levels = [
            Level(p.imagelength, p.imagewidth, w0 / p.imagewidth, mpp0 * w0 / p.imagewidth if mpp0 else None)
            for p in self._pages
        ]
        self.bands = self._pages[0].samplesperpixel
        self.dtype = np.dtype(self._pages[0].dtype)
        self._decoders = [lru_cache(maxsize=self._cache_size(p))(self._decoder(p)) for p in self._pages]

    def _check_complete(self) -> None:
        """A truncated file opens fine, but some tiles point past its end: say so now rather than mid-run."""
        size = self._tif.filehandle.size
        for page in self._pages:
            ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
            if ends.size and int(ends.max()) > size:
                raise EqsegError(f"{self.path}: truncated or corrupt slide (tile data past the end of the file)")

    @staticmethod
    def _segment_shape(page) -> tuple[int, int]:
        return (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip or page.imagelength, page.imagewidth)

    def _cache_size(self, page) -> int:
        sh, sw = self._segment_shape(page)
        per_row = -(-page.imagewidth // sw)
        return int(np.clip(2 * per_row + 2, 16, max(16, CACHE_BYTES // (sh * sw * page.samplesperpixel * page.dtype.itemsize))))

    def _decoder(self, page):
        fh = self._tif.filehandle

        def decode(index: int) -> np.ndarray:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            fh.seek(offset)
            data = fh.read(count) if count else None
            try:
                segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as err:
                raise EqsegError(f"{self.path}: cannot decode tile {index} ({_first_line(err)}; truncated or corrupt slide)") from None
            if segment is None:  # an empty tile: the TIFF fill value
                sh, sw = self._segment_shape(page)
                return np.zeros((sh, sw, page.samplesperpixel), dtype=page.dtype)
            return segment.reshape(segment.shape[-3:])

        return decode

    def read(self, level: int, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Pixels of [row, row+height) x [col, col+width) at a level, which must lie inside it; (C, H, W)."""
        page = self._pages[level]
        if row < 0 or col < 0 or row + height > page.imagelength or col + width > page.imagewidth:
            raise ValueError(f"region {row},{col} {height}x{width} outside level {level} ({page.imagelength}x{page.imagewidth})")
        sh, sw = self._segment_shape(page)
        per_row = -(-page.imagewidth // sw)
        out = np.empty((height, width, page.samplesperpixel), dtype=page.dtype)
        for tr in range(row // sh, -(-(row + height) // sh)):
            for tc in range(col // sw, -(-(col + width) // sw)):
                seg = self._decoders[level](tr * per_row + tc)
                r0, c0 = max(row, tr * sh), max(col, tc * sw)
                r1, c1 = min(row + height, (tr + 1) * sh), min(col + width, (tc + 1) * sw)
                out[r0 - row : r1 - row, c0 - col : c1 - col] = seg[r0 - tr * sh : r1 - tr * sh, c0 - tc * sw : c1 - tc * sw]
        return np.moveaxis(out, -1, 0)

    def read_level(self, level: int) -> np.ndarray:
        lv = self.levels[level]
        return self.read(level, 0, 0, lv.height, lv.width)

    def close(self) -> None:
        self._tif.close()


def _first_line(err: Exception) -> str:
    text = str(err).splitlines()
    return text[0][:200] if text else type(err).__name__
