"""Stain normalisation of H&E tiles to a reference fitted on the training split (Macenko 2009, Reinhard 2001),
through torchstain's numpy backend; the reference travels in model.pt so that every command maps tiles from
elsewhere onto the same colours the model was trained on.

Tiles are normalised one by one (each tile's own stain vectors or colour statistics). A tile with too little
tissue for a stable estimate (mostly glass or background) is left unchanged: Macenko's stain vectors of a blank
tile are noise.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from eqseg.errors import EqsegError

METHODS = ("macenko", "reinhard")
MIN_TISSUE = 0.05  # share of a tile's pixels with optical density above Macenko's beta (0.15) to normalise it
log = logging.getLogger(__name__)


def _normaliser(method: str):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    if method == "macenko":
        return NumpyMacenkoNormalizer()
    if method == "reinhard":
        return NumpyReinhardNormalizer()
    raise EqsegError(f"normalise.stain: {method!r} is not one of none, {', '.join(METHODS)}")


def tissue_fraction(rgb: np.ndarray, io: float = 240, beta: float = 0.15) -> float:
    """Share of pixels of an (H, W, 3) uint8 image whose optical density exceeds beta in every channel."""
    od = -np.log((rgb.astype(np.float64) + 1) / io)
    return float((od >= beta).all(axis=-1).mean())


def _check(images: np.ndarray, where: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise EqsegError(f"{where}: stain normalisation needs 3-band uint8 RGB tiles (got {images.shape[1:]} {images.dtype})")


class StainNormaliser:
    """Maps (N, 3, H, W) uint8 tiles onto a reference's stain; `reference` is JSON-able (stored in model.pt)."""

    def __init__(self, method: str, reference: dict):
        self.method, self.reference = method, reference
        self._n = _normaliser(method)
        for key, value in reference.items():
            setattr(self._n, key, np.asarray(value) if isinstance(value, list) else value)

    @classmethod
    def fit(cls, method: str, tiles: np.ndarray) -> "StainNormaliser":
        """Fit the reference on a mosaic of training tiles (N, 3, H, W) uint8."""
        tiles = np.asarray(tiles)
        _check(tiles, f"normalise.stain {method}")
        mosaic = np.concatenate(list(tiles.transpose(0, 2, 3, 1)), axis=0)  # tiles stacked vertically
        n = _normaliser(method)
        try:
            n.fit(mosaic)
        except Exception as err:  # no tissue in the sample, degenerate colours
            raise EqsegError(f"normalise.stain {method}: cannot fit a reference on the training tiles ({err})") from None
        keys = ("HERef", "maxCRef") if method == "macenko" else ("target_means", "target_stds")
        reference = {k: np.asarray(getattr(n, k)).tolist() for k in keys}
        return cls(method, reference)

    def one(self, rgb: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 tile normalised, or unchanged when it holds too little tissue to estimate its stain."""
        if tissue_fraction(rgb) < MIN_TISSUE:
            return rgb
        try:
            with np.errstate(all="ignore"):
                out = self._n.normalize(rgb, stains=False)[0] if self.method == "macenko" else self._n.normalize(rgb)
        except Exception:  # a tile whose optical densities are degenerate (e.g. one colour)
            return rgb
        return np.clip(np.nan_to_num(out), 0, 255).astype(np.uint8)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        _check(images, f"normalise.stain {self.method}")
        return np.stack([self.one(im.transpose(1, 2, 0)).transpose(2, 0, 1) for im in images])

    @property
    def record(self) -> dict:
        return {"method": self.method, "reference": self.reference}


def reference_tiles(store, ids: Sequence[int], n: int = 16, seed: int = 0) -> np.ndarray:
    """Up to n training tiles for the reference: the most tissue-rich of a seeded sample of 4n."""
    ids = np.sort(np.asarray(ids))
    sample = np.sort(np.random.default_rng(seed).choice(ids, min(4 * n, len(ids)), replace=False))
    tiles = np.asarray(store.images[sample])
    richness = [tissue_fraction(t.transpose(1, 2, 0)) for t in tiles]
    keep = np.sort(np.argsort(richness, kind="stable")[::-1][:n])
    return tiles[keep]
