"""Simulated annotators: each turns a dense mask into the labels a cheaper annotation protocol would give.

Every generator is a pure function of (mask, numpy Generator, options) returning an `Annotation`: the label map
(uint8, 255 = no label) and the annotation effort in the protocol's unit (clicks, strokes, boxes, cells, tags,
tiles), so label quality can be weighed against annotation cost. Mask pixels of 255 (padding, nodata) never get a
label. Objects are 8-connected components of one class, as an annotator would see them.

Points and scribbles see a tile in one of two ways (`regions`): `objects` (things on a background: class 0 is one
background region, every other class's components are objects) or `all_classes` (land cover, where no class is
background: every component of every class, 0 included, is a region annotated alike).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from eqseg.errors import EqsegError
from eqseg.utils.checks import require_choice, require_float, require_int

from eqseg.labels import IGNORE
EIGHT = np.ones((3, 3), dtype=bool)
EFFORT_UNITS = {
    "points": "clicks", "scribbles": "strokes", "boxes": "boxes", "coarse": "cells", "tags": "tags", "partial": "tiles",
}
REGIONS = ("objects", "all_classes")  # how points and scribbles see a tile (module docstring)


class Annotation(NamedTuple):
    labels: np.ndarray
    effort: int


# ------------------------------------------------------------------------------------------------------ helpers
def class_boundary(mask: np.ndarray, with_ignore: bool = True) -> np.ndarray:
    """Pixels with a 4-neighbour of another value; with_ignore=False leaves out edges that touch 255 pixels."""
    vertical = mask[1:, :] != mask[:-1, :]
    horizontal = mask[:, 1:] != mask[:, :-1]
    if not with_ignore:
        vertical &= (mask[1:, :] != IGNORE) & (mask[:-1, :] != IGNORE)
        horizontal &= (mask[:, 1:] != IGNORE) & (mask[:, :-1] != IGNORE)
    out = np.zeros(mask.shape, dtype=bool)
    out[1:, :] |= vertical
    out[:-1, :] |= vertical
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    return out


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Taxicab distance to the nearest class boundary (0 on it): how deep inside its region a pixel lies.

    A chamfer distance tells interior from edge as well as the Euclidean one at a quarter of the cost. The tile
    border is not a boundary, since objects cut by it continue outside the tile.
    """
    boundary = class_boundary(mask)
    if not boundary.any():
        return np.full(mask.shape, sum(mask.shape), dtype=np.int32)
    return ndi.distance_transform_cdt(~boundary, metric="taxicab")


