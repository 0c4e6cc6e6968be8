"""The one interface of every tiling input: the `Source` protocol, the defaults of its optional capabilities and
what reading a tile returns. Nothing here knows an implementation; eqseg.tiling.registry opens them by dataset kind.

A `Source` hands out padded tiles of one image (a GeoTIFF scene with vector labels, an image/mask pair, a
whole-slide image at one pyramid level) and says where they lie. Besides the required members, every source has
the optional capabilities with explicit values (`SourceDefaults` gives the defaults), so that callers never probe
with hasattr/getattr:

  is_slide      a whole-slide image (tissue map, pyramid level, level-0 pixel footprints)
  level         pyramid level the pixels come from (0 for everything but slides)
  mpp           microns per pixel of that level, when known (slides)
  downsample    level-0 pixels per pixel of that level (1.0 for everything but slides)
  background    class id of the pixels that were skipped rather than read (slides: non-tissue is class 0);
                None where skipped pixels are nodata
  empty_reason  why a source without a single valid pixel has none, for the one-line error
  group         the group a source belongs to, drawn into one split whole by split.by=group (a scene cut into
                parts: pairs whose `images` folder has a `*`); None where sources have no group
  will_read     told the rows of tiles about to be read, in order, before the first (GeoTIFF scenes read the
                strips they need ahead exactly; the others ignore it)

A tile read (`TileRead`) holds the image (C, S, S), the mask (S, S, uint8 class ids, 255 = no label: padding,
nodata, or unknown), the fraction of valid pixels and the valid pixels themselves (valid: image pixels inside the
source and not nodata, labelled or not; band statistics are taken over them).

The implementations are siblings: eqseg.tiling.geotiff (GeoTIFF scenes; their labels from eqseg.tiling.vector),
eqseg.tiling.pairs (image/mask pairs) and eqseg.slides.source (whole-slide images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from eqseg.errors import EqsegError

if TYPE_CHECKING:
    from affine import Affine


@runtime_checkable
class Source(Protocol):
    name: str  # unique within a dataset: the file name without suffixes
    path: Path  # the file the pixels come from (the image of a pair)
    height: int
    width: int
    bands: int
    dtype: np.dtype
    crs: Any  # rasterio CRS, or None for unreferenced images and slides
    transform: Affine | None  # pixel -> CRS coordinates; None without georeferencing
    is_slide: bool
    level: int
    mpp: float | None
    downsample: float
    background: int | None
    empty_reason: str
    group: str | None

    def footprint(self, row: int, col: int, height: int, width: int) -> Any:
        """Shapely box of a pixel region, in the CRS (scenes), pixels (pairs) or level-0 pixels (slides); given
        equal-length integer arrays instead of numbers, an array of boxes (one call for every tile of a source)."""

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        """False only when the region surely holds no valid pixel (judged cheaply; reading the tile decides)."""

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        """The size x size tile at (row, col): pixels of [row, row_end) x [col, col_end) inside, padding outside."""

    def will_read(self, rows: list[tuple[int, int]]) -> None:
        """(row, height) of every row of tiles about to be read, in reading order (a hint for reading ahead)."""

    def close(self) -> None: ...


class SourceDefaults:
    """Values of the optional capabilities for sources that do not have them; every source class derives from it."""

    is_slide: ClassVar[bool] = False
    level = 0
    mpp: float | None = None
    downsample = 1.0
    background: int | None = None
    empty_reason: ClassVar[str] = "every pixel is nodata"
    group: str | None = None

    def will_read(self, rows: list[tuple[int, int]]) -> None:
        """No reading ahead to plan."""


@dataclass
class TileRead:
    image: np.ndarray
    mask: np.ndarray
    valid_fraction: float
    valid: np.ndarray | None = None  # (S, S) bool: inside the source and not nodata; None: as the valid fraction says


def require_file(path: Path, what: str) -> None:
    """Refuse a missing path, or one that is not a file, naming `what` it should be."""
    if not path.exists():
        raise EqsegError(f"{path}: {what} not found")
    if not path.is_file():
        raise EqsegError(f"{path}: {what} is not a file")
