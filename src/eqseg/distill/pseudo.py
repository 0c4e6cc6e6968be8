"""Pseudo-labels of one tile: the given labels stay, confident teacher classes fill what they leave open."""

from __future__ import annotations

import numpy as np

from eqseg.labels import IGNORE


def fill_confident(given: np.ndarray, probs: np.ndarray, valid: np.ndarray, threshold: float,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 labels: `given` wherever it labels a pixel (never overwritten); elsewhere, on `valid` pixels,
    the teacher's most probable class if its probability is at least `threshold`; IGNORE otherwise.

    probs: (K, H, W) class probabilities. allowed: (K,) bool, the classes a tile may hold (its image-level tags);
    the teacher's choice is restricted to them, with its unrenormalised probability as the confidence.
    """
    given = np.asarray(given)
    if probs.ndim != 3 or probs.shape[1:] != given.shape or valid.shape != given.shape:
        raise ValueError(f"shapes do not match: given {given.shape}, probs {probs.shape}, valid {valid.shape}")
    scores = probs if allowed is None else np.where(np.asarray(allowed, bool)[:, None, None], probs, -np.inf)
    cls = scores.argmax(0)
    confidence = np.take_along_axis(probs, cls[None], 0)[0]
    out = given.astype(np.uint8, copy=True)
    fill = (given == IGNORE) & valid & (confidence >= threshold)
    if allowed is not None and not np.any(allowed):
        fill[:] = False  # a tile tagged with nothing: no class to give
    out[fill] = cls[fill]
    return out
