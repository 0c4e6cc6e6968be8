"""Pixel losses that learn from partial labels: every pixel labelled 255 is left out, as if absent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqseg.utils.checks import require_choice, require_float

from eqseg.labels import IGNORE


def as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) to float32 for a stable softmax; float64 stays float64 (gradient checks)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def one_hot(target: torch.Tensor, k: int, dtype: torch.dtype, dim: int = -1) -> torch.Tensor:
    """One-hot of class ids along `dim` (a new axis), all zero where unlabelled (255). A comparison with the class
    range, not `F.one_hot`, which reads the ids' maximum back to the host (a synchronisation on a GPU)."""
    classes = torch.arange(k, device=target.device).view([k if d == (dim % (target.dim() + 1)) else 1
                                                          for d in range(target.dim() + 1)])
    return (target.unsqueeze(dim) == classes).to(dtype)


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels only (the 'partial CE' of points/scribbles training); 0 for a
    batch with none. A sum over a clamped count, not a branch on `.any()`: no host synchronisation on a GPU."""
    labelled = (target != IGNORE).sum().clamp_min(1)
    return F.cross_entropy(as_float(logits), target.long(), ignore_index=IGNORE, reduction="sum") / labelled


def dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: str = "present", smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the batch's labelled pixels.

    classes='present' averages over the classes with labelled pixels in the batch, so a class absent from sparse
    labels is not pushed to zero; 'all' averages over every class.
    """
    classes = require_choice("loss.dice", "classes", classes, ("present", "all"))
    smooth = require_float("loss.dice", "smooth", smooth, 0.0)
    valid = target != IGNORE
    k = logits.shape[1]
    probs = torch.softmax(as_float(logits), dim=1) * valid.unsqueeze(1)
    onehot = one_hot(target, k, probs.dtype, dim=1)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(torch.finfo(probs.dtype).tiny)
    weight = (onehot.sum(dims) > 0 if classes == "present" else torch.ones_like(dice, dtype=torch.bool)).to(dice.dtype)
    weight = weight * valid.any()  # a batch with nothing labelled: 0 (weights, not `.any()` or a mask: no sync)
    return ((1.0 - dice) * weight).sum() / weight.sum().clamp_min(1)
