"""The tile store: a few large memory-mapped arrays plus a GeoParquet index, written atomically.

Layout of `results/tiles/{dataset}/`:
  images.npy     (N, C, S, S) in the sources' dtype (uint8/uint16/float32), memory-mapped for random access
  masks.npy      (N, S, S) uint8 class ids, 255 = no label (padding, nodata)
  index.parquet  GeoParquet, one row a tile: tile_id (row in the arrays), source, level (pyramid level of a slide,
                 0 otherwise; row and col are pixels of that level), row, col, size, split, valid_fraction (share
                 of valid pixels, of tissue for slides), px_<class> counts, px_unlabelled, geometry (footprint in
                 the source CRS, in pixel space for unreferenced images, in level-0 pixels for slides), crs
  meta.json      classes, bands, dtype, tile size, band statistics of the train split, sources, split counts
Few files keep DVC fast (it hashes per file) and the loader cheap (one mmap, no per-tile open).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eqseg.config import GeoTiffDataset, PairsDataset, SlideDataset, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling import grid, npy
from eqseg.tiling.sources import IGNORE, GeoSource, PairSource, find_pairs, load_vector_labels, open_raster
from eqseg.utils.atomic import atomic_dir, write_json


def open_sources(cfg: PairsDataset | GeoTiffDataset | SlideDataset, root: Path) -> list:
    n = len(cfg.classes)
    if isinstance(cfg, PairsDataset):
        return [
            PairSource(img, msk, cfg.mask_mode, cfg.mask_values, n)
            for img, msk in find_pairs(root / cfg.images, root / cfg.masks, cfg.mask_suffix)
        ]
    if isinstance(cfg, SlideDataset):
        from eqseg.slides.source import open_slides

        return open_slides(cfg, root)
    sources = []
    for scene in cfg.scenes:
        raster = root / scene.raster
        with open_raster(raster) as ds:
            crs, bounds = ds.crs, ds.bounds
        shapes = load_vector_labels(root / scene.labels, raster, crs, bounds, cfg.class_field, cfg.class_values, n, cfg.layer)
        sources.append(GeoSource(raster, shapes, cfg.all_touched))
    return sources


def source_path(src) -> Path:
    return getattr(src, "path", None) or src.image_path


def candidate_tiles(sources: list, split_cfg, tile: TileConfig) -> list[tuple[int, int, int, int, int, int]]:
    """(source, unit, row, col, row_end, col_end) of every candidate tile, in reading order (source, row, col).

    A unit is what a split is drawn for: a whole source (split by source) or a square block of a scene (split by
    block). The ends are those of the source or of the block holding the tile, so that tiles never cross a block
    edge and splits cannot leak; pixels past the ends are padding.
    """
    plan = []
    if split_cfg.by == "source":
        for i, src in enumerate(sources):
            plan += [(i, i, r, c, src.height, src.width) for r, c in grid.tile_windows(0, 0, src.height, src.width, tile.size, tile.overlap)]
        return plan
    grid.check_block_size(split_cfg.block_size, tile.size, tile.overlap, "split.block_size")
    unit = 0
    for i, src in enumerate(sources):
        for r0, c0, h, w in grid.blocks(src.height, src.width, split_cfg.block_size):
            plan += [(i, unit, r, c, r0 + h, c0 + w) for r, c in grid.tile_windows(r0, c0, h, w, tile.size, tile.overlap)]
            unit += 1
    return sorted(plan, key=lambda t: (t[0], t[2], t[3]))


def unit_splits(units: list[int], n_sources: int, split_cfg) -> dict[int, str]:
    """The split of each unit that kept tiles: sources are drawn among all sources, blocks among kept blocks only
    (so that nodata or background blocks take no share of a split)."""
    if split_cfg.by == "source":
        if n_sources < sum(1 for f in split_cfg.fractions.values() if f > 0):
            raise EqsegError(
                f"split.by=source needs a source for each split with a share (dataset has {n_sources}): use split.by=block"
            )
        return dict(enumerate(grid.assign_splits(n_sources, split_cfg.fractions, split_cfg.seed)))
    return dict(zip(units, grid.assign_splits(len(units), split_cfg.fractions, split_cfg.seed)))


def _store_dtype(sources: list) -> np.dtype:
    return np.result_type(*[s.dtype for s in sources])


class RowWriter:
    """Rows of a new .npy file written with pwrite: unlike stores into a memmap, written pages are not counted in
    the process's resident memory, which therefore stays flat however large the store grows."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        mm = npy.open_for_write(path, shape, dtype)
        self._offset, self.dtype = mm.offset, mm.dtype
        self._row = int(np.prod(shape[1:], dtype=np.int64)) * mm.dtype.itemsize
        del mm
        self._fd = os.open(path, os.O_WRONLY)

    def write(self, i: int, row: np.ndarray) -> None:
        os.pwrite(self._fd, np.ascontiguousarray(row, dtype=self.dtype).data, self._offset + i * self._row)

    def close(self) -> None:
        os.close(self._fd)


