"""Device, precision, memory format, threads and seeds for every command that runs a model: CUDA when present, the
CPU otherwise. Below train, evaluate, predict and digits, so none of them imports another for it.

Precision (`train.precision`, one choice for train, evaluate, predict, predict-dataset, distill and compare):
fp32, or autocast in bf16 or fp16 (parameters, optimiser state and losses stay fp32; fp16 also takes a grad scaler).
`auto` is bf16 where the device computes it natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
AMX-BF16), fp32 otherwise: on a CPU without them bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from eqseg.errors import EqsegError
from eqseg.utils.process import usable_cpus


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
        threads = max(1, usable_cpus() // processes - num_workers)
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 where native, else fp32; fp16 needs CUDA (CPUs compute it slowly or not at all); bf16 is
    allowed anywhere (emulated where not native: slow, but the user asked)."""
    if name not in PRECISIONS:
        raise EqsegError(f"train.precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise EqsegError(f"train.precision: fp16 needs a CUDA device (this one is {device.type}); use bf16 or auto")
    return name


def autocast(device: torch.device, precision: str):
    """Autocast to the resolved precision's dtype; a no-op context for fp32."""
    return torch.autocast(device_type=device.type, dtype=DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in DTYPES)


def memory_format(model: torch.nn.Module) -> torch.memory_format:
    """The layout a model runs fastest in: channels_last for convolution nets, plain and group (the unet's bf16
    training step 0.26 -> 0.19 s on this CPU; p4m_unet's 0.25 -> 0.22 s), contiguous for models that say
    otherwise (`prefers_contiguous`: escnn's steerable nets, the classical methods)."""
    return torch.contiguous_format if getattr(model, "prefers_contiguous", False) else torch.channels_last


def to_device(x: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """A batch on the device, in the model's layout."""
    return x.to(device, non_blocking=True).contiguous(memory_format=layout)
