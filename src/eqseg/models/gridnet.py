"""GridNet (Fourure et al. 2017, "Residual Conv-Deconv Grid Network for Semantic Segmentation").

A grid of `rows` resolution streams (row i has width * 2**i channels at 1/2**i resolution) and `columns` columns.
Residual blocks run along each row; in the first half of the columns strided-conv blocks carry features down
a row, in the second half transposed-conv blocks carry them back up; a node sums what flows into it. Every
path from input to output is a conv-deconv network of its own, which the residual rows let train jointly.
Blocks are pre-activation (BN-ReLU-conv) as in the paper; total dropout is left out. Inputs must be multiples
of 2**(rows-1).
"""

from __future__ import annotations

import torch
from torch import nn

from eqseg.errors import EqsegError
from eqseg.models.batch_norm import BatchNorm2d
from eqseg.models.registry import register
from eqseg.models.unet import check_tile_size


def _bn_relu_conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)]


class Residual(nn.Module):
    """Lateral unit: x + (BN-ReLU-conv) x 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_bn_relu_conv(channels, channels), *_bn_relu_conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def down_block(c_in: int, c_out: int) -> nn.Sequential:
    """Halves resolution (stride-2 conv) and goes to the next row's channels."""
    return nn.Sequential(*_bn_relu_conv(c_in, c_out, stride=2), *_bn_relu_conv(c_out, c_out))


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Doubles resolution (stride-2 transposed conv, exact x2 on any size) and goes to the row above's channels."""
    return nn.Sequential(
        BatchNorm2d(c_in), nn.ReLU(),
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        *_bn_relu_conv(c_out, c_out),
    )


class GridNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, rows: int = 3, columns: int = 4, width: int = 8):
        super().__init__()
        if rows < 1 or width < 1 or columns < 2 or columns % 2:
            raise EqsegError(
                f"gridnet: need rows >= 1, width >= 1 and an even columns >= 2 (got rows={rows}, columns={columns}, "
                f"width={width})"
            )
        self.rows, self.columns, self.tile_multiple = rows, columns, 2 ** (rows - 1)
        chans = [width * 2**i for i in range(rows)]
        half = columns // 2
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1, bias=False)
        self.lateral = nn.ModuleList(nn.ModuleList(Residual(c) for _ in range(columns - 1)) for c in chans)
        self.down = nn.ModuleList(
            nn.ModuleList(down_block(chans[i], chans[i + 1]) for _ in range(half)) for i in range(rows - 1)
        )
        self.up = nn.ModuleList(
            nn.ModuleList(up_block(chans[i + 1], chans[i]) for _ in range(half)) for i in range(rows - 1)
        )
        self.head = nn.Sequential(BatchNorm2d(chans[0]), nn.ReLU(), nn.Conv2d(chans[0], num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tile_size(x.shape[-2], x.shape[-1], self.rows - 1)
        half = self.columns // 2
        column: list[torch.Tensor] = [self.stem(x)]
        for i in range(1, self.rows):  # first column: down only
            column.append(self.down[i - 1][0](column[-1]))
        for j in range(1, self.columns):
            column = [self.lateral[i][j - 1](c) for i, c in enumerate(column)]
            if j < half:
                for i in range(1, self.rows):
                    column[i] = column[i] + self.down[i - 1][j](column[i - 1])
            else:
                for i in reversed(range(self.rows - 1)):
                    column[i] = column[i] + self.up[i][j - half](column[i + 1])
        return self.head(column[0])


@register("gridnet")
def build_gridnet(in_channels: int, num_classes: int, rows: int = 3, columns: int = 4, width: int = 8) -> GridNet:
    return GridNet(in_channels, num_classes, rows=rows, columns=columns, width=width)