def tile_sums(image: np.ndarray, mask: np.ndarray, step: int = 2) -> np.ndarray:
    """(3, C) float64: per-band count, sum and sum of squares over the labelled pixels of one tile, on every
    `step`-th row and column (a quarter of the pixels is plenty for normalisation, and 4x cheaper)."""
    image, mask = image[:, ::step, ::step], mask[::step, ::step]
    keep = mask != IGNORE
    n = int(np.count_nonzero(keep))
    out = np.zeros((3, image.shape[0]))
    if n == 0:
        return out
    x = image.astype(np.float64).reshape(image.shape[0], -1)
    if n < keep.size:
        x = x[:, keep.ravel()]
    out[0], out[1], out[2] = n, x.sum(axis=1), np.einsum("ij,ij->i", x, x)
    return out


def band_moments(sums: np.ndarray) -> tuple[list, list]:
    """Mean and standard deviation per band from summed tile_sums."""
    cnt = max(float(sums[0].max()), 1.0)
    mean = sums[1] / cnt
    std = np.sqrt(np.maximum(sums[2] / cnt - mean**2, 0)) + 1e-6
    return mean.tolist(), std.tolist()


def _describe(src) -> dict:
    out = dict(name=src.name, height=src.height, width=src.width, crs=src.crs.to_string() if src.crs else None,
               transform=list(src.transform)[:6] if src.transform is not None else None)
    if hasattr(src, "level"):
        out |= dict(level=src.level, mpp=src.mpp, downsample=src.downsample)
    return out


