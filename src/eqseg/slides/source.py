"""A whole-slide image as a tiling source: pixels at one pyramid level, tissue found at a coarse level, labels from
a mask raster (at any level) or from GeoJSON annotations in level-0 pixel coordinates (as QuPath exports them).

Coordinates (row, col, sizes) are pixels of the chosen level; footprints are boxes in level-0 pixels, the frame that
annotations and viewers use. A tile without tissue is never read at full resolution: its image stays zero and its
valid fraction (the share of tissue) is 0, which the tile store and `eqseg predict` both skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from shapely.geometry import box

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.slides.readers import SlideReader, open_slide, slide_name
from eqseg.slides.tiff import level_for_mpp
from eqseg.slides.tissue import tissue_mask
from eqseg.tiling.pairs import mask_to_classes
from eqseg.tiling.protocol import SourceDefaults, TileRead

TISSUE_MIN_SIDE = 1024  # the tissue map comes from the coarsest level at least this large
THUMB_MAX_SIDE = 4096  # a larger tissue level (no pyramid) is subsampled while read, strip by strip


def choose_level(slide: SlideReader, mpp: float | None, level: int | None) -> int:
    if mpp is not None:
        if any(lv.mpp is None for lv in slide.levels):
            raise EqsegError(f"{slide.path}: no resolution in its metadata (OME PhysicalSizeX, Aperio MPP, resolution tags or openslide.mpp-x); give level instead of mpp")
        return level_for_mpp([lv.mpp for lv in slide.levels], mpp)
    level = level or 0
    if level >= len(slide.levels):
        raise EqsegError(f"{slide.path}: no pyramid level {level} (the slide has {len(slide.levels)})")
    return level


def tissue_level(slide: SlideReader, level: int) -> int:
    """The coarsest level, not finer than `level`, that is still at least TISSUE_MIN_SIDE pixels on its longer side."""
    ok = [i for i in range(level, len(slide.levels)) if max(slide.levels[i].height, slide.levels[i].width) >= TISSUE_MIN_SIDE]
    return ok[-1] if ok else level


def thumbnail(slide: SlideReader, level: int) -> tuple[np.ndarray, int]:
    """The whole level, subsampled by an integer step when it is large (single-level slides); (image, step)."""
    lv = slide.levels[level]
    step = max(1, -(-max(lv.height, lv.width) // THUMB_MAX_SIDE))
    if step == 1:
        return slide.read_level(level), 1
    rows = []
    for r in range(0, lv.height, 256 * step):
        h = min(256 * step, lv.height - r)
        rows.append(slide.read(level, r, 0, h, lv.width)[:, ::step, ::step])
    return np.concatenate(rows, axis=1), step


@dataclass
class MaskLabels:
    """Class ids from a mask raster of the same slide, read at its level closest to the image level, nearest sampling."""

    path: Path
    mode: str
    values: dict[int, int] | None
    num_classes: int

    def attach(self, slide: SlideReader, level: int) -> None:
        self._mask = open_slide(self.path)
        img0, msk0, lv = slide.levels[0], self._mask.levels[0], slide.levels[level]
        if abs(img0.width / img0.height - msk0.width / msk0.height) > 0.01 * img0.width / img0.height:
            raise EqsegError(f"{self.path}: mask shape {msk0.height}x{msk0.width} does not match slide {slide.path.name} ({img0.height}x{img0.width})")
        wanted = lv.width / img0.width * msk0.width  # mask pixels across, at the image level's resolution
        self._level = int(np.argmin([abs(np.log(m.width / wanted)) for m in self._mask.levels]))
        m = self._mask.levels[self._level]
        self._sy, self._sx = m.height / lv.height, m.width / lv.width

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        m = self._mask.levels[self._level]
        if self._sy == 1 and self._sx == 1:
            raw = self._mask.read(self._level, row, col, height, width)
        else:
            ri = np.minimum(((row + np.arange(height) + 0.5) * self._sy).astype(np.int64), m.height - 1)
            ci = np.minimum(((col + np.arange(width) + 0.5) * self._sx).astype(np.int64), m.width - 1)
            part = self._mask.read(self._level, int(ri[0]), int(ci[0]), int(ri[-1] - ri[0] + 1), int(ci[-1] - ci[0] + 1))
            raw = part[:, ri - ri[0]][:, :, ci - ci[0]]
        return mask_to_classes(raw, self.mode, self.values, self.num_classes, self.path)

    def close(self) -> None:
        self._mask.close()


def read_annotations(path: Path, classes: dict[str, int] | None, num_classes: int) -> list:
    """(geometry, class id) pairs from GeoJSON in level-0 pixels: a FeatureCollection, a feature list or one feature."""
    from shapely.geometry import shape

    if not path.is_file():
        raise EqsegError(f"{path}: annotations not found")
    try:
        data = json.loads(path.read_text())
        features = data.get("features", [data]) if isinstance(data, dict) else list(data)
        pairs = [(shape(f["geometry"]), _classification(f)) for f in features if f.get("geometry")]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise EqsegError(f"{path}: not GeoJSON annotations ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if classes is None:
        return [(g, 1) for g, _ in pairs if not g.is_empty]
    unknown = sorted({str(name) for _, name in pairs} - set(classes))
    if unknown:
        raise EqsegError(f"{path}: annotation classes {unknown} are not in annotation_classes")
    bad = sorted({c for c in classes.values() if not 0 <= c < num_classes})
    if bad:
        raise EqsegError(f"{path}: class ids {bad} are outside 0..{num_classes - 1} (classes)")
    return [(g, classes[str(name)]) for g, name in pairs if not g.is_empty]


def _classification(feature: dict) -> str | None:
    """QuPath's `classification` ({name, color} or a plain name); None when unclassified."""
    c = (feature.get("properties") or {}).get("classification")
    return c.get("name") if isinstance(c, dict) else c


