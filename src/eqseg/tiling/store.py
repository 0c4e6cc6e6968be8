"""The tile store: a few large memory-mapped arrays plus a GeoParquet index, written atomically.

Layout of `results/tiles/{dataset}/`:
  images.npy     (N, C, S, S) in the sources' dtype (uint8/uint16/float32), memory-mapped for random access
  masks.npy      (N, S, S) uint8 class ids, 255 = no label (unlabelled, and so also padding and nodata)
  valid.npy      (N, S, S) bool image validity: inside the source and not nodata (labelled or not)
  owned.npy      (N, S, S) bool the pixels this tile owns: tiles overlap (edge tiles are shifted back inside the
                 scene, and tile.overlap), and each pixel of a source is owned by exactly one tile of the store
                 (grid.owned_masks), so every score over tiles counts it once (TileStore.scored_masks)
  index.parquet  GeoParquet, one row a tile: tile_id (row in the arrays), source, level (pyramid level of a slide,
                 0 otherwise; row and col are pixels of that level), row, col, size, split, valid_fraction (share
                 of valid pixels, of tissue for slides), px_<class> counts, px_unlabelled, geometry (footprint in
                 the source CRS, in pixel space for unreferenced images, in level-0 pixels for slides), crs
  meta.json      classes, bands, dtype, tile size, band statistics (over the valid, owned pixels of the train split,
                 or of all tiles for a store without train tiles: `stats_from` says which; never from labels),
                 sources, split counts
Few files keep DVC fast (it hashes per file) and the loader cheap (one mmap, no per-tile open).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.tiling import grid, npy
from eqseg.tiling.meta import StoreMeta
from eqseg.utils.process import usable_cpus
from eqseg.tiling.protocol import Source
from eqseg.utils.atomic import atomic_dir, write_json

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from eqseg.config import GeoTiffDataset, PairsDataset, SlideDataset, TileConfig


def split_units(sources: list, split_cfg) -> tuple[list[tuple[int, int, int, int, int]], list[int]]:
    """The blocks splits are drawn for, (source, row, col, height, width), and the unit of each: a whole source
    (split by source) or a square block of a scene (split by block); blocks of different georeferenced sources that
    cover the same ground (footprints overlapping in the first source's CRS, other CRSs' bounds reprojected) are one
    unit, so that overlapping scenes cannot put the same ground into two splits. Units are numbered in block order.
    Split by group, every source of a group (the parts of one scene) is one unit, whole."""
    if split_cfg.by == "group":
        return [(i, 0, 0, s.height, s.width) for i, s in enumerate(sources)], group_units([s.group for s in sources],
                                                                                           [s.path for s in sources])
    if split_cfg.by == "source":
        blocks = [(i, 0, 0, s.height, s.width) for i, s in enumerate(sources)]
    else:
        blocks = [(i, *b) for i, s in enumerate(sources) for b in grid.blocks(s.height, s.width, split_cfg.block_size)]
    return blocks, _shared_ground_units(sources, blocks)


def group_units(groups: list, paths: list) -> list[int]:
    """The unit of each source split by group: its group's number, in order of first appearance."""
    for g, path in zip(groups, paths):
        if g is None:
            raise EqsegError(f"{path}: split.by=group needs sources in groups (a pairs dataset with one * in images "
                             "and masks, e.g. images: data/x/*/images); this source has none")
    ids: dict[str, int] = {}
    return [ids.setdefault(g, len(ids)) for g in groups]


def _shared_ground_units(sources: list, blocks: list[tuple[int, int, int, int, int]]) -> list[int]:
    from rasterio.warp import transform_bounds

    geo = [k for k, b in enumerate(blocks) if sources[b[0]].crs is not None and sources[b[0]].transform is not None]
    if len({blocks[k][0] for k in geo}) < 2:
        return list(range(len(blocks)))
    common = sources[blocks[geo[0]][0]].crs
    boxes = []
    for k in geo:
        i, r0, c0, h, w = blocks[k]
        src = sources[i]
        bounds = src.footprint(r0, c0, h, w).bounds
        if src.crs != common:  # the bounding box of the reprojected block: never smaller than its true footprint
            bounds = transform_bounds(src.crs, common, *bounds, densify_pts=21)
        boxes.append(bounds)
    groups = grid.overlap_groups(boxes, [blocks[k][0] for k in geo])
    units = list(range(len(blocks)))
    first: dict[int, int] = {}
    for k, g in zip(geo, groups):
        units[k] = first.setdefault(g, k)
    ids: dict[int, int] = {}
    return [ids.setdefault(u, len(ids)) for u in units]


