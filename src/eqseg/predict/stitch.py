"""Blending of overlapping windows, one row of windows at a time, in memory bounded by one band of rows.

Each window's class probabilities are weighted by a separable ramp that rises over the overlap from the window's
edges (where a CNN sees least context) to 1 in its middle, summed, and divided by the summed weights: seams vanish,
and a model whose output does not depend on the window gives exactly its own output back. Windows go down the scene
row by row, so the rows above the next row of windows are final and leave the band.

Windows are placed by eqseg.tiling.grid.window_origins: the last one of each row and column is shifted back to end
at the source's edge, so in a source at least one window large no window is padded (zero padding past the edge
made models paint a false class along the right and bottom borders); only a source smaller than a window is padded,
and its padding carries no weight.
"""

from __future__ import annotations

import numpy as np

from eqseg.labels import IGNORE


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
    """Weighted sums of probabilities for rows [top, top + size) of the whole width, plus the labels.

    A window adds weight only where its pixels are valid (inside the source, not nodata): the padding of a window
    that reaches past the source (a source smaller than a window) or nodata never takes part in the blend, and a
    pixel no valid window covered comes out as 255."""

    def __init__(self, num_classes: int, size: int, width: int, overlap: int):
        self.size, self.width = size, width
        self.weights = window_weights(size, overlap)
        self.acc = np.zeros((num_classes, size, width), dtype=np.float32)
        self.wsum = np.zeros((size, width), dtype=np.float32)
        self.labels = np.full((size, width), IGNORE, dtype=np.uint8)

    def add(self, col: int, probs: np.ndarray | None, labels: np.ndarray, valid: np.ndarray | None) -> None:
        """One window at `col` of the current row: probabilities (K, S, S), or None for a skipped window; `valid`
        (S, S) marks its pixels inside the source and not nodata (None: all of them)."""
        w = min(self.size, self.width - col)
        self.labels[:, col : col + w] = labels[:, :w]
        if probs is None:
            return
        wt = self.weights[:, :w] if valid is None else self.weights[:, :w] * valid[:, :w]
        self.acc[:, :, col : col + w] += probs[:, :, :w] * wt
        self.wsum[:, col : col + w] += wt

    def pop(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Finish the first n rows: (class map uint8 with 255 where no valid window was computed, probabilities
        float32 (0 there), labels, that "not computed" mask); then shift the band up by n."""
        wsum = self.wsum[:n]
        missing = wsum <= 0
        probs = self.acc[:, :n] / np.maximum(wsum, 1e-12)
        classes = probs.argmax(axis=0).astype(np.uint8)
        classes[missing] = IGNORE  # skipped (background of a slide), nodata of a scene, or padding
        probs[:, missing] = 0
        labels = self.labels[:n].copy()
        for a, empty in ((self.acc, 0), (self.wsum, 0), (self.labels, IGNORE)):
            a[..., : self.size - n, :] = a[..., n:, :]
            a[..., self.size - n :, :] = empty
        return classes, probs, labels, missing
