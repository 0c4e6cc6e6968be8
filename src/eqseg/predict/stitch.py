"""Blending of overlapping windows, one row of windows at a time, in memory bounded by one band of rows.

Each window's class probabilities are weighted by a separable ramp that rises over the overlap from the window's
edges (where a CNN sees least context) to 1 in its middle, summed, and divided by the summed weights: seams vanish,
and a model whose output does not depend on the window gives exactly its own output back. Windows go down the scene
row by row, so the rows above the next row of windows are final and leave the band.
"""

from __future__ import annotations

import numpy as np


def ramp(size: int, overlap: int) -> np.ndarray:
    """1-D weights: a raised-cosine ramp over `overlap` pixels at both ends, 1 in between, never 0."""
    w = np.ones(size, dtype=np.float32)
    if overlap > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap, dtype=np.float64) + 0.5) / overlap)
        w[:overlap] = np.minimum(w[:overlap], rise)
        w[size - overlap :] = np.minimum(w[size - overlap :], rise[::-1])
    return w


def window_weights(size: int, overlap: int) -> np.ndarray:
    r = ramp(size, overlap)
    return np.outer(r, r)


class RowBand:
    """Weighted sums of probabilities for rows [top, top + size) of the whole width, plus labels and validity."""

    def __init__(self, num_classes: int, size: int, width: int, overlap: int):
        self.size, self.width = size, width
        self.weights = window_weights(size, overlap)
        self.acc = np.zeros((num_classes, size, width), dtype=np.float32)
        self.wsum = np.zeros((size, width), dtype=np.float32)
        self.labels = np.full((size, width), 255, dtype=np.uint8)
        self.valid = np.zeros((size, width), dtype=bool)

    def add(self, col: int, probs: np.ndarray | None, labels: np.ndarray, valid: np.ndarray) -> None:
        """One window at `col` of the current row: probabilities (K, S, S), or None for a skipped window."""
        w = min(self.size, self.width - col)
        h = self.size
        self.labels[:, col : col + w] = labels[:h, :w]
        if probs is None:
            return
        wt = self.weights[:, :w]
        self.acc[:, :, col : col + w] += probs[:, :, :w] * wt
        self.wsum[:, col : col + w] += wt
        self.valid[:, col : col + w] |= valid[:h, :w]

    def pop(self, n: int, fill: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finish the first n rows: (class map uint8, probabilities float32, labels); then shift the band up by n."""
        wsum = self.wsum[:n]
        probs = self.acc[:, :n] / np.maximum(wsum, 1e-12)
        classes = probs.argmax(axis=0).astype(np.uint8)
        classes[wsum <= 0] = fill  # no window computed here: background of a slide, nodata of a scene
        classes[(wsum > 0) & ~self.valid[:n]] = 255  # nodata inside a computed window
        probs[:, classes == 255] = 0
        labels = self.labels[:n].copy()
        for a, empty in ((self.acc, 0), (self.wsum, 0), (self.labels, 255), (self.valid, False)):
            a[..., : self.size - n, :] = a[..., n:, :]
            a[..., self.size - n :, :] = empty
        return classes, probs, labels
