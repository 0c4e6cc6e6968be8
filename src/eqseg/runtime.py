"""Device, threads and seeds for every command that runs a model: CUDA with mixed precision when present, the CPU
otherwise. Below train, evaluate, predict and digits, so none of them imports another for it."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from eqseg.errors import EqsegError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present, else the CPU; cuda without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EqsegError("device: cuda was asked for but no CUDA device is available (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise EqsegError(f"device: bad device {name!r} ({err})") from None


def set_threads(threads: int, num_workers: int, processes: int = 1) -> None:
    """On a small CPU, loader workers and torch threads compete: leave each worker a core (cores shared by
    `processes` training processes on one machine)."""
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // processes - num_workers)
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA only (float16 with a grad scaler); a no-op context on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")
