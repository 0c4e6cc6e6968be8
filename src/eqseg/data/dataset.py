"""Torch view of a tile store: normalised float tiles and their masks, with seeded D4 augmentation.

Augmentation draws from a generator seeded by (seed, epoch, tile), so a run resumed after a kill, or run with any
number of loader workers, sees exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from eqseg.data.normalise import Normaliser
from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.models.groups import D4
from eqseg.tiling.store import TileStore, tile_rows


class TileDataset(Dataset):
    """Items are (image float32 (C,S,S), mask int64 (S,S), tags float32 (K,) or empty).

    Labels default to the store's dense masks; `labels`/`label_ids` substitute the output of `eqseg weak`: per-pixel
    labels (N, S, S), or an image-level tag matrix (N, K), in which case the mask is all unlabelled (255). Inputs are
    normalised by `normaliser` (default: the store's train-split statistics, `normalise.mode: train`).
    """

    def __init__(self, store: TileStore, ids: np.ndarray, augment: str = "none", seed: int = 0,
                 labels: np.ndarray | None = None, label_ids: np.ndarray | None = None,
                 normaliser: Normaliser | None = None):
        self.images = store.images
        self.normaliser = normaliser or Normaliser("train", store.meta.band_mean, store.meta.band_std)
        self.sources = store.source_of if self.normaliser.mode == "image" else None
        self.ids = np.asarray(ids)
        if labels is None:
            self.labels, self.rows = store.masks, self.ids
        else:
            rows = tile_rows(label_ids, self.ids)
            missing = self.ids[rows < 0].astype(np.int64).tolist()
            if missing:
                raise EqsegError(f"weak labels do not cover train tiles {missing[:5]}: re-run `eqseg weak` for this tile store")
            self.labels, self.rows = labels, rows
        self.tag_mode = self.labels.ndim == 2
        self.size = store.images.shape[-1]
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int | tuple[int, int]):
        """Item i of the current epoch (set_epoch), or of `epoch` for i = (epoch, position): what the training
        loader's sampler passes, so workers that persist across epochs need no message."""
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        tile = int(self.ids[i])
        image = self.normaliser(self.images[tile][None], None if self.sources is None else self.sources[tile])[0]
        label = np.asarray(self.labels[self.rows[i]])
        if self.tag_mode:
            mask, tags = np.full((self.size, self.size), IGNORE, dtype=np.uint8), torch.from_numpy(label.astype(np.float32))
        else:
            mask, tags = label, torch.zeros(0)
        if self.augment == "d4":
            g = int(np.random.default_rng((self.seed, epoch, tile)).integers(D4.order))
            image, mask = D4.transform_numpy(image, g), D4.transform_numpy(mask, g)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(mask.astype(np.int64)), tags
