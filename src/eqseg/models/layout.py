"""Memory-layout test shared by the CPU kernels that keep channels_last tensors in their layout (upsample,
batch_norm, gconv)."""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also contiguous (size-1 dims make some tensors both)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
