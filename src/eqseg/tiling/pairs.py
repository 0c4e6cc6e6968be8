"""Image/mask pairs as a tiling source: an image and its mask (class values, instance ids or colours), both small
enough to hold in memory (pathology tiles, EM slices, aerial image parts), matched by name across two folders, or
across several pairs of folders, one per group (a scene cut into parts: `images: data/x/*/images`).
"""

from __future__ import annotations

import re
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


GROUP = "*"  # the one folder component of `images` and `masks` that stands for each group's folder
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a group folder name that may become part of file names


@dataclass(frozen=True)
class Pair:
    """An image and its mask as a dataset names them: `name` is unique in the dataset (it names tiles in the store's
    index and prediction files); `group` is the folder `*` matched (None without one), the unit of split.by=group."""

    name: str
    group: str | None
    image: Path
    mask: Path


def group_folders(images: str, root: Path = Path(".")) -> dict[str, Path]:
    """Each group's images folder, by group name, sorted: the folders the `*` of `images` matches (hidden ones and
    those without the rest of the path are not groups)."""
    parts = Path(images).parts
    at = parts.index(GROUP)
    parent, rest = root.joinpath(*parts[:at]), parts[at + 1 :]
    if not parent.is_dir():
        raise EqsegError(f"{parent}: folder of the groups of images {images!r} not found")
    found = {d.name: d.joinpath(*rest) for d in sorted(parent.iterdir())
             if d.is_dir() and not d.name.startswith(".") and d.joinpath(*rest).is_dir()}
    if not found:
        raise EqsegError(f"{parent}: no folder matches images {images!r}")
    for name in found:
        if not _SAFE.fullmatch(name):
            raise EqsegError(f"{parent / name}: group folder name {name!r} cannot be part of source names (letters, "
                             "digits, _ . - only, starting with a letter or digit)")
    return found


def dataset_pairs(images: str, masks: str, suffix: str, root: Path = Path(".")) -> list[Pair]:
    """Every pair of a pairs dataset, in the order splits are drawn in (group, then image name). With one `*` in
    `images` and `masks`, each group's images are matched in the masks folder of the same group and named
    `<group>_<image stem>` (`tile1_image_part_001`: the same image names recur in every group)."""
    if GROUP not in Path(images).parts:
        pairs = [Pair(img.stem, None, img, msk) for img, msk in find_pairs(root / images, root / masks, suffix)]
    else:
        pairs = []
        for group, folder in group_folders(images, root).items():
            its_masks = root.joinpath(*(group if p == GROUP else p for p in Path(masks).parts))
            pairs += [Pair(f"{group}_{img.stem}", group, img, msk) for img, msk in find_pairs(folder, its_masks, suffix)]
    seen: dict[str, Path] = {}
    for p in pairs:
        if p.name in seen:
            raise EqsegError(f"{p.image}: source name {p.name!r} is also that of {seen[p.name]} (names must be unique "
                             "in a dataset: rename one)")
        seen[p.name] = p.image
    return pairs


def read_image_file(path: Path) -> np.ndarray:
    """An image as (C, H, W), keeping its dtype; a constant alpha band is dropped. A palette image gives its
    indices: colour-coded masks are read by read_colour_mask."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as err:
        raise _open_error(path, err) from None
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.shape[0] == 4 and (arr[3] == np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else arr[3] == 1).all():
        arr = arr[:3]
    return np.ascontiguousarray(arr)


def _open_error(path: Path, err: Exception) -> EqsegError:
    return EqsegError(f"{path}: cannot read image ({str(err).splitlines()[0] if str(err) else type(err).__name__})")


def read_colour_mask(path: Path) -> np.ndarray:
    """A colour-coded mask as (H, W, 3) uint8 RGB: RGB, palette (its colours, not its indices), grey, or with an
    opaque alpha band; a transparent pixel is refused (its colour means nothing)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
                raise EqsegError(f"{path}: a colour mask must be 8-bit RGB, RGBA or grey (got {arr.dtype} {arr.shape})")
            arr = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("RGB", "RGBA", "P", "PA", "L", "LA"):
                    raise EqsegError(f"{path}: a colour mask must be an RGB, RGBA, palette or 8-bit grey image (got mode {im.mode})")
                transparent = im.mode in ("RGBA", "PA", "LA") or "transparency" in im.info
                arr = np.asarray(im.convert("RGBA" if transparent else "RGB"))
    except EqsegError:
        raise
    except Exception as err:
        raise _open_error(path, err) from None
    if arr.shape[2] == 4:
        opaque = arr[..., 3] == 255
        if not opaque.all():
            raise EqsegError(f"{path}: {int(opaque.size - np.count_nonzero(opaque))} pixels are not opaque (alpha < 255): "
                             "a colour mask needs every pixel's colour")
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def pack_rgb(rgb) -> np.ndarray:
    """(..., 3) RGB -> one uint32 0xRRGGBB a pixel: colours compared as numbers."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colours_to_classes(rgb: np.ndarray, colours: dict[tuple[int, int, int], int], path: Path) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) uint8 class ids by the table (a colour may map to IGNORE); a colour not in the table
    is refused in one line naming the file, the most frequent such colour and its pixels. Vectorised: a sorted
    search among the table's packed colours (about 0.1 s for a 2000 x 2000 mask)."""
    keys = pack_rgb(list(colours))
    order = np.argsort(keys)
    keys, ids = keys[order], np.array(list(colours.values()), dtype=np.uint8)[order]
    packed = pack_rgb(rgb)
    at = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
    known = keys[at] == packed
    if not known.all():
        bad, counts = np.unique(packed[~known], return_counts=True)
        k = int(np.argmax(counts))
        c = int(bad[k])
        more = f" (and {len(bad) - 1} more unknown colours, {int(counts.sum() - counts[k])} pixels)" if len(bad) > 1 else ""
        raise EqsegError(f"{path}: colour #{c:06X} ({c >> 16}, {(c >> 8) & 255}, {c & 255}) on {int(counts[k])} pixels is "
                         f"not in mask_colours{more}: map it to a class or to ignore")
    return ids[at]


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
    """An image and its mask, both small enough to hold in memory (pathology tiles, EM slices). `name` defaults to
    the image's stem (dataset_pairs gives grouped pairs theirs); `colours` is the table of mask_mode colours."""

    image_path: Path
    mask_path: Path
    mask_mode: str
    mask_values: dict[int, int] | None
    num_classes: int
    name: str = ""
    group: str | None = None
    colours: dict[tuple[int, int, int], int] | None = None

    def __post_init__(self):
        self.name = self.name or self.image_path.stem
        self._image = read_image_file(self.image_path)
        if self.mask_mode == "colours":
            if not self.colours:
                raise EqsegError(f"{self.mask_path}: mask_mode colours needs a table of mask_colours")
            self._mask = colours_to_classes(read_colour_mask(self.mask_path), self.colours, self.mask_path)
        else:
            self._mask = mask_to_classes(read_image_file(self.mask_path), self.mask_mode, self.mask_values,
                                         self.num_classes, self.mask_path)
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
