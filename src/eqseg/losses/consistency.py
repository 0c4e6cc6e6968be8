"""Equivariance by constraint: penalise a model whose predictions do not turn with its input.

For a random g in D4, softmax(f(g·x)) should equal g·softmax(f(x)). The penalty needs no labels, so it uses
every tile, and works with any model: it is the soft counterpart of the built-in equivariance of group
convolutions that the experiments compare against.
"""

from __future__ import annotations

import torch

from eqseg.losses.pixel import as_float
from eqseg.models.groups import D4


def consistency_loss(
    model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator | None = None, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pixels of |softmax(f(g·x)) - g·softmax(f(x))|², g drawn from the non-identity elements of D4.

    Pass `logits` = f(x) when already computed for the supervised loss, to save one forward pass. Gradient flows
    through both branches, so the constraint pulls them together rather than one onto a fixed target.
    """
    g = int(torch.randint(1, D4.order, (1,), generator=generator))
    if logits is None:
        logits = model(x)
    expected = D4.transform(torch.softmax(as_float(logits), dim=1), g)
    turned = torch.softmax(as_float(model(D4.transform(x, g))), dim=1)
    return ((turned - expected) ** 2).sum(dim=1).mean()
