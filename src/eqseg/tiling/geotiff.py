"""A GeoTIFF scene as a tiling source: tiles cut from block-aligned strips read ahead on a thread, labels rasterised
per strip from vector shapes (loaded by eqseg.tiling.vector) already in the raster's CRS, or read per strip from a
raster label mask (eqseg.tiling.raster_mask).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
import shapely
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.tiling.protocol import SourceDefaults, TileRead
from eqseg.tiling.raster_io import open_raster
from eqseg.tiling.raster_mask import MaskLabels
from eqseg.utils.process import usable_cpus

STRIP_BYTES = 256 * 2**20  # most pixel bytes one cached strip may hold; wider rasters are read in column chunks
GDAL_CACHE_BYTES = 32 * 2**20  # GDAL's block cache while reading strips: whole blocks are read once, caching them
# would only grow the process (by default GDAL keeps up to 5 % of the machine's memory)


@dataclass
class Strip:
    """A block-aligned window read once (pixels, validity and rasterised labels), from which tiles are cut."""

    row0: int
    col0: int
    data: np.ndarray  # (C, h, w)
    valid: np.ndarray  # (h, w) bool
    labels: np.ndarray  # (h, w) uint8
    all_valid: bool = False  # every pixel of the strip is valid (a tile's valid fraction is then its area)

    def covers(self, row: int, col: int, height: int, width: int) -> bool:
        h, w = self.valid.shape
        return self.row0 <= row and row + height <= self.row0 + h and self.col0 <= col and col + width <= self.col0 + w

    @property
    def row1(self) -> int:
        return self.row0 + self.valid.shape[0]


def decode_threads() -> int:
    """GDAL threads decoding a strip: every usable CPU but one, which is left to the work on tiles (cutting, writing,
    statistics) that overlaps decoding; on two CPUs GDAL decodes on the reading thread alone. Its thread pool costs
    a fifth more CPU time than one thread for the same blocks, which two CPUs cannot spare (bench/README.md)."""
    return max(1, usable_cpus() - 1)


class _Recycler:
    """Memory for strips, handed out again once nothing refers to the strip it held.

    A fresh multi-MiB array costs a page fault per 4 KiB on first touch, about as much as decoding it on a virtual
    machine; strips are therefore cut from blocks of memory that come back when the last array using them (the strip,
    a tile view still queued for writing) is gone. Each block is lent as its own array over a memoryview of the
    block, so that every view of it refers to that array (numpy collapses view bases only through arrays); a weakref
    callback on it returns the block. At most `keep` idle blocks are kept."""

    def __init__(self, keep: int = 4):
        self._free: list[np.ndarray] = []
        self._keep = keep
        self._lock = threading.RLock()  # reentrant: a collection inside take() may run _give() on this thread

    def take(self, nbytes: int) -> np.ndarray:
        """A writable uint8 array of nbytes (contents undefined)."""
        with self._lock:
            fits = [k for k, b in enumerate(self._free) if nbytes <= b.size <= 2 * nbytes]
            block = self._free.pop(fits[0]) if fits else np.empty(nbytes, dtype=np.uint8)
        lent = np.frombuffer(memoryview(block)[:nbytes], dtype=np.uint8)
        weakref.finalize(lent, self._give, block).atexit = False
        return lent

    def _give(self, block: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(block)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._keep = 0


def _as_pixel(value: float, dtype: np.dtype):
    """A nodata value as a scalar of the pixels' type where that compares equally and faster (an 8-bit band against
    a float is cast to float64, 8x the memory traffic); a value no pixel of that type can hold compares unequal to
    every pixel, as it does in float64."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and dtype.itemsize <= 4:  # every such integer is exact in float64, so the result is equal
        info = np.iinfo(dtype)
        if float(value).is_integer() and info.min <= value <= info.max:
            return dtype.type(int(value))
        return np.float64(value)  # not representable: no pixel equals it (kept as float64, as before)
    return value


@dataclass
class _Decoded:
    """A window's pixels as decoded by the reading thread, with the arrays its strip will fill."""

    win: rasterio.windows.Window
    data: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    scratch: np.ndarray