@dataclass
class AnnotationLabels:
    """Class ids rasterised per tile from polygons in level-0 pixel coordinates (0 outside every polygon)."""

    path: Path
    classes: dict[str, int] | None
    num_classes: int

    def attach(self, slide: SlideReader, level: int) -> None:
        from shapely import STRtree

        self._shapes = read_annotations(self.path, self.classes, self.num_classes)
        self._tree = STRtree([g for g, _ in self._shapes]) if self._shapes else None
        self._ds = slide.levels[level].downsample

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        import rasterio.features
        from affine import Affine

        out = np.zeros((height, width), dtype=np.uint8)
        if self._tree is None:
            return out
        d = self._ds
        hits = self._tree.query(box(col * d, row * d, (col + width) * d, (row + height) * d))
        if not len(hits):
            return out
        return rasterio.features.rasterize(
            [self._shapes[i] for i in sorted(hits)], out_shape=(height, width),
            transform=Affine(d, 0, col * d, 0, d, row * d), fill=0, dtype=np.uint8,
        )

    def close(self) -> None:
        pass


@dataclass
class SlideSource(SourceDefaults):
    """One slide read at one level (eqseg.tiling.protocol.Source, with `is_slide`, `level`, `mpp`, `downsample` and
    `background` of its own, plus the `tissue` map)."""

    is_slide: ClassVar[bool] = True
    empty_reason: ClassVar[str] = "no tissue was found on it"

    path: Path
    labels: MaskLabels | AnnotationLabels
    mpp: float | None = None
    level: int | None = None
    tissue_min_saturation: float = 0.05
    reader: str = "auto"  # auto, tifffile or openslide (eqseg.slides.readers.open_slide)
    background: int = field(default=0, init=False)  # class of the pixels skipped as non-tissue

    def __post_init__(self):
        self.name = slide_name(self.path)
        self._slide = open_slide(self.path, self.reader)
        self.level = choose_level(self._slide, self.mpp, self.level)
        lv = self._slide.levels[self.level]
        self.height, self.width, self.downsample, self.mpp = lv.height, lv.width, lv.downsample, lv.mpp
        self.bands, self.dtype = self._slide.bands, self._slide.dtype
        self.crs, self.transform = None, None
        self.labels.attach(self._slide, self.level)
        t = tissue_level(self._slide, self.level)
        thumb, step = thumbnail(self._slide, t)
        self.tissue = tissue_mask(thumb, self.tissue_min_saturation)
        self._scale = self._slide.levels[t].downsample * step / self.downsample  # level pixels per tissue-map pixel

    def _tissue_region(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        s = self._scale
        return self.tissue[int(row // s) : max(int(row // s) + 1, int(-(-(row + height) // s))),
                           int(col // s) : max(int(col // s) + 1, int(-(-(col + width) // s)))]

    def footprint(self, row: int, col: int, height: int, width: int):
        import shapely

        d = self.downsample
        return shapely.box(col * d, row * d, (col + width) * d, (row + height) * d)

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        return bool(self._tissue_region(row, col, height, width).any())

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        h, w = min(size, row_end - row, self.height - row), min(size, col_end - col, self.width - col)
        region = self._tissue_region(row, col, h, w)
        fraction = float(region.mean()) * (h * w) / float(size * size) if region.size else 0.0
        image = np.zeros((self.bands, size, size), dtype=self.dtype)
        if fraction > 0:
            image[:, :h, :w] = self._slide.read(self.level, row, col, h, w)
        mask = np.full((size, size), IGNORE, dtype=np.uint8)
        mask[:h, :w] = self.labels.read(row, col, h, w)
        valid = np.zeros((size, size), dtype=bool)
        valid[:h, :w] = True
        return TileRead(image, mask, fraction, valid)

    def close(self) -> None:
        self._slide.close()
        self.labels.close()


def open_slides(cfg, root: Path) -> list[SlideSource]:
    """The sources of a `kind: slide` dataset (eqseg.config.SlideDataset)."""
    n = len(cfg.classes)
    sources = []
    for s in cfg.slides:
        labels = (
            MaskLabels(root / s.mask, cfg.mask_mode, cfg.mask_values, n) if s.mask
            else AnnotationLabels(root / s.annotations, cfg.annotation_classes, n)
        )
        sources.append(SlideSource(root / s.image, labels, cfg.mpp, cfg.level, cfg.tissue_min_saturation, cfg.reader))
    return sources
