"""The tile store: a few large memory-mapped arrays plus a GeoParquet index, written atomically.

Layout of `results/tiles/{dataset}/`:
  images.npy     (N, C, S, S) in the sources' dtype (uint8/uint16/float32), memory-mapped for random access
  masks.npy      (N, S, S) uint8 class ids, 255 = no label (padding, nodata)
  index.parquet  GeoParquet, one row a tile: tile_id (row in the arrays), source, level, row, col, size, split,
                 valid_fraction, px_<class> counts, px_unlabelled, geometry (footprint in the source CRS, or in
                 pixel space for unreferenced images), crs
  meta.json      classes, bands, dtype, tile size, band statistics of the train split, sources, split counts
Few files keep DVC fast (it hashes per file) and the loader cheap (one mmap, no per-tile open).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eqseg.config import GeoTiffDataset, PairsDataset, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling import grid, npy
from eqseg.tiling.sources import IGNORE, GeoSource, PairSource, find_pairs, load_vector_labels, open_raster
from eqseg.utils.atomic import atomic_dir, write_json


def open_sources(cfg: PairsDataset | GeoTiffDataset, root: Path) -> list:
    n = len(cfg.classes)
    if isinstance(cfg, PairsDataset):
        return [
            PairSource(img, msk, cfg.mask_mode, cfg.mask_values, n)
            for img, msk in find_pairs(root / cfg.images, root / cfg.masks, cfg.mask_suffix)
        ]
    sources = []
    for scene in cfg.scenes:
        raster = root / scene.raster
        with open_raster(raster) as ds:
            crs, bounds = ds.crs, ds.bounds
        shapes = load_vector_labels(root / scene.labels, raster, crs, bounds, cfg.class_field, cfg.class_values, n, cfg.layer)
        sources.append(GeoSource(raster, shapes, cfg.all_touched))
    return sources


def plan_tiles(sources: list, split_cfg, tile: TileConfig) -> list[tuple[int, str, int, int, int, int]]:
    """(source, split, row, col, row_end, col_end) of every candidate tile; pixels past the ends are padding.

    The ends are those of the source, or of the split block holding the tile, so splits cannot leak.
    """
    plan = []
    if split_cfg.by == "source":
        if len(sources) < sum(1 for f in split_cfg.fractions.values() if f > 0):
            raise EqsegError(
                f"split.by=source needs a source for each split with a share (dataset has {len(sources)}): use split.by=block"
            )
        splits = grid.assign_splits(len(sources), split_cfg.fractions, split_cfg.seed)
        for i, (src, split) in enumerate(zip(sources, splits)):
            windows = grid.tile_windows(0, 0, src.height, src.width, tile.size, tile.overlap)
            plan += [(i, split, r, c, src.height, src.width) for r, c in windows]
        return plan
    grid.check_block_size(split_cfg.block_size, tile.size, tile.overlap, "split.block_size")
    per_source = [grid.blocks(s.height, s.width, split_cfg.block_size) for s in sources]
    flat = [(i, b) for i, bs in enumerate(per_source) for b in bs if sources[i].has_valid_pixels(*b)]
    splits = grid.assign_splits(len(flat), split_cfg.fractions, split_cfg.seed)
    for (i, (r0, c0, h, w)), split in zip(flat, splits):
        # Tiles stay inside their block: padded at the block's edge, so no pixel belongs to two splits.
        for r, c in grid.tile_windows(r0, c0, h, w, tile.size, tile.overlap):
            plan.append((i, split, r, c, r0 + h, c0 + w))
    return plan


def _store_dtype(sources: list) -> np.dtype:
    return np.result_type(*[s.dtype for s in sources])


def build_tile_store(name: str, cfg: PairsDataset | GeoTiffDataset, tile: TileConfig, out: Path, root: Path = Path(".")) -> dict:
    """Tile every source of a dataset into `out` (replaced atomically); return the meta record."""
    import geopandas as gpd

    sources = open_sources(cfg, root)
    bands = {s.bands for s in sources}
    if len(bands) != 1:
        raise EqsegError(f"datasets.{name}: sources have different band counts {sorted(bands)}")
    n_bands = bands.pop()
    dtype = _store_dtype(sources)
    plan = plan_tiles(sources, cfg.split, tile)
    S = tile.size
    classes = list(cfg.classes)
    rows = []
    with atomic_dir(out) as tmp:
        images = npy.open_for_write(tmp / "images.npy", (len(plan), n_bands, S, S), dtype)
        masks = npy.open_for_write(tmp / "masks.npy", (len(plan), S, S), np.uint8)
        n = 0
        for item in tqdm(plan, desc=f"tile {name}", unit="tile", disable=None, mininterval=2):
            i, split, r, c, r_end, c_end = item
            src = sources[i]
            read = src.read_tile(r, c, S, r_end, c_end)
            if read.valid_fraction <= 0 or read.valid_fraction < tile.min_valid_fraction:
                continue
            images[n] = read.image
            masks[n] = read.mask
            counts = np.bincount(read.mask.ravel(), minlength=256)
            rows.append(
                dict(
                    tile_id=n, source=src.name, level=0, row=r, col=c, size=S, split=split,
                    valid_fraction=read.valid_fraction,
                    **{f"px_{cls}": int(counts[k]) for k, cls in enumerate(classes)},
                    px_unlabelled=int(counts[IGNORE]),
                    crs=src.crs.to_string() if src.crs else "",
                    geometry=src.footprint(r, c, min(S, r_end - r), min(S, c_end - c)),
                )
            )
            n += 1
        images.flush()
        masks.flush()
        del images, masks
        for src in sources:
            src.close()
        if n == 0:
            raise EqsegError(f"datasets.{name}: no tile has valid pixels (all nodata, or min_valid_fraction too high)")
        npy.shrink(tmp / "images.npy", n)
        npy.shrink(tmp / "masks.npy", n)
        crss = {row["crs"] for row in rows}
        index = gpd.GeoDataFrame(rows, geometry="geometry", crs=crss.pop() if len(crss) == 1 and "" not in crss else None)
        index.to_parquet(tmp / "index.parquet")
        train_ids = index.loc[index.split == "train", "tile_id"].to_numpy()
        if train_ids.size == 0:
            raise EqsegError(f"datasets.{name}: the train split has no tiles (more sources or smaller split blocks needed)")
        mean, std = band_statistics(np.load(tmp / "images.npy", mmap_mode="r"), np.load(tmp / "masks.npy", mmap_mode="r"), train_ids)
        meta = dict(
            dataset=name, classes=classes, num_classes=len(classes), bands=n_bands, dtype=str(dtype),
            tile_size=S, overlap=tile.overlap, n_tiles=n, band_mean=mean, band_std=std,
            splits={s: int((index.split == s).sum()) for s in grid.SPLITS},
            sources=[
                dict(name=s.name, height=s.height, width=s.width, crs=s.crs.to_string() if s.crs else None,
                     transform=list(s.transform)[:6] if s.transform is not None else None)
                for s in sources
            ],
        )
        write_json(tmp / "meta.json", meta)
    return meta


def band_statistics(images: np.ndarray, masks: np.ndarray, ids: np.ndarray, chunk: int = 64) -> tuple[list, list]:
    """Per-band mean and standard deviation over the labelled pixels of the given tiles (float64 sums, chunked)."""
    c = images.shape[1]
    s1, s2, cnt = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(ids), chunk):
        sel = np.sort(ids[start : start + chunk])
        x = np.asarray(images[sel], dtype=np.float64)
        keep = np.asarray(masks[sel]) != IGNORE
        px = x.transpose(1, 0, 2, 3)[:, keep]
        s1 += px.sum(axis=1)
        s2 += (px**2).sum(axis=1)
        cnt += keep.sum()
    mean = s1 / max(cnt, 1)
    std = np.sqrt(np.maximum(s2 / max(cnt, 1) - mean**2, 0)) + 1e-6
    return mean.tolist(), std.tolist()


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
