"""Raster label masks of GeoTIFF scenes: a single-band class raster beside the scene (as Inria, LandCover.ai and the
Massachusetts buildings ship their labels), read window by window onto the scene's grid for eqseg.tiling.geotiff.

On the scene's grid the mask is read directly; on another grid (CRS, resolution, extent) it is resampled with
nearest neighbour, since class ids must never be blended. Nodata, unmapped values and pixels outside the mask's
extent become IGNORE ("no label"), never class 0. Windows are converted in chunks of CHUNK_PIXELS, so a large scene
costs no more memory than its strip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.warp
import rasterio.windows
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.tiling.protocol import require_file
from eqseg.tiling.raster_io import open_raster

CHUNK_PIXELS = 4 * 2**20  # most mask pixels resampled and converted at once (a few bytes each beside the strip)
WARP_TOLERANCE = 0.0  # GDAL's approximate transformer (0.125 px by default) moves nearest-neighbour picks near pixel
# edges; exact transforms cost little beside decoding


class MaskLabels:
    """The class ids of a scene's raster label mask, on the scene's grid (see the module's docstring).

    `values` maps raw mask values to class ids (unmapped values: IGNORE); without it, raw values are class ids and
    any other than 0..num_classes-1 and 255 is refused, naming the file and the values, when its window is read.
    """

    def __init__(self, path: Path, scene: Path, crs, transform, shape: tuple[int, int], values: dict[int, int] | None,
                 num_classes: int):
        require_file(path, "label mask")
        self.path, self.values, self.num_classes = path, values, num_classes
        self._crs, self._transform = crs, transform
        self._ds = open_raster(path)
        try:
            self._check(scene, crs, transform, shape)
        except EqsegError:
            self._ds.close()
            raise

    def _check(self, scene: Path, crs, transform, shape: tuple[int, int]) -> None:
        ds, path = self._ds, self.path
        if ds.count != 1:
            raise EqsegError(f"{path}: label mask has {ds.count} bands; a class mask has one band of class values")
        self.dtype = np.dtype(ds.dtypes[0])
        if self.dtype.kind not in "ui":
            raise EqsegError(f"{path}: label mask has {self.dtype} pixels; a class mask holds integer class values")
        flags = set(ds.mask_flag_enums[0])
        self._mask_band = MaskFlags.per_dataset in flags  # an internal or .msk mask: its zeros are no label
        nd, info = ds.nodata, np.iinfo(self.dtype)
        # a nodata value no pixel can hold (NaN, -9999 on bytes) marks nothing, and GDAL's warper refuses it
        self._nodata = nd if nd is not None and float(nd).is_integer() and info.min <= nd <= info.max else None
        self._table: np.ndarray | None = None  # raw value -> class id, for 8- and 16-bit unsigned masks with values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            mask_crs, mask_tf = ds.crs, ds.transform
        size = max(abs(transform.a), abs(transform.e), abs(transform.b), abs(transform.d))
        same = ds.shape == tuple(shape) and mask_tf.almost_equals(transform, precision=1e-6 * size)
        grid = f"{ds.height}x{ds.width} px, transform {tuple(round(v, 6) for v in mask_tf[:6])}"
        if mask_crs is None or crs is None:
            # a mask with no georeferencing at all (no CRS, no geotransform) of the scene's shape is the scene's grid
            # pixel for pixel, as solaris and many exports write them
            bare = mask_crs is None and mask_tf.is_identity and not ds.gcps[0]
            if not (same or (bare and ds.shape == tuple(shape))):
                if mask_crs is None:
                    raise EqsegError(f"{path}: label mask has no CRS and its grid ({grid}) differs from the scene "
                                     f"{scene.name}'s ({shape[0]}x{shape[1]} px), so it cannot be placed; give it the "
                                     "scene's CRS (gdal_edit.py -a_srs) or the scene's grid")
                raise EqsegError(f"{path}: the scene {scene.name} has no CRS, so a label mask on another grid "
                                 f"({grid}) cannot be placed on it")
            self._warp = False
        else:
            self._warp = not (same and mask_crs == crs)
        if self._warp:
            self._check_overlap(scene, crs, transform, shape, mask_crs)

    def _check_overlap(self, scene: Path, crs, transform, shape, mask_crs) -> None:
        """Refuse a mask that covers none of the scene (a wrong file or CRS), which would label nothing."""
        from rasterio.transform import array_bounds

        left, bottom, right, top = rasterio.warp.transform_bounds(mask_crs, crs, *self._ds.bounds, densify_pts=21)
        s_left, s_bottom, s_right, s_top = array_bounds(shape[0], shape[1], transform)
        if left >= s_right or right <= s_left or bottom >= s_top or top <= s_bottom:
            raise EqsegError(f"{self.path}: label mask does not overlap the scene {scene.name} (after reprojection to "
                             "its CRS)")

    @property
    def resampled(self) -> bool:
        """Whether the mask lies on another grid and is resampled with nearest neighbour."""
        return self._warp

    def read(self, win: rasterio.windows.Window, out: np.ndarray) -> None:
        """Class ids (uint8, IGNORE for no label) of a window of the scene's grid into `out` (the window's shape)."""
        h, w = out.shape
        step = max(1, CHUNK_PIXELS // max(1, w))
        row0, col0 = int(win.row_off), int(win.col_off)
        for r in range(0, h, step):
            part = out[r : r + step]
            sub = rasterio.windows.Window(col0, row0 + r, w, part.shape[0])
            try:
                raw, invalid = self._warped(sub) if self._warp else self._direct(sub)
            except RasterioIOError as err:
                raise EqsegError(f"{self.path}: cannot read the label mask at row {row0 + r} (truncated or corrupt "
                                 f"file: {str(err).splitlines()[0][:200]})") from None
            self._classes(raw, invalid, part)

    def _direct(self, win) -> tuple[np.ndarray, np.ndarray | None]:
        raw = self._ds.read(1, window=win)
        if self._mask_band:
            return raw, self._ds.read_masks(1, window=win) == 0
        if self._nodata is not None:
            return raw, raw == raw.dtype.type(self._nodata)
        return raw, None

    def _warped(self, win) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-neighbour resampling onto the window; an alpha band tells the pixels that got no value (outside
        the mask, or under its nodata) from raw values, whatever they are."""
        dst = np.zeros((2, int(win.height), int(win.width)), dtype=self.dtype)
        rasterio.warp.reproject(
            rasterio.band(self._ds, 1), dst, src_nodata=self._nodata, dst_transform=rasterio.windows.transform(win, self._transform),
            dst_crs=self._crs, dst_alpha=2, resampling=Resampling.nearest, tolerance=WARP_TOLERANCE,
        )
        return dst[0], dst[1] == 0

    def _classes(self, raw: np.ndarray, invalid: np.ndarray | None, out: np.ndarray) -> None:
        if self.values is not None:
            if raw.dtype.itemsize <= 2 and raw.dtype.kind == "u":  # one lookup: every raw value indexes a table
                if self._table is None:
                    self._table = np.full(np.iinfo(raw.dtype).max + 1, IGNORE, dtype=np.uint8)
                    for v, c in self.values.items():
                        if 0 <= v < self._table.size:
                            self._table[v] = c
                np.take(self._table, raw, out=out)
            else:
                out.fill(IGNORE)
                for v, c in self.values.items():
                    out[raw == v] = c
        else:
            bad = ((raw >= self.num_classes) & (raw != IGNORE)) | (raw < 0)
            if invalid is not None:
                bad &= ~invalid
            if bad.any():
                found = np.unique(raw[bad])
                shown = f"{found[:8].tolist()}{f' and {found.size - 8} more' if found.size > 8 else ''}"
                raise EqsegError(f"{self.path}: label mask values {shown} are not class ids 0..{self.num_classes - 1} "
                                 "or 255 (no label); map them with mask_values")
            np.copyto(out, raw, casting="unsafe")
        if invalid is not None:
            out[invalid] = IGNORE

    def close(self) -> None:
        self._ds.close()
