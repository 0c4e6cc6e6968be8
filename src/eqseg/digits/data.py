"""The 5000-digit MNIST sample shipped in data/mnist5k, a fixed train/test split, and the test rotations.

The CSV has no header: 784 pixel columns (row-major 28x28, 0-255) then the label; rows are sorted by label, so the
split draws a fixed permutation (independent of the training seed, so every run tests on the same digits).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from eqseg.errors import EqsegError
from eqseg.models.groups import P4

DEFAULT_CSV = Path(__file__).resolve().parents[3] / "data" / "mnist5k" / "mnist_5k.csv.gz"
N_TEST = 1000
SPLIT_SEED = 20160224  # fixed: the test set never depends on the run's seed


def load_digits(path: Path = DEFAULT_CSV) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64."""
    if not Path(path).is_file():
        raise EqsegError(f"digits: {path} not found (expected the 5000-digit MNIST CSV, 784 pixels then the label)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785:
        raise EqsegError(f"digits: {path}: expected 785 columns (784 pixels, label), got shape {table.shape}")
    images = torch.from_numpy(table[:, :784].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784])


def split(images: torch.Tensor, labels: torch.Tensor, n_train: int):
    """(train_x, train_y), (test_x, test_y): the first N_TEST of a fixed permutation test, the next n_train train."""
    available = len(labels) - N_TEST
    if not 0 < n_train <= available:
        raise EqsegError(f"digits: n_train must be in 1..{available} (got {n_train})")
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    test, train = order[:N_TEST], order[N_TEST:N_TEST + n_train]
    return (images[train], labels[train]), (images[test], labels[test])


def rotate_quarter(images: torch.Tensor, k: int) -> torch.Tensor:
    """Exact rotation by k*90° about the image centre (element r_k of the one D4, `models.groups`)."""
    return P4.transform(images, k % 4)


def rotate_random(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image rotated by its own uniform random angle (bilinear, about the centre, zero outside)."""
    angles = np.random.default_rng(seed).uniform(0.0, 360.0, len(images))
    rotated = [ndimage.rotate(img[0].numpy(), a, reshape=False, order=1, mode="constant") for img, a in zip(images, angles)]
    return torch.from_numpy(np.stack(rotated)).unsqueeze(1)