@dataclass
class _Extent:
    """What split_units needs of a scene (size, CRS, transform, footprint), read from the raster's header only."""

    height: int
    width: int
    crs: object
    transform: object

    def footprint(self, row: int, col: int, height: int, width: int):
        """The very footprints of the scene's source (GeoSource.footprint)."""
        from eqseg.tiling.geotiff import GeoSource  # sources are imported where tiles are made (see _sources)

        return GeoSource.footprint(self, row, col, height, width)


def _sources():
    """The source readers (rasterio, GDAL, shapely, OpenSlide behind them), imported only where tiles are made or
    splits drawn: reading a built store (training) needs none of them, so a GPU node or a device check runs without
    those libraries (bench/README.md, "On a GPU: what one device call can carry")."""
    from eqseg.tiling.raster_io import open_raster
    from eqseg.tiling.registry import open_sources, source_groups, source_names

    return open_raster, open_sources, source_groups, source_names


def source_splits(cfg, root: Path = Path(".")) -> dict[str, str]:
    """The split of each source of a dataset split by source or group, exactly as the tile store draws it
    (georeferenced sources covering the same ground are one unit; a group's sources are one), without reading pixels
    or labels."""
    open_raster, _, source_groups, source_names = _sources()
    names = source_names(cfg, root)
    if cfg.split.by not in ("source", "group"):
        raise EqsegError(f"source_splits: the dataset is split by {cfg.split.by}, not by source or group")
    if cfg.split.by == "group":
        units = group_units(source_groups(cfg, root), names)
        splits = unit_splits(sorted(set(units)), len(set(units)), len(names), cfg.split)
        return {n: splits[u] for n, u in zip(names, units)}
    if getattr(cfg, "kind", None) == "geotiff":
        extents = []
        for scene in cfg.scenes:
            with open_raster(root / scene.raster) as ds:
                extents.append(_Extent(ds.height, ds.width, ds.crs, ds.transform))
        _, units = split_units(extents, cfg.split)
    else:  # pixel or slide coordinates: sources never share ground
        units = list(range(len(names)))
    splits = unit_splits(sorted(set(units)), len(set(units)), len(names), cfg.split)
    return {n: splits[u] for n, u in zip(names, units)}


def candidate_tiles(sources: list, split_cfg, tile: TileConfig) -> tuple[list[tuple[int, int, int, int, int, int]], int]:
    """(source, unit, row, col, row_end, col_end) of every candidate tile, in reading order (source, row, col), and
    the number of units (split_units).

    The ends are those of the source or of the block holding the tile, so that tiles never cross a block edge and
    splits cannot leak. The last tile of a row or column is shifted back inside its block (or source), as
    prediction's windows are; pixels past the ends (padding) remain only where a block or source is narrower than a
    tile.
    """
    if split_cfg.by == "block":
        grid.check_block_size(split_cfg.block_size, tile.size, tile.overlap, "split.block_size")
    blocks, units = split_units(sources, split_cfg)
    plan = []
    for (i, r0, c0, h, w), u in zip(blocks, units):
        plan += [(i, u, r, c, r0 + h, c0 + w) for r, c in grid.tile_windows(r0, c0, h, w, tile.size, tile.overlap)]
    return sorted(plan, key=lambda t: (t[0], t[2], t[3])), len(set(units))