def _window_covers(win, row: int, col: int, height: int, width: int) -> bool:
    """Whether a rasterio window holds the region [row, row+height) x [col, col+width)."""
    return win.row_off <= row and row + height <= win.row_off + win.height and win.col_off <= col and col + width <= win.col_off + win.width


def aligned_span(start: int, stop: int, block: int, limit: int) -> tuple[int, int]:
    """[start, stop) widened outwards to whole blocks, clipped to [0, limit)."""
    return (start // block) * block, min(limit, -(-stop // block) * block)


@dataclass
class GeoSource(SourceDefaults):
    """A georeferenced raster; labels are vector shapes already reprojected to its CRS, rasterised per strip, or a
    raster label mask (`mask`) read onto its grid per strip.

    Tiles are cut from strips aligned to the file's internal blocks and as wide as the raster (or as wide as
    STRIP_BYTES allows): each block is decoded once when tiles are requested row by row, and the raster is never
    held whole. While tiles are cut from one strip, a thread already reads the next one (GDAL decodes without the
    GIL, on decode_threads() threads), so decoding overlaps the work on tiles; told the rows of
    tiles to come (will_read), the strip read ahead is exactly the next one needed, and takes in the rows of tiles
    that start inside it. Strips reuse their memory (_Recycler). NaN pixels of float rasters count as nodata.
    """

    path: Path
    shapes: list | Future = field(repr=False)  # (geometry, class id) pairs in the raster's CRS, or their loading
    all_touched: bool = False
    fill: int = 0  # the label of valid pixels under no shape: 0 (background) or IGNORE (unknown, partial labels)
    mask: MaskLabels | None = None  # a raster label mask instead of shapes (shapes then empty)

    def __post_init__(self):
        self.name = self.path.stem
        self._ds = open_raster(self.path, NUM_THREADS=str(decode_threads()))
        self.height, self.width, self.bands = self._ds.height, self._ds.width, self._ds.count
        self.dtype = np.dtype(self._ds.dtypes[0])
        self.crs = self._ds.crs
        self.transform = self._ds.transform
        self.block_shape = self._ds.block_shapes[0]
        flags = [set(f) for f in self._ds.mask_flag_enums]
        self._mask_band = any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)
        self._nodata = list(self._ds.nodatavals)
        self._all_valid = all(f == {MaskFlags.all_valid} for f in flags) and not np.issubdtype(self.dtype, np.floating)
        self._strip: Strip | None = None
        self._next: Future | None = None  # the strip the next row of tiles will need, being read
        self._last_row: int | None = None
        self._rows: list[tuple[int, int]] = []  # (row, height) of the rows of tiles to come, when told (will_read)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._memory = _Recycler()
        self._coarse: np.ndarray | None = None  # decimated validity, where overviews make it cheap
        if not self._all_valid and self._ds.overviews(1):  # before any thread reads: a dataset is not thread-safe
            self._step = max(1, min(self.height, self.width) // 512)
            shape = (max(1, self.height // self._step), max(1, self.width // self._step))
            self._coarse = self._ds.dataset_mask(out_shape=shape) > 0
        self._tree: object | None = None  # STRtree of the shapes, built when the first strip is labelled

    def footprint(self, row: int, col: int, height: int, width: int):
        x0, y0 = self.transform @ (col, row)
        x1, y1 = self.transform @ (col + width, row + height)
        return shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        """Whether a region may hold a valid pixel: judged on a decimated mask only where that is cheap (overviews);
        otherwise True, and reading the tile decides."""
        if self._coarse is None:
            return True
        r0, c0 = row // self._step, col // self._step
        r1, c1 = -(-(row + height) // self._step), -(-(col + width) // self._step)
        return bool(self._coarse[r0:r1, c0:c1].any())

    def _valid(self, data: np.ndarray, win, valid: np.ndarray, scratch: np.ndarray) -> None:
        """Valid pixels into `valid`, as rasterio's dataset mask defines them (a pixel is nodata only where every
        band is); `scratch` is a bool array of the same shape."""
        if self._mask_band:
            np.greater(self._ds.dataset_mask(window=win), 0, out=valid)
        elif any(v is not None for v in self._nodata):
            first = True
            for band, nd in zip(data, self._nodata):
                if nd is None:
                    continue
                has = valid if first else scratch
                if np.isnan(nd):
                    np.logical_not(np.isnan(band, out=has), out=has)
                else:
                    np.not_equal(band, _as_pixel(nd, band.dtype), out=has)
                if not first:
                    np.logical_or(valid, has, out=valid)
                first = False
        else:
            valid.fill(True)
        if np.issubdtype(data.dtype, np.floating):
            valid &= ~np.isnan(data).any(axis=0)

    def _decode(self, row: int, col: int, height: int, width: int) -> _Decoded:
        """The pixels of the block-aligned window holding [row, row+height) x [col, col+width) (and their
        validity where a mask band says it: the only part besides decoding that reads the dataset)."""
        bh, bw = self.block_shape
        r0, r1 = aligned_span(row, row + height, bh, self.height)
        budget = max(bw, STRIP_BYTES // ((r1 - r0) * self.bands * self.dtype.itemsize) // bw * bw)
        c0, c1 = aligned_span(col, col + width, bw, self.width)
        c1 = min(self.width, max(c1, c0 + budget))
        win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
        data, valid, labels, scratch = self._strip_arrays(r1 - r0, c1 - c0)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            try:
                self._ds.read(window=win, out=data)
                if self._mask_band:
                    self._valid(data, win, valid, scratch)
            except RasterioIOError as err:
                raise EqsegError(f"{self.path}: cannot read pixels at row {row}, col {col} (truncated or corrupt file: {err})") from None
        return _Decoded(win, data, valid, labels, scratch)

    def _complete(self, d: _Decoded) -> Strip:
        """Validity (from the pixels), labels and NaN-free pixels of a decoded window: no dataset access, so this
        runs on the thread that cuts tiles while the reading thread decodes the next strip."""
        if not self._mask_band:
            self._valid(d.data, d.win, d.valid, d.scratch)
        if np.issubdtype(d.data.dtype, np.floating):
            np.nan_to_num(d.data, nan=0.0, copy=False)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            self._rasterise(d.win, d.labels)
        all_valid = bool(d.valid.all())
        if not all_valid:
            np.copyto(d.labels, IGNORE, where=np.logical_not(d.valid, out=d.scratch))
        return Strip(int(d.win.row_off), int(d.win.col_off), d.data, d.valid, d.labels, all_valid)

    def _strip_arrays(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixels (C, h, w), validity, labels and a bool scratch array of one strip, in one block of recycled
        memory (pixels first, so that they are aligned)."""
        n = height * width
        sizes = [self.bands * n * self.dtype.itemsize, n, n, n]
        block = self._memory.take(sum(sizes))
        ends = np.cumsum(sizes).tolist()
        data = block[: ends[0]].view(self.dtype).reshape(self.bands, height, width)
        valid, labels, scratch = (block[a:b].view(t).reshape(height, width) for a, b, t in zip(ends, ends[1:], (bool, np.uint8, bool)))
        return data, valid, labels, scratch

    def _rasterise(self, win, out: np.ndarray) -> None:
        """The labels of a window into `out` (uint8, the window's shape)."""
        if self.mask is not None:
            self.mask.read(win, out)
            return
        out.fill(self.fill)
        if isinstance(self.shapes, Future):  # labels loaded beside the first decoding; their errors surface here
            self.shapes = self.shapes.result()
        if not self.shapes:
            return
        if self._tree is None:
            from shapely import STRtree

            self._tree = STRtree([g for g, _ in self.shapes])
        hits = self._tree.query(self.footprint(int(win.row_off), int(win.col_off), *out.shape))
        if len(hits):
            rasterio.features.rasterize(
                [self.shapes[i] for i in sorted(hits)], out=out, transform=rasterio.windows.transform(win, self.transform),
                all_touched=self.all_touched,
            )

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        h, w = min(size, row_end - row, self.height - row), min(size, col_end - col, self.width - col)
        if self._strip is None or not self._strip.covers(row, col, h, w):
            self._strip = None  # free the old strip before reading the next
            self._strip = self._take_strip(row, col, h, w)
        self._last_row = row
        st = self._strip
        rs, cs = slice(row - st.row0, row - st.row0 + h), slice(col - st.col0, col - st.col0 + w)
        if h == size and w == size:  # views into the strip: most tiles, no copy (readers must not write to them)
            image, valid, mask = st.data[:, rs, cs], st.valid[rs, cs], st.labels[rs, cs]
        else:
            image = np.zeros((self.bands, size, size), dtype=self.dtype)
            valid = np.zeros((size, size), dtype=bool)
            mask = np.full((size, size), IGNORE, dtype=np.uint8)
            image[:, :h, :w], valid[:h, :w], mask[:h, :w] = st.data[:, rs, cs], st.valid[rs, cs], st.labels[rs, cs]
        n_valid = h * w if st.all_valid else np.count_nonzero(valid)
        return TileRead(image, mask, float(n_valid) / float(size * size), valid)

    def will_read(self, rows: list[tuple[int, int]]) -> None:
        """(row, height) of the rows of tiles about to be read, in order: the strip read ahead is then the one the
        next row needs (rows shifted back at a block's or the scene's end are not where a stride would put them),
        and the first one starts decoding now, while the caller still prepares."""
        self._rows = sorted(set(rows))
        if self._rows and self._next is None and self._strip is None:
            first, height = self._rows[0]
            self._next = self._pool.submit(self._decode, first, 0, self._reach(first, height), self.width)

    def _take_strip(self, row: int, col: int, height: int, width: int) -> Strip:
        """The prefetched strip if it covers the request (else a fresh read); before completing it (validity,
        labels), start reading the one the next row of tiles needs, so that the reading thread never waits for
        this one: the next row told by will_read that this strip does not cover, or else a guess that rows keep
        advancing by the same stride."""
        nxt, self._next = self._next, None
        decoded = nxt.result() if nxt is not None else None
        if decoded is None or not _window_covers(decoded.win, row, col, height, width):
            decoded = self._decode(row, col, self._reach(row, height), width)
        win = decoded.win
        if win.col_off == 0 and win.width == self.width:  # column chunks of a very wide raster: read when asked
            ahead = self._row_ahead(win, row, col, height, width)
            if ahead is not None:
                self._next = self._pool.submit(self._decode, ahead[0], 0, self._reach(*ahead), self.width)
        return self._complete(decoded)

    def _row_ahead(self, win, row: int, col: int, height: int, width: int) -> tuple[int, int] | None:
        """(row, height) of the next row of tiles that the window does not cover, or None at the end."""
        if self._rows:
            k = bisect.bisect_right(self._rows, (row, self.height))
            return next(((r, h) for r, h in self._rows[k:] if not _window_covers(win, r, 0, h, self.width)), None)
        stride = row - self._last_row if self._last_row is not None and row > self._last_row else height
        r = row + stride
        while r < self.height and _window_covers(win, r, col, min(height, self.height - r), width):
            r += stride  # rows of tiles this strip still serves
        return (r, min(height, self.height - r)) if r < self.height else None

    def _reach(self, row: int, height: int) -> int:
        """How many rows from `row` to read for a row of tiles of that height: with the rows told by will_read, the
        strip also takes the rows of tiles that start inside it (each would otherwise decode the strip's last
        blocks again: a row shifted back at a block's end, overlapping tiles), up to twice its block-aligned
        height."""
        bh = self.block_shape[0]
        r0, r1 = aligned_span(row, row + height, bh, self.height)
        limit = r0 + 2 * (r1 - r0)
        for r, h in self._rows[bisect.bisect_right(self._rows, (row, self.height)) :]:
            end = aligned_span(r, r + h, bh, self.height)[1]
            if r >= r1 or end > limit:
                break
            r1 = max(r1, end)
        return max(height, r1 - row)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._strip = self._next = None
        self._memory.clear()
        self._ds.close()
        if self.mask is not None:
            self.mask.close()

