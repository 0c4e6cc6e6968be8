"""Multiple-instance loss for image-level tags: a tile is a bag of pixels, positive for a class if any pixel is.

Pixel logits of each class are pooled into one image score, and scores meet the tag vector in a binary
cross-entropy. Max pooling learns from one pixel only; log-sum-exp and top-k pool softly between max and mean,
so more pixels get gradient (Pinheiro & Collobert 2015; Durand et al. 2016).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eqseg.losses.pixel import as_float
from eqseg.utils.checks import require_choice, require_float

POOLS = ("lse", "topk", "max", "mean")


def image_scores(logits: torch.Tensor, pool: str = "lse", sharpness: float = 5.0, top: float = 0.1) -> torch.Tensor:
    """(B, K) image scores from (B, K, H, W) pixel logits.

    lse: (1/r) log mean exp(r z), r = sharpness (mean as r -> 0, max as r -> inf); topk: mean of the top
    `top` fraction of pixels.
    """
    pool = require_choice("loss.mil", "pool", pool, POOLS)
    z = as_float(logits).flatten(2)
    if pool == "lse":
        r = require_float("loss.mil", "sharpness", sharpness, 0.0, low_open=True)
        return (torch.logsumexp(r * z, dim=2) - math.log(z.shape[2])) / r
    if pool == "topk":
        top = require_float("loss.mil", "top", top, 0.0, 1.0, low_open=True)
        return z.topk(max(1, math.ceil(top * z.shape[2])), dim=2).values.mean(dim=2)
    return z.amax(dim=2) if pool == "max" else z.mean(dim=2)


def mil_loss(
    logits: torch.Tensor, tags: torch.Tensor, pool: str = "lse", sharpness: float = 5.0, top: float = 0.1
) -> torch.Tensor:
    """BCE between pooled image scores (B, K) and the class-presence tags (B, K) of `weak.store.tag_matrix`."""
    scores = image_scores(logits, pool, sharpness, top)
    return F.binary_cross_entropy_with_logits(scores, tags.to(scores.dtype))