def objects(mask: np.ndarray, with_background: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Objects of every foreground class (and of class 0 if asked): label image (0 = none), class of object i at i - 1."""
    present = np.unique(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    classes = []
    for c in present[((present != 0) | with_background) & (present != IGNORE)]:
        lab, n = ndi.label(mask == c, structure=EIGHT)
        labels += np.where(lab > 0, lab + len(classes), 0).astype(np.int32)
        classes += [c] * n
    return labels, np.asarray(classes, dtype=np.uint8)


def sample_per_group(group: np.ndarray, weight: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of k[g] items of each group g (all if fewer), drawn without replacement with probability ∝ weight.

    Efraimidis-Spirakis: the k largest priorities u ** (1 / w) of a group are a weighted sample, so one sort of
    group - priority / 2 serves every group at once.
    """
    priority = rng.random(group.size) ** (1.0 / weight)
    order = np.argsort(group - 0.5 * priority)
    sorted_groups = group[order]
    rank = np.arange(order.size) - np.searchsorted(sorted_groups, sorted_groups)
    return order[rank < k[sorted_groups]]


def background_skeleton(region: np.ndarray) -> np.ndarray:
    """Skeleton of a wide region, thinned at half resolution then refined at full resolution.

    Thinning takes as many passes as the region is wide, and the background is the widest region of a tile:
    halving it halves the passes on a quarter of the pixels, for a skeleton within a pixel of the full one.
    Half-resolution pixels are kept only when their whole 2x2 block is in the region, so it stays inside.
    """
    h, w = region.shape
    blocks = np.pad(region, ((0, h % 2), (0, w % 2))).reshape((h + 1) // 2, 2, (w + 1) // 2, 2).all(axis=(1, 3))
    return skeletonize(np.kron(skeletonize(blocks), np.ones((2, 2), dtype=bool))[:h, :w])


def _empty(shape) -> np.ndarray:
    return np.full(shape, IGNORE, dtype=np.uint8)


def annotated_regions(
    mask: np.ndarray, where: str, regions: str, min_region_pixels: int, background: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The regions an annotator marks: label image (0 = none), class of region i at i - 1, whether region i is
    annotated at i - 1 (at least `min_region_pixels` pixels: smaller fragments are not worth a click), and whether
    every class is a region class (`all_classes`, where a `background` count has no meaning and is refused)."""
    all_classes = require_choice(where, "regions", regions, REGIONS) == "all_classes"
    min_region_pixels = require_int(where, "min_region_pixels", min_region_pixels, 1)
    if all_classes and background is not None:
        raise EqsegError(f"{where}: background applies to regions: objects only (with all_classes every region of "
                         f"every class gets per_object; got background={background!r})")
    objs, classes = objects(mask, with_background=all_classes)
    if min_region_pixels == 1:
        kept = np.ones(classes.size, dtype=bool)
    else:
        kept = np.bincount(objs.ravel(), minlength=classes.size + 1)[1:] >= min_region_pixels
    return objs, classes, kept, all_classes


# --------------------------------------------------------------------------------------------------- generators
def points(
    mask: np.ndarray, rng: np.random.Generator, per_object: int = 1, background: int | None = None, focus: float = 2.0,
    regions: str = "objects", min_region_pixels: int = 1,
) -> Annotation:
    """Single-pixel clicks: `per_object` in every object, `background` on the background (default: one per object,
    at least one, so that no class floods the other when expanded). With regions: all_classes, `per_object` in
    every connected region of every class instead (land cover has no background). Objects or regions under
    `min_region_pixels` pixels get none (and cost nothing).

    Clicks are drawn with probability ∝ (interior distance + 1) ** focus, so like an annotator's they land well
    inside objects (focus = 0: anywhere in the object).
    """
    per_object = require_int("weak.points", "per_object", per_object, 1)
    focus = require_float("weak.points", "focus", focus, 0.0)
    objs, classes, kept, all_classes = annotated_regions(mask, "weak.points", regions, min_region_pixels, background)
    if all_classes:
        background = 0  # every labelled pixel lies in a region: group 0 is empty
    else:
        background = max(1, int(kept.sum())) if background is None else require_int("weak.points", "background", background, 0)
    candidates = np.flatnonzero(mask != IGNORE)
    group = objs.ravel()[candidates]  # 0 = background, a group of its own
    weight = (interior_distance(mask).ravel()[candidates] + 1.0) ** focus
    k = np.full(classes.size + 1, per_object)
    k[1:][~kept] = 0
    k[0] = background
    clicks = candidates[sample_per_group(group, weight, k, rng)]
    labels = _empty(mask.shape)
    labels.flat[clicks] = mask.flat[clicks]
    return Annotation(labels, int(clicks.size))


def scribbles(
    mask: np.ndarray, rng: np.random.Generator, per_object: int = 1, background: int | None = None, width: int = 1,
    erosion: int = 2, length: int = 48, regions: str = "objects", min_region_pixels: int = 1,
) -> Annotation:
    """Strokes along the skeleton of eroded regions: `per_object` per object, `background` on the background
    (default: one per object, at least one). With regions: all_classes, `per_object` per connected region of every
    class instead (land cover has no background). Objects or regions under `min_region_pixels` pixels get none.

    Erosion keeps strokes `erosion` pixels off class boundaries, as an annotator keeps off edges; an object that
    erosion removes gets a dot at its deepest pixel. A stroke is the part of its object's skeleton (or of its
    background skeleton piece) within `length` / 2 pixels (chessboard) of a random centre, drawn `width` wide
    (odd: a disc of radius (width - 1) / 2 around the skeleton) and clipped to its class, so every labelled pixel is correct.
    """
    where = "weak.scribbles"
    per_object = require_int(where, "per_object", per_object, 1)
    width = require_int(where, "width", width, 1)
    if width % 2 == 0:  # a disc centred on the skeleton: 1, 3, 5 ... pixels across (2 drew the same as 1)
        raise EqsegError(f"{where}: width must be odd (a stroke is centred on its skeleton), got {width}")
    erosion = require_int(where, "erosion", erosion, 1)
    length = require_int(where, "length", length, 1)
    objs, classes, kept, all_classes = annotated_regions(mask, where, regions, min_region_pixels, background)
    depth = interior_distance(mask)
    n = classes.size
    if not all_classes:
        background = max(1, int(kept.sum())) if background is None else require_int(where, "background", background, 0)
    core = (mask != IGNORE) & (depth >= erosion)
    # erosion >= 1 removes every boundary pixel, so objects of different classes never touch and one call suffices
    if all_classes:
        skeleton = skeletonize(core)
    else:
        skeleton = skeletonize(core & (mask != 0)) | background_skeleton(core & (mask == 0))
    reached = np.zeros(n + 1, dtype=bool)
    reached[objs[skeleton]] = True
    lost = np.flatnonzero(~reached[1:] & kept) + 1
    if lost.size:
        skeleton[tuple(np.asarray(ndi.maximum_position(depth, objs, lost)).T)] = True
    if all_classes:
        piece = objs  # stroke membership: the region
    else:
        pieces, _ = ndi.label(skeleton & (mask == 0), structure=EIGHT)
        piece = np.where(mask == 0, pieces + n, objs)  # stroke membership: an object, or a background skeleton piece
    candidates = np.flatnonzero(skeleton)
    if candidates.size == 0:
        return Annotation(_empty(mask.shape), 0)
    member = piece.ravel()[candidates]
    k = np.full(n + 1, per_object)
    k[1:][~kept] = 0
    k[0] = 0 if all_classes else background
    draw = np.where(member > n, 0, member)  # background centres are drawn over all its skeleton at once
    centres = candidates[sample_per_group(draw, np.ones(candidates.size), k, rng)]
    if centres.size == 0:
        return Annotation(_empty(mask.shape), 0)
    not_centre = np.ones(mask.shape, dtype=bool)
    not_centre.flat[centres] = False
    dist, (rows, cols) = ndi.distance_transform_cdt(not_centre, metric="chessboard", return_indices=True)
    nearest = (rows * mask.shape[1] + cols).ravel()[candidates]
    stroke = candidates[(piece.ravel()[nearest] == member) & (dist.ravel()[candidates] <= length // 2)]
    labels = _empty(mask.shape)
    labels.flat[stroke] = mask.flat[stroke]
    if width > 1:
        dist, (rows, cols) = ndi.distance_transform_edt(labels == IGNORE, return_indices=True)
        source = labels[rows, cols]
        labels = np.where((dist <= (width - 1) / 2) & (source == mask), source, IGNORE).astype(np.uint8)
    return Annotation(labels, int(centres.size))


def boxes(mask: np.ndarray, rng: np.random.Generator, inside: str = "class", jitter: int = 0) -> Annotation:
    """One box per object; outside every box is background, inside is the box's class or unknown (`inside`).

    Pixels in boxes of two classes are unknown. `jitter` loosens each side outwards by up to that many pixels,
    as hand-drawn boxes are rarely tight, so boxes always contain their objects.
    """
    inside = require_choice("weak.boxes", "inside", inside, ("class", "unknown"))
    jitter = require_int("weak.boxes", "jitter", jitter, 0)
    objs, classes = objects(mask)
    h, w = mask.shape
    labels = np.where(mask == IGNORE, IGNORE, 0).astype(np.uint8)
    if classes.size == 0:
        return Annotation(labels, 0)
    spans = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(objs)])
    if jitter:
        spans += rng.integers(0, jitter + 1, spans.shape) * np.array([-1, 1, -1, 1])
        spans = np.clip(spans, 0, [h, h, w, w])
    r0, r1, c0, c1 = spans.T
    # summed-area trick: +1/-1 at the corners, two cumulative sums count the boxes of each class over every pixel
    corners = np.zeros((int(classes.max()) + 1, h + 1, w + 1), dtype=np.int32)
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(corners, (classes, rows, cols), sign)
    covered = corners.cumsum(axis=1).cumsum(axis=2)[:, :h, :w] > 0
    n_classes = covered.sum(axis=0)
    if inside == "class":
        fill = np.where(n_classes == 1, covered.argmax(axis=0), IGNORE)
    else:
        fill = np.full(mask.shape, IGNORE)
    labels = np.where((n_classes > 0) & (mask != IGNORE), fill, labels).astype(np.uint8)
    return Annotation(labels, int(classes.size))


def coarse(mask: np.ndarray, rng: np.random.Generator, factor: int = 8, band: int | None = None) -> Annotation:
    """Labels drawn at 1/factor resolution (majority vote per cell), with `band` unknown pixels each side of class edges.

    The cell grid starts at a random offset, as a coarse annotation is not aligned with the tile. band defaults
    to factor // 2: the edge of a majority cell is off the true edge by up to half a cell.
    """
    factor = require_int("weak.coarse", "factor", factor, 2)
    band = factor // 2 if band is None else require_int("weak.coarse", "band", band, 0)
    h, w = mask.shape
    oy, ox = rng.integers(0, factor, 2)
    ny, nx = -(-(h + oy) // factor), -(-(w + ox) // factor)
    grid = np.full((ny * factor, nx * factor), IGNORE, dtype=np.uint8)
    grid[oy : oy + h, ox : ox + w] = mask
    cells = grid.reshape(ny, factor, nx, factor).transpose(0, 2, 1, 3).reshape(ny * nx, factor * factor)
    valid = cells != IGNORE
    n_classes = int(mask[mask != IGNORE].max(initial=0)) + 1
    cell_of = np.broadcast_to(np.arange(ny * nx)[:, None], cells.shape)
    votes = np.bincount((cell_of[valid] * n_classes + cells[valid]), minlength=ny * nx * n_classes)
    votes = votes.reshape(ny * nx, n_classes)
    majority = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), IGNORE).astype(np.uint8)
    up = majority.reshape(ny, nx).repeat(factor, axis=0).repeat(factor, axis=1)[oy : oy + h, ox : ox + w]
    unknown = mask == IGNORE
    if band:
        unknown |= ndi.maximum_filter(class_boundary(up, with_ignore=False), size=2 * band - 1)
    return Annotation(np.where(unknown, IGNORE, up).astype(np.uint8), int((majority != IGNORE).sum()))


def tags(mask: np.ndarray, rng: np.random.Generator, min_pixels: int = 1) -> Annotation:
    """Image-level tags: the sorted ids of the classes covering at least `min_pixels` pixels."""
    min_pixels = require_int("weak.tags", "min_pixels", min_pixels, 1)
    counts = np.bincount(mask.ravel(), minlength=256)[:IGNORE]
    present = np.flatnonzero(counts >= min_pixels).astype(np.uint8)
    return Annotation(present, int(present.size))


def partial(masks: np.ndarray, tile_ids: np.ndarray, seed: int, fraction: float = 0.1) -> Annotation:
    """Semi-supervision: round(fraction * N) tiles (at least one) keep their full mask, the others are unlabelled.

    The tiles are those with the smallest keys drawn from (seed, tile id): the choice does not depend on the
    order of the tiles, and a larger fraction keeps a superset of the tiles of a smaller one (nested budgets).
    """
    fraction = require_float("weak.partial", "fraction", fraction, 0.0, 1.0, low_open=True)
    keys = np.array([np.random.default_rng((seed, int(t))).random() for t in tile_ids])
    chosen = np.sort(np.argsort(keys, kind="stable")[: max(1, round(fraction * len(tile_ids)))])
    labels = np.full(masks.shape, IGNORE, dtype=np.uint8)
    labels[chosen] = masks[chosen]
    return Annotation(labels, int(chosen.size))


PER_TILE = {"points": points, "scribbles": scribbles, "boxes": boxes, "coarse": coarse, "tags": tags}
