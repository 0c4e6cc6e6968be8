"""Readers of labelled sources: a GeoTIFF scene with vector labels, or an image/mask pair.

Each source reads one padded tile at a time (never the whole raster): the pixels of [row, row_end) x
[col, col_end) inside the tile, the rest padding. It returns the image (C, S, S), the mask (S, S, uint8 class
ids, 255 = no label: padding, nodata, or unknown) and the fraction of valid pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
from rasterio.errors import RasterioIOError
from shapely.geometry import box

from eqseg.errors import EqsegError

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class TileRead:
    image: np.ndarray
    mask: np.ndarray
    valid_fraction: float


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise EqsegError(f"{path}: {what} not found")
    if not path.is_file():
        raise EqsegError(f"{path}: {what} is not a file")


# --------------------------------------------------------------------------------------------- GeoTIFF + vectors
@dataclass
class GeoSource:
    """A georeferenced raster; labels are vector shapes already reprojected to its CRS, rasterised per tile."""

    path: Path
    shapes: list = field(repr=False)  # (geometry, class id) pairs in the raster's CRS
    all_touched: bool = False

    def __post_init__(self):
        self.name = self.path.stem
        self._ds = open_raster(self.path)
        self.height, self.width, self.bands = self._ds.height, self._ds.width, self._ds.count
        self.dtype = np.dtype(self._ds.dtypes[0])
        self.crs = self._ds.crs
        self.transform = self._ds.transform
        geoms = [g for g, _ in self.shapes]
        from shapely import STRtree

        self._tree = STRtree(geoms) if geoms else None

    def footprint(self, row: int, col: int, height: int, width: int):
        left, bottom, right, top = rasterio.windows.bounds(rasterio.windows.Window(col, row, width, height), self.transform)
        return box(left, bottom, right, top)

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        """Whether a region holds any valid pixel, judged on a decimated dataset mask (cheap for whole blocks)."""
        if not hasattr(self, "_coarse"):
            self._step = max(1, min(self.height, self.width) // 512)
            shape = (max(1, self.height // self._step), max(1, self.width // self._step))
            self._coarse = self._ds.dataset_mask(out_shape=shape) > 0
        r0, c0 = row // self._step, col // self._step
        r1, c1 = -(-(row + height) // self._step), -(-(col + width) // self._step)
        return bool(self._coarse[r0:r1, c0:c1].any())

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        win = rasterio.windows.Window(col, row, min(size, col_end - col), min(size, row_end - row))
        image = np.zeros((self.bands, size, size), dtype=self.dtype)
        valid = np.zeros((size, size), dtype=bool)
        h, w = int(win.height), int(win.width)
        try:
            data = self._ds.read(window=win)
            valid_part = self._ds.dataset_mask(window=win) > 0
        except RasterioIOError as err:
            raise EqsegError(f"{self.path}: cannot read pixels at row {row}, col {col} (truncated or corrupt file: {err})") from None
        if np.issubdtype(data.dtype, np.floating):
            nan = np.isnan(data).any(axis=0)
            valid_part &= ~nan
            data = np.where(np.isnan(data), 0, data)
        image[:, :h, :w] = data
        valid[:h, :w] = valid_part
        mask = np.zeros((size, size), dtype=np.uint8)
        if self._tree is not None:
            footprint = self.footprint(row, col, size, size)
            hits = self._tree.query(footprint)
            if len(hits):
                mask = rasterio.features.rasterize(
                    [self.shapes[i] for i in sorted(hits)],
                    out_shape=(size, size),
                    transform=rasterio.windows.transform(rasterio.windows.Window(col, row, size, size), self.transform),
                    fill=0,
                    dtype=np.uint8,
                    all_touched=self.all_touched,
                )
        mask[~valid] = IGNORE
        return TileRead(image, mask, float(valid[:h, :w].sum()) / float(size * size))

    def close(self) -> None:
        self._ds.close()


def open_raster(path: Path):
    _require_file(path, "raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as err:
        raise EqsegError(f"{path}: cannot open raster (corrupt, truncated or not a raster: {err})") from None
    try:  # a truncated TIFF opens fine; reading its last block is what fails
        ds.read(1, window=rasterio.windows.Window(ds.width - 1, ds.height - 1, 1, 1))
    except RasterioIOError as err:
        ds.close()
        raise EqsegError(f"{path}: cannot read raster pixels (truncated or corrupt file: {err})") from None
    return ds


def load_vector_labels(
    path: Path, raster_path: Path, raster_crs, raster_bounds, class_field: str | None,
    class_values: dict[str, int] | None, num_classes: int, layer: str | None = None,
) -> list:
    """Read vector labels, reproject them to the raster's CRS, and return (geometry, class id) pairs."""
    import geopandas as gpd

    _require_file(path, "vector labels")
    try:
        gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise EqsegError(f"{path}: cannot read vector labels ({str(err).splitlines()[0]})") from None
    if gdf.crs is None:
        raise EqsegError(f"{path}: vector labels have no CRS, so they cannot be placed on {raster_path.name}; set one (e.g. ogr2ogr -a_srs)")
    if raster_crs is None:
        raise EqsegError(f"{raster_path}: raster has no CRS, so vector labels from {path.name} cannot be placed on it")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if class_field is None:
        ids = np.ones(len(gdf), dtype=int)
    else:
        if class_field not in gdf.columns:
            fields = [c for c in gdf.columns if c != gdf.geometry.name]
            raise EqsegError(f"{path}: unknown class field {class_field!r} (fields: {fields})")
        values = gdf[class_field]
        if class_values is not None:
            unknown = sorted({str(v) for v in values} - set(class_values))
            if unknown:
                raise EqsegError(f"{path}: values {unknown} of field {class_field!r} are not in class_values")
            ids = np.array([class_values[str(v)] for v in values], dtype=int)
        else:
            try:
                ids = values.astype(int).to_numpy()
            except (TypeError, ValueError):
                raise EqsegError(f"{path}: field {class_field!r} is not numeric: give class_values to map its values to class ids") from None
    bad = sorted({int(i) for i in ids if not 0 <= i < num_classes})
    if bad:
        raise EqsegError(f"{path}: class ids {bad} from the labels are outside 0..{num_classes - 1} (classes)")
    gdf = gdf.to_crs(raster_crs)
    if not gdf.intersects(box(*raster_bounds)).any():
        raise EqsegError(f"{path}: labels do not overlap the raster {raster_path.name} (after reprojection to its CRS)")
    return list(zip(gdf.geometry.to_numpy(), ids.tolist()))


