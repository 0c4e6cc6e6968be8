"""GridNet: shapes, every stream used, tile-size errors, options, registry integration."""

from __future__ import annotations

import pytest
import torch

from eqseg.errors import EqsegError
from eqseg.models import build, count_macs, count_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")


@pytest.mark.parametrize("rows, columns", [(1, 2), (3, 4), (4, 6)])
def test_forward_shape_and_gradients_reach_every_block(rows, columns):
    model = build("gridnet", 3, 5, rows=rows, columns=columns, width=4)
    x = torch.randn(2, 3, 2 ** (rows - 1) * 4, 2 ** (rows - 1) * 4)
    y = model(x)
    assert y.shape == (2, 5, *x.shape[-2:])
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_grid_has_the_papers_connections():
    model = build("gridnet", 3, 2, rows=3, columns=4, width=4)
    assert [len(row) for row in model.lateral] == [3, 3, 3]  # columns - 1 residual units per row
    assert [len(row) for row in model.down] == [2, 2] and [len(row) for row in model.up] == [2, 2]


def test_tile_size_error():
    model = build("gridnet", 3, 2, rows=3)
    with pytest.raises(EqsegError, match=r"is not a multiple of 2\*\*depth = 4"):
        model(torch.zeros(1, 3, 18, 16))


@pytest.mark.parametrize("options", [{"columns": 3}, {"columns": 0}, {"rows": 0}, {"width": 0}])
def test_bad_options(options):
    with pytest.raises(EqsegError, match="gridnet: need"):
        build("gridnet", 3, 2, **options)


def test_counts_and_training_step():
    model = build("gridnet", 3, 2)
    assert count_parameters(model) > 0 and count_macs(model, 3, 32) > 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
