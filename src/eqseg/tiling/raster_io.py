"""Opening a raster with rasterio, one place for its checks: shared by GeoTIFF scenes, their raster label masks and
the tile store, so that neither source module imports the other."""

from __future__ import annotations

import warnings
from pathlib import Path

import rasterio
import rasterio.windows
from rasterio.errors import RasterioIOError

from eqseg.errors import EqsegError
from eqseg.tiling.protocol import require_file


def open_raster(path: Path, **options):
    """Open a raster for reading (GDAL open options as keywords), refusing files whose last block cannot be read."""
    require_file(path, "raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path, **options)
    except RasterioIOError as err:
        raise EqsegError(f"{path}: cannot open raster (corrupt, truncated or not a raster: {err})") from None
    try:  # a truncated TIFF opens fine; reading its last block is what fails
        ds.read(1, window=rasterio.windows.Window(ds.width - 1, ds.height - 1, 1, 1))
    except RasterioIOError as err:
        ds.close()
        raise EqsegError(f"{path}: cannot read raster pixels (truncated or corrupt file: {_gdal_reason(err)})") from None
    return ds


def _gdal_reason(err: Exception) -> str:
    """GDAL's own reason for a failed read (rasterio's message only says 'see previous exception')."""
    cause = err.__cause__ or err.__context__
    text = str(cause if cause is not None and str(cause) else err)
    return (text.splitlines() or [""])[0][:200]