# --------------------------------------------------------------------------------------------- image/mask pairs
def find_pairs(images: Path, masks: Path, suffix: str) -> list[tuple[Path, Path]]:
    """Match every image in `images` with `masks/<stem><suffix>.<any image extension>`."""
    for folder, what in ((images, "images folder"), (masks, "masks folder")):
        if not folder.is_dir():
            raise EqsegError(f"{folder}: {what} not found")
    pairs = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        candidates = [masks / f"{img.stem}{suffix}{ext}" for ext in (img.suffix, *IMAGE_SUFFIXES)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise EqsegError(f"{img}: no mask {img.stem}{suffix}.* in {masks}")
        pairs.append((img, found))
    if not pairs:
        raise EqsegError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return pairs


def read_image_file(path: Path) -> np.ndarray:
    """An image as (C, H, W), keeping its dtype; a constant alpha band is dropped."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as err:
        raise EqsegError(f"{path}: cannot read image ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.shape[0] == 4 and (arr[3] == np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else arr[3] == 1).all():
        arr = arr[:3]
    return np.ascontiguousarray(arr)


def mask_to_classes(raw: np.ndarray, mode: str, values: dict[int, int] | None, num_classes: int, path: Path) -> np.ndarray:
    """Turn a raw mask into uint8 class ids: instance ids (>0 = class 1), or class values (optionally remapped)."""
    if raw.ndim == 3:
        raw = raw[0]
    if mode == "instances":
        return (raw > 0).astype(np.uint8)
    if values is not None:
        out = np.full(raw.shape, IGNORE, dtype=np.uint8)
        for v, c in values.items():
            out[raw == v] = c
        return out
    out = raw.astype(np.int64)
    bad = np.unique(out[(out >= num_classes) & (out != IGNORE)])
    if bad.size:
        raise EqsegError(f"{path}: mask values {bad[:5].tolist()} are not class ids 0..{num_classes - 1} (set mask_values or mask_mode)")
    return out.astype(np.uint8)


@dataclass
class PairSource:
    """An image and its mask, both small enough to hold in memory (pathology tiles, EM slices)."""

    image_path: Path
    mask_path: Path
    mask_mode: str
    mask_values: dict[int, int] | None
    num_classes: int

    def __post_init__(self):
        self.name = self.image_path.stem
        self._image = read_image_file(self.image_path)
        self._mask = mask_to_classes(read_image_file(self.mask_path), self.mask_mode, self.mask_values, self.num_classes, self.mask_path)
        if self._image.shape[1:] != self._mask.shape:
            raise EqsegError(f"{self.mask_path}: mask size {self._mask.shape[::-1]} differs from image size {self._image.shape[:0:-1]}")
        self.bands, self.height, self.width = self._image.shape
        self.dtype = self._image.dtype
        self.crs = None
        self.transform = None

    def footprint(self, row: int, col: int, height: int, width: int):
        return box(col, row, col + width, row + height)

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        return True

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        image = np.zeros((self.bands, size, size), dtype=self.dtype)
        mask = np.full((size, size), IGNORE, dtype=np.uint8)
        part = self._image[:, row : min(row + size, row_end), col : min(col + size, col_end)]
        h, w = part.shape[1:]
        image[:, :h, :w] = part
        mask[:h, :w] = self._mask[row : row + h, col : col + w]
        return TileRead(image, mask, float(h * w) / float(size * size))

    def close(self) -> None:
        pass
