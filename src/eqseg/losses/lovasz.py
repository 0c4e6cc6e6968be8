"""Lovász-softmax (Berman, Triki & Blaschko, CVPR 2018): a convex surrogate of the Jaccard loss (1 - IoU).

For class c with per-pixel errors m_i = |[y_i = c] - p_i(c)|, the loss is the Lovász extension of the set
function Δ(M) = |M| / |F_c ∪ M| (F_c: pixels of class c, M: mispredicted pixels): sort m decreasingly and
weigh each m by the increment of Δ as its pixel joins the mispredicted set. It optimises IoU directly, which
suits imbalanced classes (thin buildings, sparse nuclei).
"""

from __future__ import annotations

import numpy as np
import torch

from eqseg.losses.pixel import IGNORE, as_float, one_hot
from eqseg.utils.checks import require_choice


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments Δ({π1..πi}) - Δ({π1..πi-1}) along the last dim, for 0/1 ground truth sorted by decreasing error.

    With c_i the foreground among the first i pixels and T the total: intersection T - c_i, union T + i - c_i (one
    cumulative sum: the background count is i - c_i)."""
    total = fg_sorted.sum(dim=-1, keepdim=True)
    seen = fg_sorted.cumsum(dim=-1)
    rank = torch.arange(1, fg_sorted.shape[-1] + 1, dtype=fg_sorted.dtype, device=fg_sorted.device)
    jaccard = 1.0 - (total - seen) / (total + rank - seen)
    return torch.diff(jaccard, dim=-1, prepend=jaccard.new_zeros(*jaccard.shape[:-1], 1))


def descending_order(errors: torch.Tensor) -> torch.Tensor:
    """Indices that sort each row of errors (K, P) in decreasing order (ties in any order: the loss is the same).

    On the CPU through numpy's argsort, whose AVX-512 quicksort (x86-simd-sort) was 6x faster than torch.sort on
    131,072 float32 errors (3.1 against 19.8 ms, 1 thread): the sort was 10 % of a bf16 unet training step
    (bench/README.md, issue 19). Elsewhere torch.sort, on the device."""
    if errors.device.type != "cpu":
        return torch.sort(errors.detach(), dim=-1, descending=True).indices
    keys = errors.detach()
    if keys.dtype not in (torch.float32, torch.float64):  # numpy has no bfloat16; every fp16/bf16 value is a float32
        keys = keys.float()
    keys = np.negative(keys.contiguous().numpy())  # ascending order of -error
    return torch.from_numpy(np.argsort(keys, axis=-1))


def _lovasz_flat(probs: torch.Tensor, target: torch.Tensor, classes: str) -> torch.Tensor:
    """Mean over classes of the Lovász extension, for class-major probs (K, P) and target (P,) with 255 = no label.

    Class-major, so that the sort, gathers and cumulative sums run along contiguous rows (pixel-major (P, K) took
    twice as long on the CPU, bench/README.md). Unlabelled pixels are kept in place with error 0 and no foreground:
    sorted last (or among other zero errors), they add 0 and change no other pixel's weight (the weights are prefix
    sums over the sorted pixels), so the value is that over labelled pixels alone, without a boolean selection (a
    host synchronisation on a GPU)."""
    fg = one_hot(target, probs.shape[0], probs.dtype, dim=0)
    errors = torch.where(target != IGNORE, (fg - probs).abs(), 0.0)
    order = descending_order(errors)
    per_class = (errors.gather(1, order) * lovasz_grad(fg.gather(1, order))).sum(dim=1)
    if classes == "all":
        return per_class.mean()
    present = (fg.sum(dim=1) > 0).to(per_class.dtype)
    return (per_class * present).sum() / present.sum().clamp_min(1)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, classes: str = "present", per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax of logits (B, K, H, W) against target (B, H, W), ignoring 255.

    classes: 'present' (classes in the target) or 'all'; per_image: average per-image losses instead of one
    loss over the whole batch, over the images with at least one labelled pixel (with sparse labels a tile without
    any is common, and counting it as 0 would scale the loss by the share of labelled tiles in the batch).
    """
    classes = require_choice("loss.lovasz", "classes", classes, ("present", "all"))
    probs = torch.softmax(as_float(logits), dim=1)
    b, k = probs.shape[:2]
    flat_target = target.reshape(b, -1)
    if per_image:  # (K, H*W) per image: a free view of contiguous probabilities
        flat_probs = probs.reshape(b, k, -1)
        losses = torch.stack([_lovasz_flat(p, t, classes) for p, t in zip(flat_probs, flat_target)])
        labelled = (flat_target != IGNORE).any(dim=1)
        return (losses * labelled).sum() / labelled.sum().clamp_min(1)
    return _lovasz_flat(probs.transpose(0, 1).reshape(k, -1), flat_target.reshape(-1), classes)
