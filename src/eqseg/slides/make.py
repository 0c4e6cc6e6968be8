"""Assemble real image tiles (e.g. CPM-15 H&E crops) into a pyramidal tiled TIFF slide and its mask.

No real whole-slide image is small enough to ship, so this builds one from real pixels: tiles placed row by row
with blank white margins between them (background for tissue detection to find), written as an OME-TIFF pyramid
(SubIFDs, 256-px tiles, deflate) with the pixel size both in the OME metadata and in the resolution tags, plus a
mask of class ids with the same pyramid. Everything is held in memory: it is meant for a few dozen tiles.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqseg.errors import EqsegError
from eqseg.tiling.pairs import find_pairs, mask_to_classes, read_image_file
from eqseg.utils.atomic import atomic_file

TIFF_TILE = 256
MIN_LEVEL_SIDE = 512  # the pyramid stops at the first level whose longer side is at most this


@dataclass(frozen=True)
class Placement:
    name: str
    row: int
    col: int
    height: int
    width: int


def shelf_layout(sizes: list[tuple[int, int]], columns: int, margin: int) -> tuple[list[tuple[int, int]], int, int]:
    """(row, col) of each (height, width) box placed `columns` to a row with `margin` pixels around every box;
    returns the positions and the canvas height and width."""
    positions, y, width = [], margin, 0
    for start in range(0, len(sizes), columns):
        x = margin
        row = sizes[start : start + columns]
        for h, w in row:
            positions.append((y, x))
            x += w + margin
        width = max(width, x)
        y += max(h for h, _ in row) + margin
    return positions, y, width


def cell_layout(sizes: list[tuple[int, int]], columns: int, cell: int, margin: int) -> tuple[list[tuple[int, int]], int, int]:
    """(row, col) of each box at `margin` inside its own cell of a uniform `cell`-pixel grid, `columns` cells to a
    row; returns the positions and the canvas height and width. Blocks of `cell` pixels then hold one box each."""
    for i, (h, w) in enumerate(sizes):
        if max(h, w) + 2 * margin > cell:
            raise EqsegError(f"make-slide: tile {i} ({h}x{w} px) does not fit a {cell}-px cell with {margin}-px margins; raise cell_um")
    positions = [(i // columns * cell + margin, i % columns * cell + margin) for i in range(len(sizes))]
    return positions, -(-len(sizes) // columns) * cell, min(len(sizes), columns) * cell


def _resize(a: np.ndarray, factor: float, nearest: bool) -> np.ndarray:
    from PIL import Image

    if factor == 1:
        return a
    size = (max(1, round(a.shape[1] * factor)), max(1, round(a.shape[0] * factor)))
    return np.asarray(Image.fromarray(a).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def halve(a: np.ndarray, nearest: bool) -> np.ndarray:
    """The next pyramid level: 2x2 means for images, every other pixel for class masks (ids must not blend)."""
    from skimage.transform import downscale_local_mean

    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2  # an odd last row or column is dropped, not padded with zeros
    if nearest:
        return a[:h:2, :w:2]
    return (downscale_local_mean(a[:h, :w], (2, 2) + (1,) * (a.ndim - 2)) + 0.5).astype(a.dtype)


def pyramid(a: np.ndarray, nearest: bool) -> list[np.ndarray]:
    levels = [a]
    while max(levels[-1].shape[:2]) > MIN_LEVEL_SIDE:
        levels.append(halve(levels[-1], nearest))
    return levels


def write_pyramid(path: Path, levels: list[np.ndarray], mpp: float) -> None:
    """An OME-TIFF pyramid: level 0 with its reduced levels as SubIFDs, each with its own resolution tags."""
    import tifffile

    rgb = levels[0].ndim == 3
    with atomic_file(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for i, lv in enumerate(levels):
            ppcm = 1e4 / (mpp * levels[0].shape[1] / lv.shape[1])
            tif.write(
                lv, tile=(TIFF_TILE, TIFF_TILE), compression="zlib", photometric="rgb" if rgb else "minisblack",
                resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                **(dict(subifds=len(levels) - 1, metadata={"axes": "YXS" if rgb else "YX", "PhysicalSizeX": mpp,
                                                            "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
                                                            "PhysicalSizeYUnit": "µm"})
                   if i == 0 else dict(subfiletype=1)),
            )


def make_slide(
    images: Path, masks: Path, out: Path, mask_out: Path, mpp: float, source_mpp: float | None = None,
    mask_suffix: str = "", mask_mode: str = "instances", include: tuple[str, ...] = (), columns: int = 4, margin: int = 256,
    cell: int | None = None,
) -> list[Placement]:
    """Build the slide and its mask; return where each tile went (level-0 pixels). Tiles are packed in rows, or with
    `cell` each sits in its own cell of a uniform grid."""
    pairs = [(i, m) for i, m in find_pairs(images, masks, mask_suffix) if not include or any(fnmatch.fnmatch(i.name, p) for p in include)]
    if not pairs:
        raise EqsegError(f"{images}: no image matches {list(include)}")
    factor = (source_mpp or mpp) / mpp
    tiles = []
    for img, msk in pairs:
        rgb = np.moveaxis(read_image_file(img)[:3], 0, -1)
        if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
            raise EqsegError(f"{img}: slides are built from 8-bit RGB tiles")
        cls = mask_to_classes(read_image_file(msk), mask_mode, None, 256, msk)
        if cls.shape != rgb.shape[:2]:
            raise EqsegError(f"{msk}: mask size differs from image {img.name}")
        tiles.append((img.stem, _resize(rgb, factor, False), _resize(cls, factor, True)))
    sizes = [t[1].shape[:2] for t in tiles]
    positions, height, width = cell_layout(sizes, columns, cell, margin) if cell else shelf_layout(sizes, columns, margin)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    label = np.zeros((height, width), dtype=np.uint8)
    placed = []
    for (name, rgb, cls), (r, c) in zip(tiles, positions):
        h, w = cls.shape
        canvas[r : r + h, c : c + w] = rgb
        label[r : r + h, c : c + w] = cls
        placed.append(Placement(name, r, c, h, w))
    write_pyramid(out, pyramid(canvas, nearest=False), mpp)
    write_pyramid(mask_out, pyramid(label, nearest=True), mpp)
    return placed


def make_slide_group(group, out_dir: Path, root: Path = Path(".")) -> dict[str, list[Placement]]:
    """Every slide of a `slides:` group (eqseg.config.SlideGroup) as `{name}.ome.tif` + `{name}.mask.ome.tif` in
    `out_dir`, written as a whole (a failed build leaves no partial folder).

    Its inputs are never touched: an `out_dir` that holds the group's images or masks (or is one of those folders) is
    refused before any work, and so is an existing folder holding files that eqseg did not write there."""
    from eqseg.utils.atomic import atomic_dir, check_outputs_apart

    check_outputs_apart({"--out": out_dir}, {"images": root / group.images, "masks": root / group.masks})
    placed = {}
    with atomic_dir(out_dir) as tmp:
        for name, s in group.slides.items():
            cell = round(group.cell_um / s.mpp) if group.cell_um else None
            placed[name] = make_slide(
                root / group.images, root / group.masks, tmp / f"{name}.ome.tif", tmp / f"{name}.mask.ome.tif", s.mpp,
                s.source_mpp, group.mask_suffix, group.mask_mode, tuple(s.include), group.columns,
                round(group.margin_um / s.mpp), cell,
            )
    return placed
