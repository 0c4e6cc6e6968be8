"""Baseline U-Net (Ronneberger et al. 2015) with configurable depth and width.

Max-pooling by 2 and bilinear upsampling by 2 keep the topology identical to the equivariant U-Nets, so that
both differ only in their convolutions; tiles must be multiples of 2**depth.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from eqseg.errors import EqsegError
from eqseg.models.batch_norm import BatchNorm2d
from eqseg.models.registry import register
from eqseg.models.upsample import Upsample2x


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def check_tile_size(h: int, w: int, depth: int) -> None:
    m = 2**depth
    if h % m or w % m:
        raise EqsegError(f"input size {h}x{w} is not a multiple of 2**depth = {m}: pad tiles to a multiple of {m}")


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 3, width: int = 16):
        super().__init__()
        if depth < 1 or width < 1:
            raise EqsegError(f"unet: depth and width must be >= 1 (got depth={depth}, width={width})")
        self.depth, self.tile_multiple = depth, 2**depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([double_conv(in_channels, chans[0])])
        self.down.extend(double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(double_conv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.upsample = Upsample2x()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tile_size(x.shape[-2], x.shape[-1], self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = self.upsample(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


@register("unet")
def build_unet(in_channels: int, num_classes: int, depth: int = 3, width: int = 16) -> UNet:
    return UNet(in_channels, num_classes, depth=depth, width=width)
