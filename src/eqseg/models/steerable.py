"""Optional steerable U-Nets through escnn: `c8_unet` (rotations by 45°) and `d8_unet` (plus mirrors).

Registered only when escnn is installed; it is never a core dependency (it pins numpy<2), so it lives in a
separate environment. The topology mirrors `unet`/`p4m_unet` on regular fields (width = fields * |G|), with the
same linear head before the group pooling. Only the quarter turns (and mirrors) are exact on the pixel grid; the
other rotations are approximate, which is what these models are for.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from eqseg.errors import EqsegError
from eqseg.models.registry import register
from eqseg.models.unet import check_tile_size


class SteerableUNet(nn.Module):
    prefers_contiguous = True  # escnn GeometricTensors: keep its layout
    def __init__(self, gspace, in_channels: int, num_classes: int, depth: int = 3, width: int = 16):
        super().__init__()
        from escnn import nn as enn

        order = gspace.fibergroup.order()
        if depth < 1 or width < 1 or width % order:
            raise EqsegError(f"steerable unet: need depth >= 1 and width a multiple of |G| = {order} "
                             f"(got depth={depth}, width={width})")
        self.depth, fields = depth, width // order
        self.tile_multiple = 2**depth
        self.in_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
        types = [enn.FieldType(gspace, fields * 2**i * [gspace.regular_repr]) for i in range(depth + 1)]

        def block(t_in, t_out):
            return enn.SequentialModule(
                enn.R2Conv(t_in, t_out, 3, padding=1, bias=False), enn.InnerBatchNorm(t_out), enn.ReLU(t_out, inplace=True),
                enn.R2Conv(t_out, t_out, 3, padding=1, bias=False), enn.InnerBatchNorm(t_out), enn.ReLU(t_out, inplace=True),
            )

        self.down = nn.ModuleList([block(self.in_type, types[0])] + [block(types[i], types[i + 1]) for i in range(depth)])
        self.pools = nn.ModuleList(enn.PointwiseMaxPool2D(types[i], 2) for i in range(depth))
        self.ups = nn.ModuleList(
            enn.R2Upsampling(types[i + 1], scale_factor=2, mode="bilinear", align_corners=False)
            for i in reversed(range(depth))
        )
        self.up = nn.ModuleList(block(types[i + 1] + types[i], types[i]) for i in reversed(range(depth)))
        self.head = enn.SequentialModule(enn.R2Conv(types[0], types[0], 1, bias=False), enn.GroupPooling(types[0]))
        self.classifier = nn.Conv2d(fields, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from escnn import nn as enn

        check_tile_size(x.shape[-2], x.shape[-1], self.depth)
        skips = [self.down[0](enn.GeometricTensor(x, self.in_type))]
        for pool, block in zip(self.pools, self.down[1:]):
            skips.append(block(pool(skips[-1])))
        y = skips.pop()
        for upsample, block in zip(self.ups, self.up):
            y = block(enn.tensor_directsum([upsample(y), skips.pop()]))
        return self.classifier(self.head(y).tensor)


if importlib.util.find_spec("escnn") is not None:  # checked without importing escnn, which takes seconds

    @register("c8_unet")
    def build_c8_unet(in_channels: int, num_classes: int, depth: int = 3, width: int = 16) -> SteerableUNet:
        from escnn import gspaces

        return SteerableUNet(gspaces.rot2dOnR2(N=8), in_channels, num_classes, depth, width)

    @register("d8_unet")
    def build_d8_unet(in_channels: int, num_classes: int, depth: int = 3, width: int = 16) -> SteerableUNet:
        from escnn import gspaces

        return SteerableUNet(gspaces.flipRot2dOnR2(N=8), in_channels, num_classes, depth, width)
