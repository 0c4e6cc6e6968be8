"""Torch view of a tile store: normalised float tiles and their masks, with seeded D4 augmentation.

Augmentation draws from a generator seeded by (seed, epoch, tile), so a run resumed after a kill, or run with any
number of loader workers, sees exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from eqseg.tiling.store import TileStore


def d4_numpy(a: np.ndarray, g: int) -> np.ndarray:
    """Apply D4 element g (0-3: rotations by g*90 degrees; 4-7: the same after a horizontal flip) on the last two axes."""
    if g >= 4:
        a = a[..., ::-1]
    return np.rot90(a, g % 4, axes=(-2, -1))


class TileDataset(Dataset):
    def __init__(self, store: TileStore, ids: np.ndarray, augment: str = "none", seed: int = 0, labels: np.ndarray | None = None):
        self.images = store.images
        self.masks = store.masks if labels is None else labels
        self.ids = np.asarray(ids)
        self.label_rows = self.ids if labels is None else np.arange(len(self.ids))
        self.mean = np.asarray(store.meta["band_mean"], dtype=np.float32)[:, None, None]
        self.inv_std = (1.0 / np.asarray(store.meta["band_std"], dtype=np.float32))[:, None, None]
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image = (np.asarray(self.images[self.ids[i]], dtype=np.float32) - self.mean) * self.inv_std
        mask = np.asarray(self.masks[self.label_rows[i]])
        if self.augment == "d4":
            g = int(np.random.default_rng((self.seed, self.epoch, int(self.ids[i]))).integers(8))
            image, mask = d4_numpy(image, g), d4_numpy(mask, g)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(mask.astype(np.int64))


def normalise(images: np.ndarray, meta: dict) -> np.ndarray:
    """Raw tiles (N, C, S, S) to float32 with the train split's band statistics."""
    mean = np.asarray(meta["band_mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(meta["band_std"], dtype=np.float32)[:, None, None]
    return (np.asarray(images, dtype=np.float32) - mean) / std
