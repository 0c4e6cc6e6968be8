"""The one place a dataset configuration becomes its sources: `open_sources(cfg, root)`, `source_names(cfg, root)` and
`open_source(cfg, name, root)` dispatch on the dataset's `kind` (pairs, geotiff, slide) through one table (`DATASET_KINDS`);
nothing else needs to know which kinds exist. Every source implements eqseg.tiling.protocol.Source.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.slides.readers import slide_name
from eqseg.slides.source import open_slides
from eqseg.tiling.geotiff import GeoSource
from eqseg.tiling.raster_io import open_raster
from eqseg.tiling.pairs import PairSource, dataset_pairs
from eqseg.tiling.protocol import Source
from eqseg.tiling.raster_mask import MaskLabels
from eqseg.tiling.vector import load_vector_labels


@dataclass(frozen=True)
class _Kind:
    names: Callable[[Any, Path], list[str]]  # source names in opening order (the order splits are drawn in)
    open: Callable[[Any, Path, "str | None"], list]  # the sources, or only those of the given name
    groups: Callable[[Any, Path], list] | None = None  # the group of each source, in name order (split.by=group);
    # None: the kind's sources have no groups


def _pair_names(cfg, root: Path) -> list[str]:
    return [p.name for p in dataset_pairs(cfg.images, cfg.masks, cfg.mask_suffix, root)]


def _pair_groups(cfg, root: Path) -> list:
    return [p.group for p in dataset_pairs(cfg.images, cfg.masks, cfg.mask_suffix, root)]


def _open_pairs(cfg, root: Path, only: str | None) -> list:
    colours = cfg.colour_table() if cfg.mask_mode == "colours" else None
    return [
        PairSource(p.image, p.mask, cfg.mask_mode, cfg.mask_values, len(cfg.classes), p.name, p.group, colours)
        for p in dataset_pairs(cfg.images, cfg.masks, cfg.mask_suffix, root)
        if only is None or p.name == only
    ]


def _scene_names(cfg, root: Path) -> list[str]:
    return [Path(s.raster).stem for s in cfg.scenes]


def _open_scenes(cfg, root: Path, only: str | None) -> list:
    sources = []
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labels")  # vector labels load (geopandas import
    try:  # included) while the first strips decode; a bad label file raises when its first strip is labelled
        for scene in cfg.scenes:
            raster = root / scene.raster
            if only is not None and raster.stem != only:
                continue
            with open_raster(raster) as ds:
                crs, bounds = ds.crs, ds.bounds
                if scene.mask is not None:  # a raster label mask: checked against the scene's grid now
                    mask = MaskLabels(root / scene.mask, raster, crs, ds.transform, ds.shape, cfg.mask_values, len(cfg.classes))
            if scene.mask is not None:
                sources.append(GeoSource(raster, [], mask=mask))
                continue
            shapes = loader.submit(load_vector_labels, root / scene.labels, raster, crs, bounds, cfg.class_field,
                                   cfg.class_values, len(cfg.classes), cfg.layer)
            sources.append(GeoSource(raster, shapes, cfg.all_touched, IGNORE if cfg.unlabelled == "ignore" else 0))
    finally:
        loader.shutdown(wait=False)
    return sources


def _slide_names(cfg, root: Path) -> list[str]:
    return [slide_name(s.image) for s in cfg.slides]


def _open_slides(cfg, root: Path, only: str | None) -> list:
    if only is not None:
        cfg = cfg.model_copy(update={"slides": [s for s in cfg.slides if slide_name(s.image) == only]})
    return open_slides(cfg, root)


DATASET_KINDS: dict[str, _Kind] = {  # dataset kind -> how to name and open its sources
    "pairs": _Kind(_pair_names, _open_pairs, _pair_groups),
    "geotiff": _Kind(_scene_names, _open_scenes),
    "slide": _Kind(_slide_names, _open_slides),
}


def _kind(cfg) -> _Kind:
    kind = getattr(cfg, "kind", None)  # any dataset configuration: its `kind` field is the discriminator
    if kind not in DATASET_KINDS:
        raise EqsegError(f"dataset kind {kind!r} has no sources (kinds: {sorted(DATASET_KINDS)})")
    return DATASET_KINDS[kind]


def source_names(cfg, root: Path = Path(".")) -> list[str]:
    """Names of a dataset's sources, in the order `open_sources` opens them (the order splits are drawn in)."""
    return _kind(cfg).names(cfg, root)


def source_groups(cfg, root: Path = Path(".")) -> list:
    """The group of each source, in `source_names` order (None for kinds without groups), read from file names
    only: what split.by=group draws."""
    kind = _kind(cfg)
    return kind.groups(cfg, root) if kind.groups else [None] * len(kind.names(cfg, root))


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
