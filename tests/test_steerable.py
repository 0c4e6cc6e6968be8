"""Optional escnn models: skipped cleanly when escnn is not installed (it is not a core dependency)."""

from __future__ import annotations

import pytest
import torch

escnn = pytest.importorskip("escnn")

from eqseg.errors import EqsegError  # noqa: E402
from eqseg.models import available, build  # noqa: E402
from eqseg.models.groups import P4, P4M, equivariance_errors  # noqa: E402
import eqseg.models.steerable  # noqa: E402,F401  (registers c8_unet / d8_unet)


@pytest.mark.parametrize("name, group, width", [("c8_unet", P4, 8), ("d8_unet", P4M, 16)])
def test_exact_for_the_grid_symmetries(name, group, width):
    assert name in available()
    torch.manual_seed(0)
    model = build(name, 3, 2, depth=1, width=width)
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 2, 8, 8)
    assert max(equivariance_errors(model, x, group).values()) < 1e-4
    with pytest.raises(EqsegError, match="not a multiple of 2"):
        model(torch.zeros(1, 3, 7, 8))


def test_width_must_be_a_multiple_of_the_group_order():
    with pytest.raises(EqsegError, match="multiple of"):
        build("c8_unet", 3, 2, width=12)
