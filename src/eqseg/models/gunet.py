"""Equivariant U-Nets `p4_unet` and `p4m_unet`: the baseline `unet` with every conv replaced by its group version.

Same depth, pooling, upsampling and skips as `unet.UNet`, so the comparison isolates the convolutions. Width is
matched to the baseline either by raw channel count (fields * |G| == width at the first level) or by parameter
count (fields chosen so that the parameter count is closest to the unet's at the same width).

Head: a LINEAR 1x1 group convolution to `width` fields (fields * |G|, whatever the group), the mean and the max of
each over the group, then a 1x1 conv to the classes. Pooling over the group straight after a ReLU leaves only
non-negative invariants, and on real nucleus data such a model collapsed to predicting background everywhere; the
linear group conv lets the invariants take either sign. At the channel-matched width 16, p4m has only 2 fields at
full resolution: with a 2-field head the classifier saw 2 (or 4) invariants, fitted its training tiles slowly and
was fragile (on CPM-15 under cross-entropy, seed 0, it stayed at all background for 12 epochs). Widening the head to
`width` fields pooled by mean and max (the mean passes gradient to every element) costs 4.5 % more MACs and
learned on both bundled datasets under CE and CE + Lovasz (bench/README.md, "Group U-Nets at the
channel-matched width"). The body keeps fields * |G| == width raw channels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from eqseg.errors import EqsegError
from eqseg.models.registry import register
from eqseg.models.gconv import (
    GModule, GMaxPool2d, GSequential, GUpsample, GroupConv, GroupMaxPool, GroupMeanMaxPool, InvariantConv1x1, double_conv,
    InvariantHead,
)
from eqseg.models.groups import Group, P4, P4M
from eqseg.models.unet import UNet, check_tile_size


class GUNet(GModule):
    """U-Net on regular fields: per level `max(fields * 2**i, min_fields)` fields (raw channels: times |G|).

    `min_fields`, `head_fields` (default fields * |G|) and `pool` ("meanmax" or "max", the group pooling of the
    head) are constructor knobs for measurement (bench/probe_group_unets.py); the registered models use the
    defaults, and `min_fields=1, head_fields=fields, pool="max"` is the head before issue 10.
    """

    in_rep = out_rep = "trivial"

    def __init__(self, group: Group, in_channels: int, num_classes: int, depth: int = 3, fields: int = 2,
                 min_fields: int = 1, head_fields: int | None = None, pool: Literal["max", "meanmax"] = "meanmax"):
        super().__init__()
        if depth < 1 or fields < 1:
            raise EqsegError(f"{group.name}_unet: depth and fields must be >= 1 (got depth={depth}, fields={fields})")
        if pool not in ("max", "meanmax") or min_fields < 1 or (head_fields is not None and head_fields < 1):
            raise EqsegError(f"{group.name}_unet: pool must be 'max' or 'meanmax', min_fields and head_fields >= 1 "
                             f"(got pool={pool!r}, min_fields={min_fields}, head_fields={head_fields})")
        self.group, self.in_channels, self.num_classes = group, in_channels, num_classes
        self.depth, self.fields, self.tile_multiple = depth, fields, 2**depth
        f = [max(fields * 2**i, min_fields) for i in range(depth + 1)]
        self.level_fields = f
        h = head_fields or fields * group.order  # the raw width of the first level, in fields
        self.down = nn.ModuleList([double_conv(group, in_channels, f[0], lifting=True)])
        self.down.extend(double_conv(group, f[i], f[i + 1]) for i in range(depth))
        self.pools = nn.ModuleList(GMaxPool2d(group, f[i]) for i in range(depth))
        self.ups = nn.ModuleList(GUpsample(group, f[i + 1]) for i in reversed(range(depth)))
        self.up = nn.ModuleList(double_conv(group, f[i + 1] + f[i], f[i]) for i in reversed(range(depth)))
        pooling = GroupMaxPool(group, h) if pool == "max" else GroupMeanMaxPool(group, h)
        self.head = InvariantHead(  # a GSequential computed as matmuls, without its largest tensor
            GroupConv(group, f[0], h, kernel_size=1), pooling,
            InvariantConv1x1(group, pooling.raw_out_channels(), num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's last group feature map, the head's input."""
        check_tile_size(x.shape[-2], x.shape[-1], self.depth)
        skips = [self.down[0](x)]
        for pool, block in zip(self.pools, self.down[1:]):
            skips.append(block(pool(skips[-1])))
        x = skips.pop()
        for upsample, block in zip(self.ups, self.up):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def export(self) -> UNet:
        """A baseline `UNet` of width fields*|G| holding the built filters, with this model's head (eval mode)."""
        plain = UNet(self.in_channels, self.num_classes, self.depth, width=self.fields * self.group.order)
        plain.down = nn.ModuleList(block.export() for block in self.down)  # every submodule replaced: the
        plain.up = nn.ModuleList(block.export() for block in self.up)  # exports carry this model's device/dtype
        plain.head = self.head.export()
        return plain.eval()


def _fields_for_params(group: Group, in_channels: int, num_classes: int, depth: int, width: int) -> int:
    """Field count whose parameter count is closest to unet(width)'s, counted on candidate models built on the
    meta device (shapes only: no memory, no initialisation)."""
    from eqseg.models import count_parameters

    with torch.device("meta"):
        target = count_parameters(UNet(in_channels, num_classes, depth, width))
        best, fields = None, 1
        while True:
            n = count_parameters(GUNet(group, in_channels, num_classes, depth, fields))
            if best is not None and abs(n - target) >= abs(best[1] - target):
                return best[0]
            best, fields = (fields, n), fields + 1


def build_gunet(group: Group, in_channels: int, num_classes: int, depth: int, width: int,
                match: Literal["channels", "params"]) -> GUNet:
    name = f"{group.name}_unet"
    if depth < 1 or width < 1:
        raise EqsegError(f"{name}: depth and width must be >= 1 (got depth={depth}, width={width})")
    if match == "channels":
        if width % group.order:
            raise EqsegError(f"{name}: width {width} is not a multiple of |{group.name}| = {group.order} "
                             f"(needed with match: channels; or use match: params)")
        fields = width // group.order
    elif match == "params":
        fields = _fields_for_params(group, in_channels, num_classes, depth, width)
    else:
        raise EqsegError(f"{name}: match must be 'channels' or 'params' (got {match!r})")
    return GUNet(group, in_channels, num_classes, depth, fields)


@register("p4_unet")
def build_p4_unet(in_channels: int, num_classes: int, depth: int = 3, width: int = 16,
                  match: Literal["channels", "params"] = "channels") -> GUNet:
    return build_gunet(P4, in_channels, num_classes, depth, width, match)


@register("p4m_unet")
def build_p4m_unet(in_channels: int, num_classes: int, depth: int = 3, width: int = 16,
                   match: Literal["channels", "params"] = "channels") -> GUNet:
    return build_gunet(P4M, in_channels, num_classes, depth, width, match)
