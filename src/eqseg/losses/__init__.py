"""Losses for full, sparse and image-level labels, and their weighted sums: `build_loss({"ce": 1.0, "lovasz": 0.5})`.

A spec maps term names to a weight, or to {"weight": w, **options} for a term with options, e.g.
{"ce": 1.0, "mil": {"weight": 0.5, "pool": "topk", "top": 0.05}, "consistency": 0.1}.

Importing this package imports no torch: loading params imports its options leaf (eqseg.losses.options, the typed
options of every term) through it. The names below come from eqseg.losses.terms, loaded on first use.
"""

from __future__ import annotations

__all__ = [
    "IGNORE", "TERMS", "WeightedLoss", "build_loss", "consistency_loss", "d4_apply", "d4_inverse", "dice_loss",
    "image_scores", "lovasz_softmax", "mil_loss", "partial_cross_entropy",
]


def __getattr__(name: str):
    if name in __all__:
        from eqseg.losses import terms

        return getattr(terms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