def unit_splits(units: list[int], n_units: int, n_sources: int, split_cfg) -> dict[int, str]:
    """The split of each unit that kept tiles: sources are drawn among all sources (sources sharing ground count
    once), groups among all groups, blocks among kept blocks only (so that nodata or background blocks take no share
    of a split)."""
    if split_cfg.by == "group":
        if n_units < sum(1 for f in split_cfg.fractions.values() if f > 0):
            raise EqsegError(f"split.by=group needs a group for each split with a share (dataset has {n_units}): "
                             "use split.by=source or more groups")
        return dict(enumerate(grid.assign_splits(n_units, split_cfg.fractions, split_cfg.seed)))
    if split_cfg.by == "source":
        if n_units < sum(1 for f in split_cfg.fractions.values() if f > 0):
            shared = f", {n_units} once sources covering the same ground count as one" if n_units < n_sources else ""
            raise EqsegError(
                f"split.by=source needs a source for each split with a share (dataset has {n_sources}{shared}): use split.by=block"
            )
        return dict(enumerate(grid.assign_splits(n_units, split_cfg.fractions, split_cfg.seed)))
    return dict(zip(units, grid.assign_splits(len(units), split_cfg.fractions, split_cfg.seed)))


def _store_dtype(sources: list) -> np.dtype:
    return np.result_type(*[s.dtype for s in sources])


