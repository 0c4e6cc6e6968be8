"""Whole-slide formats that tifffile does not read (MIRAX .mrxs, Leica .scn, Hamamatsu .vms, Ventana .bif, DICOM...),
read by region through OpenSlide with the same interface as PyramidTiff.

OpenSlide addresses regions in level-0 pixels and gives RGBA, transparent where nothing was scanned (gaps between
MIRAX camera fields, missing tiles). Those pixels come back white, as glass looks, so tissue detection skips them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eqseg.errors import EqsegError
from eqseg.slides.tiff import CACHE_BYTES, Level, _first_line


class OpenSlideReader:
    """Region reader over the levels of any slide OpenSlide opens; pixels come back as (3, H, W) uint8 RGB."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise EqsegError(f"{self.path}: slide not found")
        try:
            import openslide
        except (ImportError, OSError) as err:  # openslide-python without the shared library raises ModuleNotFoundError
            raise EqsegError(f"{self.path}: the OpenSlide library is missing ({_first_line(err)}); "
                             "pip install openslide-python openslide-bin, or use reader: tifffile") from None
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise EqsegError(f"{self.path}: not a slide format OpenSlide recognises") from None
        except openslide.OpenSlideError as err:
            raise EqsegError(f"{self.path}: cannot open slide with OpenSlide ({_first_line(err)})") from None
        self._slide.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
        self._error = openslide.OpenSlideError
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        mpp0 = float(mpp) if mpp and float(mpp) > 0 else None
        w0 = self._slide.level_dimensions[0][0]
        # downsample as PyramidTiff reports it (level-0 width over level width); OpenSlide's own, which averages
        # both axes, is only used to turn level pixels into the level-0 coordinates read_region takes
        self.levels = [Level(h, w, w0 / w, mpp0 * w0 / w if mpp0 else None) for w, h in self._slide.level_dimensions]
        self._downsamples = list(self._slide.level_downsamples)
        self.bands = 3
        self.dtype = np.dtype(np.uint8)

    def read(self, level: int, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Pixels of [row, row+height) x [col, col+width) at a level, which must lie inside it; (3, H, W).

        Exact when the level's downsample is an integer; otherwise (odd level-0 sizes) the region's origin falls
        between level pixels and OpenSlide interpolates, off by less than half a pixel of that level."""
        lv = self.levels[level]
        if row < 0 or col < 0 or row + height > lv.height or col + width > lv.width:
            raise ValueError(f"region {row},{col} {height}x{width} outside level {level} ({lv.height}x{lv.width})")
        ds = self._downsamples[level]
        try:
            rgba = np.asarray(self._slide.read_region((round(col * ds), round(row * ds)), level, (width, height)))
        except self._error as err:
            raise EqsegError(f"{self.path}: cannot read level {level} at {row},{col} ({_first_line(err)}; truncated or corrupt slide)") from None
        return np.moveaxis(on_white(rgba), -1, 0)

    def read_level(self, level: int) -> np.ndarray:
        lv = self.levels[level]
        return self.read(level, 0, 0, lv.height, lv.width)

    def close(self) -> None:
        self._slide.close()


def on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of (H, W, 4) straight-alpha RGBA composited over white. openslide-python has already divided OpenSlide's
    premultiplied colours by alpha, so opaque pixels keep their values and fully transparent ones become 255."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if (alpha == 255).all():
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    return ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
