"""Image/mask pairs as a tiling source: an image and its mask (class values or instance ids), both small enough to
hold in memory (pathology tiles, EM slices), matched by name across two folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.tiling.protocol import SourceDefaults, TileRead

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


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
class PairSource(SourceDefaults):
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

    @property
    def path(self) -> Path:
        return self.image_path

    def footprint(self, row: int, col: int, height: int, width: int):
        return shapely.box(col, row, col + width, row + height)

    def has_valid_pixels(self, row: int, col: int, height: int, width: int) -> bool:
        return True

    def read_tile(self, row: int, col: int, size: int, row_end: int, col_end: int) -> TileRead:
        image = np.zeros((self.bands, size, size), dtype=self.dtype)
        mask = np.full((size, size), IGNORE, dtype=np.uint8)
        part = self._image[:, row : min(row + size, row_end), col : min(col + size, col_end)]
        h, w = part.shape[1:]
        image[:, :h, :w] = part
        mask[:h, :w] = self._mask[row : row + h, col : col + w]
        valid = np.zeros((size, size), dtype=bool)
        valid[:h, :w] = True
        return TileRead(image, mask, float(h * w) / float(size * size), valid)

    def close(self) -> None:
        pass
