"""The two networks of Cohen & Welling (2016) for rotated MNIST: Z2CNN ("cnn") and P4CNN ("p4cnn").

Seven layers: 3x3 valid convolutions (4x4 in the last), batch norm and ReLU after all but the last, 2x2 max
pooling after layer 2; 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 6 -> 4 -> 1. The CNN has 20 channels per layer; the
P4CNN has 10 p4 fields (40 raw channels, the paper's choice: channels divided by sqrt|G| keep the parameter count
close, 25k vs 22k) and max-pools over the rotations after the last layer, which makes its logits invariant.

No padding to an odd size is needed: a valid 3x3 conv trims one pixel on each side and 2x2 pooling of the even
24x24 map keeps aligned windows, so every layer keeps the image centre (13.5, 13.5) where `torch.rot90` and
`scipy.ndimage.rotate` rotate, and the 4x4 last layer covers the whole 4x4 map symmetrically.
"""

from __future__ import annotations

from torch import nn

from eqseg.models.gconv import (
    GBatchNorm, GMaxPool2d, GReLU, GroupConv, GroupMaxPool, GSequential, LiftingConv,
)
from eqseg.models.groups import P4

NUM_CLASSES = 10


def cnn(channels: int = 20) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 1
    for i in range(6):
        layers += [nn.Conv2d(c_in, channels, 3, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        if i == 1:
            layers.append(nn.MaxPool2d(2))
        c_in = channels
    layers += [nn.Conv2d(channels, NUM_CLASSES, 4), nn.Flatten()]
    return nn.Sequential(*layers)


def p4cnn(fields: int = 10) -> nn.Sequential:
    """GSequential body (so `check_equivariance`/`export` work on 28x28 inputs), then flatten."""
    layers: list = []
    for i in range(6):
        conv = LiftingConv(P4, 1, fields, padding=0) if i == 0 else GroupConv(P4, fields, fields, padding=0)
        layers += [conv, GBatchNorm(P4, fields), GReLU(P4, fields)]  # not in place: see gconv.double_conv
        if i == 1:
            layers.append(GMaxPool2d(P4, fields))
    layers += [GroupConv(P4, fields, NUM_CLASSES, kernel_size=4, padding=0, bias=True), GroupMaxPool(P4, NUM_CLASSES)]
    return nn.Sequential(GSequential(*layers), nn.Flatten())


NETS = {"cnn": cnn, "p4cnn": p4cnn}
