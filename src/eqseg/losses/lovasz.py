"""Lovász-softmax (Berman, Triki & Blaschko, CVPR 2018): a convex surrogate of the Jaccard loss (1 - IoU).

For class c with per-pixel errors m_i = |[y_i = c] - p_i(c)|, the loss is the Lovász extension of the set
function Δ(M) = |M| / |F_c ∪ M| (F_c: pixels of class c, M: mispredicted pixels): sort m decreasingly and
weigh each m by the increment of Δ as its pixel joins the mispredicted set. It optimises IoU directly, which
suits imbalanced classes (thin buildings, sparse nuclei).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqseg.losses.pixel import IGNORE, as_float, zero
from eqseg.utils.options import require_choice


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments Δ({π1..πi}) - Δ({π1..πi-1}) along dim 0, for 0/1 ground truth sorted by decreasing error."""
    total = fg_sorted.sum(dim=0)
    intersection = total - fg_sorted.cumsum(dim=0)
    union = total + (1.0 - fg_sorted).cumsum(dim=0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def _lovasz_flat(probs: torch.Tensor, target: torch.Tensor, classes: str) -> torch.Tensor:
    """Mean over classes of the Lovász extension, for probs (P, K) and target (P,) of labelled pixels."""
    if target.numel() == 0:
        return zero(probs)
    fg = F.one_hot(target.long(), probs.shape[1]).to(probs.dtype)
    errors, order = torch.sort((fg - probs).abs(), dim=0, descending=True)
    per_class = (errors * lovasz_grad(fg.gather(0, order))).sum(dim=0)
    if classes == "present":
        per_class = per_class[fg.sum(dim=0) > 0]
    return per_class.mean()


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, classes: str = "present", per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax of logits (B, K, H, W) against target (B, H, W), ignoring 255.

    classes: 'present' (classes in the target) or 'all'; per_image: average per-image losses instead of one
    loss over the whole batch.
    """
    classes = require_choice("loss.lovasz", "classes", classes, ("present", "all"))
    probs = torch.softmax(as_float(logits), dim=1)
    k = probs.shape[1]
    flat_probs = probs.movedim(1, -1).reshape(probs.shape[0], -1, k)
    flat_target = target.reshape(target.shape[0], -1)
    keep = flat_target != IGNORE
    if per_image:
        return torch.stack([_lovasz_flat(p[m], t[m], classes) for p, t, m in zip(flat_probs, flat_target, keep)]).mean()
    return _lovasz_flat(flat_probs[keep], flat_target[keep], classes)
