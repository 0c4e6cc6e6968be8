"""Classical expansion of sparse labels into dense pseudo-labels, from the image alone (no learning).

Each method takes the tile's features (H, W, C: every band standardised over the tile, so uint8 RGB and uint16
panchromatic share one scale) and the labels (255 = none), and returns new labels. These are the baselines a
learned method must beat: seeded region growing, watershed on the gradient, superpixel majority, k-means in boxes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic
from skimage.segmentation import watershed as skimage_watershed

from eqseg.errors import EqsegError
from eqseg.weak.generators import IGNORE, objects
from eqseg.utils.checks import check_known, require_choice, require_float, require_int


def features(image: np.ndarray) -> np.ndarray:
    """(C, H, W) image of any dtype to (H, W, C) float32, each band at zero mean and unit deviation over the tile."""
    x = np.moveaxis(np.asarray(image, dtype=np.float32), 0, -1)
    std = x.std(axis=(0, 1))
    return (x - x.mean(axis=(0, 1))) / np.where(std > 0, std, 1.0)


def _group_sums(x: np.ndarray, group: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums (n, C) of the rows of x (P, C) and row counts (n,) for each of the groups 0..n-1."""
    counts = np.bincount(group, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(group, weights=x[:, c], minlength=n) for c in range(x.shape[1])], axis=1)
    return sums, counts


