"""The loss terms by name and their weighted sums: `build_loss({"ce": 1.0, "lovasz": 0.5})` (re-exported by
eqseg.losses, whose names this module defines).

A spec maps term names to a weight, or to {"weight": w, **options} for a term with options, e.g.
{"ce": 1.0, "mil": {"weight": 0.5, "pool": "topk", "top": 0.05}, "consistency": 0.1}. The options of each term are
typed for params in eqseg.losses.options (LOSS_TERMS, the same names: a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eqseg.errors import EqsegError
from eqseg.losses.consistency import consistency_loss
from eqseg.losses.lovasz import lovasz_softmax
from eqseg.losses.mil import image_scores, mil_loss
from eqseg.losses.pixel import IGNORE, dice_loss, partial_cross_entropy
from eqseg.models.groups import D4
from eqseg.utils.checks import check_known, require_float

__all__ = [
    "IGNORE", "TERMS", "WeightedLoss", "build_loss", "consistency_loss", "d4_apply", "d4_inverse", "dice_loss",
    "image_scores", "lovasz_softmax", "mil_loss", "partial_cross_entropy",
]

d4_apply = D4.transform  # g·x on the last two dims: the one D4 of eqseg (models.groups)


def d4_inverse(g: int) -> int:
    return D4.inverse(g)


# term -> (function, the inputs it takes first, in order; the first two are required)
TERMS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
    "ce": (partial_cross_entropy, ("logits", "target")),
    "lovasz": (lovasz_softmax, ("logits", "target")),
    "dice": (dice_loss, ("logits", "target")),
    "mil": (mil_loss, ("logits", "tags")),
    "consistency": (consistency_loss, ("model", "x", "generator", "logits")),
}


class WeightedLoss:
    """Σ weight × term; call it as loss(logits, target, tags=..., model=..., x=..., generator=...)."""

    def __init__(self, weights: dict[str, float], options: dict[str, dict]):
        self.weights = weights
        self.options = options

    def terms(self, logits: torch.Tensor, target: torch.Tensor | None = None, **extra) -> dict[str, torch.Tensor]:
        """Unweighted value of every term, for logging."""
        inputs = {"logits": logits, "target": target, "tags": None, "model": None, "x": None, "generator": None}
        unknown = sorted(set(extra) - set(inputs))
        if unknown:
            raise EqsegError(f"loss: unknown input {unknown[0]!r} (allowed: tags, model, x, generator)")
        inputs |= extra
        values = {}
        for name in self.weights:
            fn, needs = TERMS[name]
            missing = [k for k in needs[:2] if inputs[k] is None]
            if missing:
                raise EqsegError(f"loss: term {name!r} needs {missing[0]}= when called")
            values[name] = fn(*(inputs[k] for k in needs), **self.options[name])
        return values

    def __call__(self, logits: torch.Tensor, target: torch.Tensor | None = None, **extra) -> torch.Tensor:
        values = self.terms(logits, target, **extra)
        return sum(self.weights[name] * value for name, value in values.items())


def build_loss(spec: dict) -> WeightedLoss:
    """A weighted sum of loss terms from a spec such as {"ce": 1.0, "lovasz": 0.5}; terms of weight 0 are dropped."""
    if not isinstance(spec, dict) or not spec:
        raise EqsegError(f"loss: spec must be a non-empty mapping of term to weight (terms: {', '.join(TERMS)})")
    weights, options = {}, {}
    for name, value in spec.items():
        if name not in TERMS:
            raise EqsegError(f"loss: unknown term {name!r} (allowed: {', '.join(TERMS)})")
        opts = dict(value) if isinstance(value, dict) else {"weight": value}
        weight = require_float(f"loss.{name}", "weight", opts.pop("weight", None), 0.0)
        fn, needs = TERMS[name]
        check_known(f"loss.{name}", fn, opts, skip=len(needs))
        if weight > 0:
            weights[name], options[name] = weight, opts
    if not weights:
        raise EqsegError("loss: every term has weight 0; give at least one a positive weight")
    return WeightedLoss(weights, options)