def build_tile_store(name: str, cfg: PairsDataset | GeoTiffDataset | SlideDataset, tile: TileConfig, out: Path, root: Path = Path(".")) -> dict:
    """Tile every source of a dataset into `out` (replaced atomically) in one streaming pass; return the meta record.

    Tiles are read in row order so that each source decodes its file once; splits are drawn afterwards among the
    units that kept tiles, and band statistics of the train split come from per-unit sums gathered on the way.
    """
    import geopandas as gpd

    sources = open_sources(cfg, root)
    bands = {s.bands for s in sources}
    if len(bands) != 1:
        raise EqsegError(f"datasets.{name}: sources have different band counts {sorted(bands)}")
    n_bands = bands.pop()
    dtype = _store_dtype(sources)
    plan = candidate_tiles(sources, cfg.split, tile)
    S = tile.size
    classes = list(cfg.classes)
    rows, sums, best, kept = [], {}, [0.0] * len(sources), set()
    with atomic_dir(out) as tmp:
        images = RowWriter(tmp / "images.npy", (len(plan), n_bands, S, S), dtype)
        masks = RowWriter(tmp / "masks.npy", (len(plan), S, S), np.uint8)
        n = 0
        for i, unit, r, c, r_end, c_end in tqdm(plan, desc=f"tile {name}", unit="tile", disable=None, mininterval=2):
            src = sources[i]
            h, w = min(S, r_end - r), min(S, c_end - c)
            if not src.has_valid_pixels(r, c, h, w):
                continue
            read = src.read_tile(r, c, S, r_end, c_end)
            best[i] = max(best[i], read.valid_fraction)
            if read.valid_fraction <= 0 or read.valid_fraction < tile.min_valid_fraction:
                continue
            images.write(n, read.image)
            masks.write(n, read.mask)
            sums[unit] = sums.get(unit, 0) + tile_sums(read.image, read.mask)
            kept.add(i)
            counts = np.bincount(read.mask.ravel(), minlength=256)
            rows.append(
                dict(
                    tile_id=n, source=src.name, level=getattr(src, "level", 0), row=r, col=c, size=S, unit=unit,
                    valid_fraction=read.valid_fraction,
                    **{f"px_{cls}": int(counts[k]) for k, cls in enumerate(classes)},
                    px_unlabelled=int(counts[IGNORE]),
                    crs=src.crs.to_string() if src.crs else "",
                    geometry=src.footprint(r, c, h, w),
                )
            )
            n += 1
        images.close()
        masks.close()
        for src in sources:
            src.close()
        _check_every_source_kept_tiles(sources, best, kept, tile)
        npy.shrink(tmp / "images.npy", n)
        npy.shrink(tmp / "masks.npy", n)
        splits = unit_splits(sorted(sums), len(sources), cfg.split)
        index = gpd.GeoDataFrame(rows, geometry="geometry")
        index.insert(index.columns.get_loc("unit"), "split", index.unit.map(splits))
        index = index.drop(columns="unit")
        crss = {row["crs"] for row in rows}
        index = index.set_crs(crss.pop() if len(crss) == 1 and "" not in crss else None, allow_override=True)
        index.to_parquet(tmp / "index.parquet")
        train_units = [u for u in sums if splits[u] == "train"]
        if not train_units:
            raise EqsegError(f"datasets.{name}: the train split has no tiles (more sources or smaller split blocks needed)")
        mean, std = band_moments(sum(sums[u] for u in train_units))
        meta = dict(
            dataset=name, classes=classes, num_classes=len(classes), bands=n_bands, dtype=str(dtype),
            tile_size=S, overlap=tile.overlap, n_tiles=n, band_mean=mean, band_std=std,
            splits={s: int((index.split == s).sum()) for s in grid.SPLITS},
            sources=[_describe(s) for s in sources],
        )
        write_json(tmp / "meta.json", meta)
    return meta


def _check_every_source_kept_tiles(sources: list, best: list[float], kept: set[int], tile: TileConfig) -> None:
    """A source without a single tile is a mistake worth one clear line (all nodata, no tissue, threshold too high)."""
    for i, (src, frac) in enumerate(zip(sources, best)):
        if i in kept:
            continue
        if frac <= 0:
            what = "no tissue was found on it" if hasattr(src, "tissue") else "every pixel is nodata"
            raise EqsegError(f"{source_path(src)}: no tile has valid pixels ({what})")
        raise EqsegError(f"{source_path(src)}: no tile reaches tile.min_valid_fraction ({tile.min_valid_fraction}); the best has {frac:.3f}")


@dataclass
class TileStore:
    """Read side of the store: memory-mapped arrays, the index and the meta record."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        for f in ("images.npy", "masks.npy", "index.parquet", "meta.json"):
            if not (self.path / f).is_file():
                raise EqsegError(f"{self.path}: not a tile store (missing {f}); run `eqseg tile` first")

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    @cached_property
    def index(self):
        import geopandas as gpd

        return gpd.read_parquet(self.path / "index.parquet")

    @cached_property
    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    @cached_property
    def masks(self) -> np.ndarray:
        return np.load(self.path / "masks.npy", mmap_mode="r")

    def ids(self, split: str) -> np.ndarray:
        return self.index.loc[self.index.split == split, "tile_id"].to_numpy()
