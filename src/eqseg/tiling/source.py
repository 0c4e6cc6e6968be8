"""The one interface of every tiling input, and the one place a dataset configuration becomes its sources.

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
  will_read     told the rows of tiles about to be read, in order, before the first (GeoTIFF scenes read the
                strips they need ahead exactly; the others ignore it)

`open_sources(cfg, root)`, `source_names(cfg, root)` and `open_source(cfg, name, root)` dispatch on the dataset's
`kind` (pairs, geotiff, slide) through one table; nothing else needs to know which kinds exist.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from eqseg.errors import EqsegError

if TYPE_CHECKING:
    from affine import Affine

    from eqseg.tiling.sources import TileRead


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

    def will_read(self, rows: list[tuple[int, int]]) -> None:
        """No reading ahead to plan."""


# --------------------------------------------------------------------------------------------- dispatch on kind
@dataclass(frozen=True)
class _Kind:
    names: Callable[[Any, Path], list[str]]  # source names in opening order (the order splits are drawn in)
    open: Callable[[Any, Path, "str | None"], list]  # the sources, or only those of the given name


def _pair_names(cfg, root: Path) -> list[str]:
    from eqseg.tiling.sources import find_pairs

    return [img.stem for img, _ in find_pairs(root / cfg.images, root / cfg.masks, cfg.mask_suffix)]


def _open_pairs(cfg, root: Path, only: str | None) -> list:
    from eqseg.tiling.sources import PairSource, find_pairs

    return [
        PairSource(img, msk, cfg.mask_mode, cfg.mask_values, len(cfg.classes))
        for img, msk in find_pairs(root / cfg.images, root / cfg.masks, cfg.mask_suffix)
        if only is None or img.stem == only
    ]


def _scene_names(cfg, root: Path) -> list[str]:
    return [Path(s.raster).stem for s in cfg.scenes]


def _open_scenes(cfg, root: Path, only: str | None) -> list:
    from eqseg.tiling.sources import IGNORE, GeoSource, load_vector_labels, open_raster

    sources = []
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")  # vector labels load (geopandas import
    try:  # included) while the first strips decode; a bad label file raises when its first strip is labelled
        for scene in cfg.scenes:
            raster = root / scene.raster
            if only is not None and raster.stem != only:
                continue
            with open_raster(raster) as ds:
                crs, bounds = ds.crs, ds.bounds
            shapes = loader.submit(load_vector_labels, root / scene.labels, raster, crs, bounds, cfg.class_field,
                                   cfg.class_values, len(cfg.classes), cfg.layer)
            sources.append(GeoSource(raster, shapes, cfg.all_touched, IGNORE if cfg.unlabelled == "ignore" else 0))
    finally:
        loader.shutdown(wait=False)
    return sources


def _slide_names(cfg, root: Path) -> list[str]:
    from eqseg.slides.readers import slide_name

    return [slide_name(s.image) for s in cfg.slides]


def _open_slides(cfg, root: Path, only: str | None) -> list:
    from eqseg.slides.readers import slide_name
    from eqseg.slides.source import open_slides

    if only is not None:
        cfg = cfg.model_copy(update={"slides": [s for s in cfg.slides if slide_name(s.image) == only]})
    return open_slides(cfg, root)


KINDS: dict[str, _Kind] = {
    "pairs": _Kind(_pair_names, _open_pairs),
    "geotiff": _Kind(_scene_names, _open_scenes),
    "slide": _Kind(_slide_names, _open_slides),
}


def _kind(cfg) -> _Kind:
    kind = getattr(cfg, "kind", None)  # any dataset configuration: its `kind` field is the discriminator
    if kind not in KINDS:
        raise EqsegError(f"dataset kind {kind!r} has no sources (kinds: {sorted(KINDS)})")
    return KINDS[kind]


def source_names(cfg, root: Path = Path(".")) -> list[str]:
    """Names of a dataset's sources, in the order `open_sources` opens them (the order splits are drawn in)."""
    return _kind(cfg).names(cfg, root)


def open_sources(cfg, root: Path = Path(".")) -> list[Source]:
    """Every source of a dataset (eqseg.config PairsDataset, GeoTiffDataset or SlideDataset), opened."""
    return _kind(cfg).open(cfg, root, None)


def open_source(cfg, name: str, root: Path = Path(".")) -> Source:
    """Only the named source of a dataset (the others are not opened: slides compute their tissue map on opening)."""
    names = source_names(cfg, root)
    if name not in names:
        raise EqsegError(f"no source {name!r} in the dataset (sources: {names})")
    sources = _kind(cfg).open(cfg, root, name)
    for s in sources[1:]:  # two files of the same name in different folders: the first, as the store's index says
        s.close()
    return sources[0]
