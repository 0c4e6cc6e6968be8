"""Shared pieces of the classical baselines: input checks, per-image features, and the fitted map from
unsupervised groups (Otsu sides, k-means clusters, regions) to classes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.cluster.vq import kmeans2, vq

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE


def check_image(image, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] < 1 or min(image.shape[1:]) < 2:
        raise EqsegError(f"{where}: expected an image (C, H, W), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise EqsegError(f"{where}: image dtype {image.dtype} is not a real number type")
    return image


def check_training(images: Sequence, masks: Sequence, classes: Sequence[str], where: str):
    if not classes or len(classes) > IGNORE:  # class ids stay below IGNORE
        raise EqsegError(f"{where}: classes must list 1..255 class names (got {len(classes or [])})")
    if len(images) != len(masks) or not images:
        raise EqsegError(f"{where}: need at least one train image and one mask per image "
                         f"(got {len(images)} images, {len(masks)} masks)")
    out = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = check_image(image, f"{where}: train image {i}")
        mask = np.asarray(mask)
        if mask.shape != image.shape[1:]:
            raise EqsegError(f"{where}: train mask {i} has shape {mask.shape}, its image {image.shape[1:]}")
        bad = (mask != IGNORE) & ((mask < 0) | (mask >= len(classes)))
        if bad.any():
            raise EqsegError(f"{where}: train mask {i} has labels outside 0..{len(classes) - 1} (and 255)")
        out.append((image, mask.astype(np.int64)))
    if all((m == IGNORE).all() for _, m in out):
        raise EqsegError(f"{where}: every train pixel is unlabelled (255)")
    return out


def band_stats(images: Sequence[np.ndarray]) -> dict:
    """{"mean": [...], "std": [...]} per band over every pixel of the (C, H, W) images (for normalise: train)."""
    n = 0
    s1 = s2 = 0.0
    for image in images:
        x = np.asarray(image, dtype=np.float64).reshape(image.shape[0], -1)
        n += x.shape[1]
        s1 = s1 + x.sum(axis=1)
        s2 = s2 + (x * x).sum(axis=1)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def features(image: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """(C, H, W) image of any dtype to (H, W, C) float32 standardised bands: with the image's own band mean and
    deviation (norm None), or with fixed statistics `norm` = band_stats(train images)."""
    x = np.moveaxis(np.asarray(image, dtype=np.float32), 0, -1)
    if norm is None:
        mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1))
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    return (x - mean) / std


def contingency(groups: np.ndarray, mask: np.ndarray, n_groups: int, n_classes: int) -> np.ndarray:
    """(n_groups, n_classes) pixel counts of (group, true class), unlabelled pixels left out."""
    keep = mask != IGNORE
    idx = groups[keep].astype(np.int64) * n_classes + mask[keep]
    return np.bincount(idx, minlength=n_groups * n_classes).reshape(n_groups, n_classes).astype(np.float64)


def _macro_iou(cont: np.ndarray, mapping: np.ndarray) -> float:
    n_classes = cont.shape[1]
    cm = np.zeros((n_classes, n_classes))
    for k, c in enumerate(mapping):
        cm[:, c] += cont[k]
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return float(iou.mean()) if iou.size else 0.0


def fit_mapping(cont: np.ndarray, max_sweeps: int = 20) -> list[int]:
    """Class of each group, fitted on train counts: start from the majority class of each group, then change one
    group at a time while the train macro IoU improves (majority alone maps every group to a dominant background)."""
    cont = np.asarray(cont, dtype=np.float64)
    mapping = cont.argmax(axis=1)
    best = _macro_iou(cont, mapping)
    for _ in range(max_sweeps):
        changed = False
        for k in range(cont.shape[0]):
            for c in range(cont.shape[1]):
                if c == mapping[k]:
                    continue
                trial = mapping.copy()
                trial[k] = c
                score = _macro_iou(cont, trial)
                if score > best + 1e-12:
                    best, mapping, changed = score, trial, True
        if not changed:
            break
    return [int(c) for c in mapping]


def fit_kmeans(samples: np.ndarray, k: int, rng: np.random.Generator, where: str) -> np.ndarray:
    """k-means++ centres (k, D) of the rows of samples; rng (the fit's generator, from the cell seed) draws the
    initialisation."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[0] < k:
        raise EqsegError(f"{where}: {samples.shape[0]} train samples for k = {k} clusters")
    centres, _ = kmeans2(samples, k, minit="++", rng=rng)
    return centres


def nearest(samples: np.ndarray, centres) -> np.ndarray:
    codes, _ = vq(np.asarray(samples, dtype=np.float64), np.asarray(centres, dtype=np.float64))
    return codes


def region_means(regions: np.ndarray, feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean feature (R, C), pixel count (R,)) of each region label 0..R-1."""
    n = int(regions.max()) + 1
    flat = regions.ravel()
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=feat[..., c].ravel(), minlength=n) for c in range(feat.shape[-1])], 1)
    return sums / np.maximum(counts, 1)[:, None], counts
