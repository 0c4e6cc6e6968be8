"""Bilinear x2 upsampling (align_corners=False) that runs aten's channels_last CPU kernels, forward and backward.

Why: in a U-Net the upsampled tensor is concatenated with a skip, so the gradient reaching the upsampling is a
channel slice of the concatenation's gradient, dense in neither memory format, and aten's CPU backward then takes
its generic path: 39-49 ms of a 190-230 ms bf16 unet step (bench/README.md, issue 19). The channels_last kernels
vectorise over channels and are several times faster, forward too (2-4x on contiguous bf16 inputs); copying
into that layout and back costs less than it saves. The result is the same function, to rounding
(`tests/test_upsample.py` checks values and gradients against F.interpolate). Off the CPU (CUDA has no such slow
path) it is plain F.interpolate.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from eqseg.models.layout import is_channels_last


def _interpolate(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _interpolate_cpu(x: torch.Tensor) -> torch.Tensor:
    """The channels_last kernel whatever x's layout; the result in x's layout (contiguous unless x is channels_last)."""
    if is_channels_last(x):
        return _interpolate(x)
    return _interpolate(x.contiguous(memory_format=torch.channels_last)).contiguous()


class _Upsample2xCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.input_shape = tuple(x.shape)
        ctx.channels_last = is_channels_last(x)
        return _interpolate_cpu(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ctx.input_shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_in = torch.ops.aten.upsample_bilinear2d_backward(grad, [2 * h, 2 * w], [b, c, h, w], False, 2.0, 2.0)
        return grad_in if ctx.channels_last else grad_in.contiguous()


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), on the CPU through aten's
    channels_last kernels (forward, and backward when autograd records it)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return _interpolate(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _Upsample2xCPU.apply(x)
    return _interpolate_cpu(x)


class Upsample2x(nn.Module):
    """`upsample2x` as a module; exports as the nn.Upsample it computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x)

    def export(self) -> nn.Upsample:
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