class NpyRowWriter:
    """Rows of a new .npy file written with pwrite: unlike stores into a memmap, written pages are not counted in
    the process's resident memory, which therefore stays flat however large the store grows."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        mm = npy.open_for_write(path, shape, dtype)
        self._offset, self.dtype = mm.offset, mm.dtype
        self._row = int(np.prod(shape[1:], dtype=np.int64)) * mm.dtype.itemsize
        del mm
        self._fd = os.open(path, os.O_WRONLY)

    def write(self, i: int, rows: np.ndarray) -> None:
        """Write consecutive rows i, i+1, ... (a C-contiguous array of the file's dtype is written without a copy)."""
        os.pwrite(self._fd, np.ascontiguousarray(rows, dtype=self.dtype).data, self._offset + i * self._row)

    def close(self) -> None:
        os.close(self._fd)


class TileWriter:
    """Kept tiles go to images.npy, masks.npy and valid.npy from background threads that also count their classes,
    so that the reading thread only cuts tiles (views of the decoded strips).

    The threads work almost entirely outside the GIL (numpy copies and reductions, BLAS, pwrite at each tile's own
    offset). Each takes tiles in batches (fewer hand-overs between threads) but writes them one by one through its
    own reused tile-sized buffer: that buffer stays in the CPU cache from the copy to the write and the statistics,
    where batch-sized buffers (MiBs) made the kernel's copy of every write read from memory, and cost twice the
    system time. `workers` threads (up to 4, as many as CPUs) share the batches; results are collected in batch
    order. At most `ahead` batches (workers + 1) wait, which bounds the memory held by the strips their views keep
    alive."""

    def __init__(self, folder: Path, capacity: int, bands: int, size: int, dtype, num_classes: int, batch: int = 32,
                 ahead: int | None = None, workers: int | None = None):
        self._images = NpyRowWriter(folder / "images.npy", (capacity, bands, size, size), dtype)
        self._values = [*range(num_classes), IGNORE]  # what a mask holds: class ids, 255 = no label
        self._value_index = {v: k for k, v in enumerate(self._values)}
        self._masks = NpyRowWriter(folder / "masks.npy", (capacity, size, size), np.uint8)
        self._valid = NpyRowWriter(folder / "valid.npy", (capacity, size, size), bool)
        workers = workers or min(4, usable_cpus())
        self._batch_size, self._ahead = batch, ahead or workers + 1
        self._shape = (bands, size, size)
        self._local = threading.local()  # each writing thread's tile buffers
        self._batch: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-writer")
        self._pending: deque[Future] = deque()
        self._counts: list[np.ndarray] = []
        self.n = 0

    def add(self, image: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> int:
        """Queue one tile (arrays are not copied: they must not change afterwards); return its id. `valid` marks
        its image-valid pixels (inside the source, not nodata; labelled or not)."""
        self._batch.append((image, mask, valid))
        self.n += 1
        if len(self._batch) == self._batch_size:
            self._submit()
        return self.n - 1

    def _submit(self) -> None:
        if not self._batch:
            return
        while len(self._pending) >= self._ahead:
            self._collect()
        batch, self._batch = self._batch, []
        self._pending.append(self._pool.submit(self._write, self.n - len(batch), batch))

    def _collect(self) -> None:
        self._counts.append(self._pending.popleft().result())

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's tile-sized buffers (image, mask, validity)."""
        local = self._local
        if not hasattr(local, "buffers"):
            _, size, _ = self._shape
            local.buffers = (np.empty((1, *self._shape), self._images.dtype), np.empty((1, size, size), np.uint8),
                             np.empty((1, size, size), bool))
        return local.buffers

    def _write(self, first: int, batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        image, mask, keep = self._buffers()
        values = self._values
        counts = np.empty((len(batch), len(values)), dtype=np.int64)
        for k, (img, m, v) in enumerate(batch):
            image[0], mask[0], keep[0] = img, m, v
            self._images.write(first + k, image)
            self._masks.write(first + k, mask)
            self._valid.write(first + k, keep)
            lo, hi = mask.min(), mask.max()
            if lo == hi:  # one value (a tile without labels, or under one shape): no counting needed
                counts[k] = 0
                if int(lo) in self._value_index:
                    counts[k, self._value_index[int(lo)]] = mask.size
            elif len(values) <= 8:  # a comparison a value is cheaper than bincount's cast of the mask to int64
                counts[k] = [np.count_nonzero(mask == v) for v in values]
            else:
                counts[k] = np.bincount(mask.ravel(), minlength=256)[values]
        return counts

    def finish(self) -> np.ndarray:
        """Write what is queued; return per-tile pixel counts of each class and of 255 (n, classes + 1), in id
        order."""
        self._submit()
        while self._pending:
            self._collect()
        self.close()
        if not self._counts:
            return np.zeros((0, len(self._values)), dtype=np.int64)
        return np.concatenate(self._counts)

    def close(self) -> None:
        """Stop the thread (dropping what it has not started) and close the files; safe to call twice."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._images is not None:
            for f in (self._images, self._masks, self._valid):
                f.close()
            self._images = self._masks = self._valid = None


def tile_sums(image: np.ndarray, valid: np.ndarray, step: int = 2) -> np.ndarray:
    """(3, C) float64: per-band count, sum and sum of squares over the valid pixels (bool (S, S): inside the source
    and not nodata, labelled or not) of one tile, on every `step`-th row and column (a quarter of the pixels is
    plenty for normalisation, and 4x cheaper)."""
    image, keep = image[:, ::step, ::step], np.asarray(valid, dtype=bool)[::step, ::step]
    n = int(np.count_nonzero(keep))
    out = np.zeros((3, image.shape[0]))
    if n == 0:
        return out
    x = image.astype(np.float64).reshape(image.shape[0], -1)
    if n < keep.size:
        x = x[:, keep.ravel()]
    out[0], out[1], out[2] = n, x.sum(axis=1), np.einsum("ij,ij->i", x, x)
    return out


def batch_sums(images: np.ndarray, valid: np.ndarray, step: int = 2, scratch: dict | None = None) -> np.ndarray:
    """tile_sums of a batch of tiles (B, C, S, S) of 8- or 16-bit integers and their validity (B, S, S) at once:
    (B, 3, C), equal to tile_sums
    to the last bit. Every sum of such values (squares below 2**32, at most 2**16 of them a tile) is an integer
    below 2**53, which float64 holds exactly whatever the order of summation; for 8-bit values, the row sums (at most
    S/step * 255**2 < 2**24) are even exact in float32, half the memory traffic. `scratch` (a dict kept by the
    caller) holds the float buffers from one call to the next.

    The sampled rows are converted whole (a contiguous copy, twice as fast as gathering every other column) and the
    columns are picked by a product with a 0/1 vector (BLAS): each row sum is a sum of integers whose partial sums
    stay below 2**24 (float32) or 2**53 (float64), so exact in any order, as are the products with 0 and 1."""
    rows = images[:, :, ::step]  # (B, C, R, S): every step-th row, all columns
    keep = np.asarray(valid, dtype=bool)[:, ::step]
    n_cols = -(-images.shape[-1] // step)
    ftype = np.dtype(np.float32 if images.dtype.itemsize == 1 and n_cols * 255**2 < 2**24 else np.float64)
    x = scratch.get(ftype) if scratch is not None else None
    if x is None or x.shape[0] < rows.shape[0] or x.shape[1:] != rows.shape[1:]:
        x = np.empty(rows.shape, ftype)
        if scratch is not None:
            scratch[ftype] = x
    x = x[: rows.shape[0]]
    np.copyto(x, rows, casting="safe")
    sampled = keep[:, :, ::step]
    if not sampled.all():
        x *= keep[:, None]
    pick = np.zeros(images.shape[-1], ftype)
    pick[::step] = 1
    out = np.empty((x.shape[0], 3, x.shape[1]))
    out[:, 0] = np.count_nonzero(sampled, axis=(1, 2))[:, None]
    out[:, 1] = np.matmul(x, pick).sum(axis=2, dtype=np.float64)
    np.multiply(x, x, out=x)
    out[:, 2] = np.matmul(x, pick).sum(axis=2, dtype=np.float64)
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
    if src.is_slide:
        out |= dict(level=src.level, mpp=src.mpp, downsample=src.downsample)
    return out


def build_tile_store(name: str, cfg: PairsDataset | GeoTiffDataset | SlideDataset, tile: TileConfig, out: Path, root: Path = Path(".")) -> StoreMeta:
    """Tile every source of a dataset into `out` (replaced atomically) in one streaming pass; return the meta record.

    Tiles are read in row order so that each source decodes its file once; splits are drawn afterwards among the
    units that kept tiles, and band statistics of the train split (of all tiles when it has none) come from per-unit
    sums gathered on the way.
    """
    _, open_sources, _, _ = _sources()
    sources = open_sources(cfg, root)
    try:
        return _build(name, cfg, tile, out, sources)
    finally:
        for src in sources:
            src.close()


def _build(name: str, cfg, tile: TileConfig, out: Path, sources: list[Source]) -> StoreMeta:
    bands = {s.bands for s in sources}
    if len(bands) != 1:
        raise EqsegError(f"datasets.{name}: sources have different band counts {sorted(bands)}")
    n_bands = bands.pop()
    dtype = _store_dtype(sources)
    plan, n_units = candidate_tiles(sources, cfg.split, tile)
    S = tile.size
    classes = list(cfg.classes)
    best = [0.0] * len(sources)
    kept = []  # (source, unit, row, col, height, width, valid fraction) of every tile written, in id order
    rows: list[list[tuple[int, int]]] = [[] for _ in sources]  # the rows of tiles each source will be asked for
    for i, _, r, _, r_end, _ in plan:
        rows[i].append((r, min(S, r_end - r, sources[i].height - r)))
    for src, its_rows in zip(sources, rows):
        src.will_read(its_rows)
    with atomic_dir(out) as tmp:
        writer = TileWriter(tmp, len(plan), n_bands, S, dtype, len(classes))
        try:
            for i, unit, r, c, r_end, c_end in tqdm(plan, desc=f"tile {name}", unit="tile", disable=None, mininterval=2):
                src = sources[i]
                h, w = min(S, r_end - r), min(S, c_end - c)
                if not src.has_valid_pixels(r, c, h, w):
                    continue
                read = src.read_tile(r, c, S, r_end, c_end)
                best[i] = max(best[i], read.valid_fraction)
                if read.valid_fraction <= 0 or read.valid_fraction < tile.min_valid_fraction:
                    continue
                writer.add(read.image, read.mask, read.valid)
                kept.append((i, unit, r, c, h, w, read.valid_fraction))
            counts = writer.finish()
        finally:
            writer.close()
        n = len(kept)
        _check_every_source_kept_tiles(sources, best, {k[0] for k in kept}, tile)
        for f in ("images.npy", "masks.npy", "valid.npy"):
            npy.shrink(tmp / f, n)
        src_i, units, rows, cols, hs, ws = (np.array([k[j] for k in kept], dtype=np.int64) for j in range(6))
        write_ownership(tmp / "owned.npy", src_i, rows, cols, hs, ws, S)
        splits = unit_splits(sorted(set(units.tolist())), n_units, len(sources), cfg.split)
        geometry = np.empty(n, dtype=object)
        for i, src in enumerate(sources):
            at = np.flatnonzero(src_i == i)
            if at.size:
                geometry[at] = src.footprint(rows[at], cols[at], hs[at], ws[at])
        names = np.array([s.name for s in sources], dtype=object)
        crs_of = np.array([s.crs.to_string() if s.crs else "" for s in sources], dtype=object)
        columns = dict(
            tile_id=np.arange(n), source=names[src_i], level=np.array([s.level for s in sources], dtype=np.int64)[src_i],
            row=rows, col=cols, size=np.full(n, S), split=[splits[u] for u in units.tolist()],
            valid_fraction=np.array([k[6] for k in kept], dtype=np.float64),
            **{f"px_{cls}": counts[:, k] for k, cls in enumerate(classes)},
            px_unlabelled=counts[:, -1], crs=crs_of[src_i],
        )
        import geopandas as gpd  # here, not above: scene labels load (and import it) while the first strips decode
        import pandas as pd

        index = gpd.GeoDataFrame(pd.DataFrame(columns), geometry=geometry)
        crss = set(crs_of[src_i].tolist())
        index = index.set_crs(crss.pop() if len(crss) == 1 and "" not in crss else None, allow_override=True)
        index.to_parquet(tmp / "index.parquet")
        train = np.flatnonzero(index.split.to_numpy() == "train")
        if not train.size and cfg.split.fractions.get("train", 0) > 0:
            log.warning("datasets.%s: the train split has no tiles (%d split units for fractions %s); band statistics "
                        "are taken over all tiles", name, len(set(units.tolist())), dict(cfg.split.fractions))
        # a store without train tiles (a test-only dataset) has the statistics of all its tiles, and says so
        mean, std = band_moments(store_sums(tmp, train if train.size else np.arange(n)))
        meta = StoreMeta(
            dataset=name, classes=classes, num_classes=len(classes), bands=n_bands, dtype=str(dtype),
            tile_size=S, overlap=tile.overlap, n_tiles=n, band_mean=mean, band_std=std,
            stats_from="train" if train.size else "all",
            splits={s: int((index.split == s).sum()) for s in grid.SPLITS},
            sources=[_describe(s) for s in sources],
        )
        write_json(tmp / "meta.json", meta.model_dump())
    return meta


def write_ownership(path: Path, src_i: np.ndarray, rows: np.ndarray, cols: np.ndarray, heights: np.ndarray,
                    widths: np.ndarray, size: int, chunk: int = 256) -> None:
    """owned.npy of the kept tiles (in id order, each source's tiles consecutive): grid.owned_masks per source."""
    writer = NpyRowWriter(path, (len(rows), size, size), bool)
    try:
        for i in np.unique(src_i):
            at = np.flatnonzero(src_i == i)
            for start in range(0, len(at), chunk):
                which = np.arange(start, min(start + chunk, len(at)))
                writer.write(int(at[start]), grid.owned_masks(rows[at], cols[at], heights[at], widths[at], size, which))
    finally:
        writer.close()


def store_sums(folder: Path, ids: np.ndarray, chunk: int = 64) -> np.ndarray:
    """(3, C) summed tile_sums of the tiles `ids` of the store in `folder` over their valid, owned pixels: each
    pixel of a source once, whatever its label."""
    images = np.load(folder / "images.npy", mmap_mode="r")
    valid, owned = (np.load(folder / f, mmap_mode="r") for f in ("valid.npy", "owned.npy"))
    exact = images.dtype.kind in "ui" and images.dtype.itemsize <= 2
    total, scratch = np.zeros((3, images.shape[1])), {}
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    for start in range(0, len(ids), chunk):
        sel = ids[start : start + chunk]
        img, keep = np.asarray(images[sel]), np.asarray(valid[sel]) & np.asarray(owned[sel])
        if exact:
            total += batch_sums(img, keep, scratch=scratch).sum(axis=0)
        else:
            total += sum(tile_sums(im, k) for im, k in zip(img, keep))
    return total


def _check_every_source_kept_tiles(sources: list, best: list[float], kept: set[int], tile: TileConfig) -> None:
    """A source without a single tile is a mistake worth one clear line (all nodata, no tissue, threshold too high)."""
    for i, (src, frac) in enumerate(zip(sources, best)):
        if i in kept:
            continue
        if frac <= 0:
            raise EqsegError(f"{src.path}: no tile has valid pixels ({src.empty_reason})")
        raise EqsegError(f"{src.path}: no tile reaches tile.min_valid_fraction ({tile.min_valid_fraction}); the best has {frac:.3f}")


@dataclass
class TileStore:
    """Read side of the store: memory-mapped arrays, the index and the meta record."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        for f in ("images.npy", "masks.npy", "index.parquet", "meta.json"):
            if not (self.path / f).is_file():
                raise EqsegError(f"{self.path}: not a tile store (missing {f}); run `eqseg tile` first")
        for f in ("valid.npy", "owned.npy"):
            if not (self.path / f).is_file():
                raise EqsegError(f"{self.path}: a tile store of an earlier eqseg (no {f}: pixel validity and "
                                 "ownership); run `eqseg tile` again")

    @cached_property
    def meta(self) -> StoreMeta:
        return StoreMeta.load(self.path / "meta.json")

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

    @cached_property
    def valid(self) -> np.ndarray:
        """(N, S, S) bool: image-valid pixels (inside the source, not nodata), labelled or not."""
        return np.load(self.path / "valid.npy", mmap_mode="r")

    @cached_property
    def owned(self) -> np.ndarray:
        """(N, S, S) bool: the pixels each tile owns (each pixel of a source owned by one tile of the store)."""
        return np.load(self.path / "owned.npy", mmap_mode="r")

    def counted(self, ids) -> np.ndarray:
        """(n, S, S) bool: the pixels of tiles `ids` that scores and statistics count: valid and owned."""
        return np.asarray(self.valid[ids]) & np.asarray(self.owned[ids])

    def scored_masks(self, ids) -> np.ndarray:
        """The dense labels of tiles `ids` as every score reads them: 255 (not counted) wherever a pixel is
        unlabelled, invalid, or owned by another tile, so a confusion matrix over any set of tiles counts each
        labelled pixel once."""
        return np.where(self.counted(ids), np.asarray(self.masks[ids]), np.uint8(IGNORE))

    def ids(self, split: str) -> np.ndarray:
        return self.index.loc[self.index.split == split, "tile_id"].to_numpy()

    @cached_property
    def source_of(self) -> np.ndarray:
        """The source name of every tile, indexed by tile id (an object array)."""
        index = self.index
        names = np.empty(int(index.tile_id.max()) + 1 if len(index) else 0, dtype=object)
        names[index.tile_id.to_numpy()] = index.source.to_numpy()
        return names

    def sources(self, ids, distinct: bool = False) -> list[str]:
        """The source of each tile of `ids`, in their order; distinct: the sorted names of the sources they are from."""
        names = self.source_of[np.asarray(ids, dtype=np.int64)].tolist()
        return sorted(set(names)) if distinct else names


def tile_rows(row_ids, ids) -> np.ndarray:
    """The row of each tile of `ids` in arrays whose rows hold the tiles `row_ids` (in any order, as weak labels and
    their ids.npy): int64, -1 for a tile they do not hold."""
    row_ids = np.asarray(row_ids, dtype=np.int64).ravel()
    ids = np.asarray(ids, dtype=np.int64)
    if not row_ids.size:
        return np.full(ids.shape, -1, np.int64)
    order = np.argsort(row_ids, kind="stable")
    rows = order[np.minimum(np.searchsorted(row_ids, ids, sorter=order), row_ids.size - 1)]
    return np.where(row_ids[rows] == ids, rows, -1)
