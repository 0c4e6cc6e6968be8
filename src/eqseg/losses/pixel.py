"""Pixel losses that learn from partial labels: every pixel labelled 255 is left out, as if absent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqseg.utils.options import require_choice, require_float

from eqseg.labels import IGNORE


def as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) to float32 for a stable softmax; float64 stays float64 (gradient checks)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph, for batches with nothing to learn from (no NaN from an empty mean)."""
    return logits.sum() * 0.0


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels only (the 'partial CE' of points/scribbles training)."""
    if not (target != IGNORE).any():
        return zero(logits)
    return F.cross_entropy(as_float(logits), target.long(), ignore_index=IGNORE)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: str = "present", smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the batch's labelled pixels.

    classes='present' averages over the classes with labelled pixels in the batch, so a class absent from sparse
    labels is not pushed to zero; 'all' averages over every class.
    """
    classes = require_choice("loss.dice", "classes", classes, ("present", "all"))
    smooth = require_float("loss.dice", "smooth", smooth, 0.0)
    valid = target != IGNORE
    if not valid.any():
        return zero(logits)
    k = logits.shape[1]
    probs = torch.softmax(as_float(logits), dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target.long(), 0), k).movedim(-1, 1) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(torch.finfo(probs.dtype).tiny)
    selected = onehot.sum(dims) > 0 if classes == "present" else torch.ones(k, dtype=torch.bool, device=logits.device)
    return 1.0 - dice[selected].mean()