def none(feat: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The labels as they are: the reference every expansion is compared with."""
    return labels.copy()


def region_growing(feat: np.ndarray, labels: np.ndarray, threshold: float = 1.0, max_steps: int = 64) -> np.ndarray:
    """Seeded region growing (Adams & Bischof 1994), one ring per step.

    Every connected group of labelled pixels is a region. At each step each unlabelled pixel touching regions
    (4-neighbours) joins the one whose running mean is closest to its features, if at most `threshold` away
    (in band standard deviations); pixels too far from every neighbour stay unlabelled. Growing ring by ring
    instead of pixel by pixel from a priority queue keeps it vectorised.
    """
    threshold = require_float("weak.expand.region_growing", "threshold", threshold, 0.0, low_open=True)
    max_steps = require_int("weak.expand.region_growing", "max_steps", max_steps, 1)
    w = feat.shape[1]
    flat = feat.reshape(-1, feat.shape[2])
    seeds, classes = objects(labels, with_background=True)
    if classes.size == 0:
        return labels.copy()
    n = classes.size + 1
    sums, counts = _group_sums(flat, seeds.ravel(), n)
    grown = np.pad(seeds, 1)
    for _ in range(max_steps):
        inner = grown[1:-1, 1:-1]
        touching = (grown[:-2, 1:-1] > 0) | (grown[2:, 1:-1] > 0) | (grown[1:-1, :-2] > 0) | (grown[1:-1, 2:] > 0)
        rows, cols = np.nonzero((inner == 0) & touching)
        if rows.size == 0:
            break
        up, down, left, right = grown[rows, cols + 1], grown[rows + 2, cols + 1], grown[rows + 1, cols], grown[rows + 1, cols + 2]
        neighbours = np.stack([up, down, left, right])
        means = sums / np.maximum(counts, 1)[:, None]
        dist = np.linalg.norm(flat[rows * w + cols][None] - means[neighbours], axis=-1)
        dist[neighbours == 0] = np.inf
        best = dist.argmin(axis=0)
        join = dist[best, np.arange(rows.size)] <= threshold
        if not join.any():
            break
        region = neighbours[best, np.arange(rows.size)][join]
        grown[rows[join] + 1, cols[join] + 1] = region
        new_sums, new_counts = _group_sums(flat[rows[join] * w + cols[join]], region, n)
        sums += new_sums
        counts += new_counts
    return np.concatenate([[IGNORE], classes]).astype(np.uint8)[grown[1:-1, 1:-1]]


def watershed(feat: np.ndarray, labels: np.ndarray, compactness: float = 0.0) -> np.ndarray:
    """Watershed flooding of the gradient magnitude (Sobel, over all bands) from the labelled pixels as markers.

    Regions meet on gradient ridges, i.e. on image edges; every pixel gets a label once any seed exists.
    """
    compactness = require_float("weak.expand.watershed", "compactness", compactness, 0.0)
    markers = np.where(labels == IGNORE, 0, labels.astype(np.int32) + 1)
    if not markers.any():
        return labels.copy()
    gradient = np.sqrt(sum(sobel(feat[..., c]) ** 2 for c in range(feat.shape[-1])))
    return (skimage_watershed(gradient, markers, compactness=compactness) - 1).astype(np.uint8)


def superpixels(
    feat: np.ndarray, labels: np.ndarray, algorithm: str = "slic", segment_area: int = 64, compactness: float = 0.3,
    scale: float = 100.0,
) -> np.ndarray:
    """Superpixel propagation: each superpixel takes the majority class of its labelled pixels (ties: lowest id).

    Superpixels without a labelled pixel stay unlabelled; labelled pixels keep their label. SLIC takes
    `segment_area` (mean superpixel area in pixels, so the tile size does not matter) and `compactness` (in band
    deviations, hence small); Felzenszwalb takes `scale`.
    """
    where = "weak.expand.superpixels"
    algorithm = require_choice(where, "algorithm", algorithm, ("slic", "felzenszwalb"))
    if algorithm == "slic":
        segments = slic(
            feat, n_segments=max(1, labels.size // require_int(where, "segment_area", segment_area, 1)),
            compactness=require_float(where, "compactness", compactness, 0.0, low_open=True), channel_axis=-1,
            convert2lab=False, start_label=0,
        )
    else:
        segments = felzenszwalb(feat, scale=require_float(where, "scale", scale, 0.0, low_open=True), channel_axis=-1)
    known = labels != IGNORE
    if not known.any():
        return labels.copy()
    n, k = int(segments.max()) + 1, int(labels[known].max()) + 1
    votes = np.bincount(segments[known] * k + labels[known], minlength=n * k).reshape(n, k)
    majority = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), IGNORE)
    return np.where(known, labels, majority[segments]).astype(np.uint8)


def kmeans(feat: np.ndarray, labels: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Box refinement by two-means clustering inside every region labelled c >= 1 (boxes with inside='class').

    Each region (a box, or overlapping boxes of one class) starts with two centres, its own mean feature
    (object) and the mean of the tile's background labels; after Lloyd iterations the pixels nearer the
    background centre become background, except in holes of the object cluster: objects are solid (the light
    chromatin of a nucleus, the shadowed half of a roof). Labels outside boxes are unchanged.
    """
    iterations = require_int("weak.expand.kmeans", "iterations", iterations, 1)
    background = labels.ravel() == 0
    regions, classes = objects(labels)
    if classes.size == 0 or not background.any():
        return labels.copy()
    flat = feat.reshape(-1, feat.shape[-1]).astype(np.float64)
    inside = np.flatnonzero(regions.ravel())
    group, x = regions.ravel()[inside] - 1, flat[inside]
    sums, counts = _group_sums(x, group, classes.size)
    centres = {True: sums / counts[:, None], False: np.tile(flat[background].mean(axis=0), (classes.size, 1))}
    for _ in range(iterations):
        is_object = np.linalg.norm(x - centres[True][group], axis=1) <= np.linalg.norm(x - centres[False][group], axis=1)
        for side in (True, False):
            sums, counts = _group_sums(x[is_object == side], group[is_object == side], classes.size)
            centres[side] = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres[side])
    solid = np.zeros(labels.shape, dtype=bool)
    solid.flat[inside[is_object]] = True
    solid = ndi.binary_fill_holes(solid) & (regions > 0)
    return np.where(solid | (regions == 0), labels, 0).astype(np.uint8)


_METHODS = {"none": none, "region_growing": region_growing, "watershed": watershed, "superpixels": superpixels, "kmeans": kmeans}
METHODS = tuple(_METHODS)


def check_method(method: str, options: dict) -> None:
    if method not in _METHODS:
        raise EqsegError(f"weak.expand: unknown method {method!r} (allowed: {', '.join(METHODS)})")
    check_known(f"weak.expand.{method}", _METHODS[method], options, skip=2)


def expand(image: np.ndarray, labels: np.ndarray, method: str, **options) -> np.ndarray:
    """Dense(r) pseudo-labels from sparse `labels` (H, W, 255 = none) and the tile's `image` (C, H, W)."""
    check_method(method, options)
    image, labels = np.asarray(image), np.asarray(labels)
    if image.ndim != 3 or image.shape[1:] != labels.shape or labels.dtype != np.uint8:
        raise EqsegError(
            f"weak.expand: image must be (C, H, W) and labels (H, W) uint8 of the same H, W "
            f"(got {image.shape} and {labels.shape} {labels.dtype})"
        )
    return _METHODS[method](features(image), labels, **options)
