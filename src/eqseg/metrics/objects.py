"""Object-level scores: F1 of matched objects (SpaceNet building metric) and the aggregated Jaccard index (AJI).

Objects are instances: connected components of one class in a class map (`instances_from_classes`), or given
directly as an instance-labelled mask (0 = background, k > 0 = object k; CPM-15's `*_mask.png`).

* Object F1 (SpaceNet challenge): a predicted and a true object match when their IoU is >= 0.5; matching is one to
  one, greedy by decreasing IoU (for a threshold >= 0.5 an object can have at most one partner above it except in
  exact-0.5 ties, so greedy equals the optimal assignment). TP = matches, FP = unmatched predictions, FN =
  unmatched truths; precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R).
* AJI (Kumar et al. 2017, IEEE TMI 36(7)): for every true object G_i take the predicted S_j of largest IoU with it,
  C += |G_i ∩ S_j|, U += |G_i ∪ S_j| (U += |G_i| alone when no prediction touches G_i); finally U += |S_k| for every
  prediction never chosen. AJI = C / U. `ObjectScores` reports the mean of per-image AJIs (as in the paper) and the
  pooled ΣC / ΣU.

Pixels outside `valid` (e.g. target 255) are removed from both maps before matching. Accumulate per whole image:
objects cut by tile borders would be counted twice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from eqseg.errors import EqsegError


def instances_from_classes(class_map: np.ndarray, cls: int, connectivity: int = 1) -> np.ndarray:
    """Connected components of `class_map == cls` as an int32 instance map (1 = 4-connected, 2 = 8-connected)."""
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise EqsegError(f"instances_from_classes: expected a 2-d class map, got shape {class_map.shape}")
    if connectivity not in (1, 2):
        raise EqsegError(f"instances_from_classes: connectivity must be 1 or 2 (got {connectivity})")
    labels, _ = ndi.label(class_map == cls, structure=ndi.generate_binary_structure(2, connectivity))
    return labels.astype(np.int32)


DENSE_PAIRS = 1 << 20  # up to this many (true, predicted) pairs, count intersections in a dense table
LUT_IDS = 1 << 16  # ids up to this (plus 4 per pixel) are renumbered by a lookup table, larger ones by a sort


def _relabel(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Instance ids renumbered to 0..n in the order of the ids (0 stays background). A lookup table over the ids
    when they are small non-negative integers (label maps are), else a sort (np.unique)."""
    flat = inst.ravel()
    if flat.size and flat.dtype.kind in "iub" and flat.min() >= 0 and int(flat.max()) <= LUT_IDS + 4 * flat.size:
        present = np.bincount(flat.astype(np.int64, copy=False))
        present[0] = 0
        lut = np.cumsum(present > 0)
        return lut[flat].reshape(inst.shape), int(lut[-1])
    ids, inv = np.unique(inst, return_inverse=True)
    inv = inv.reshape(inst.shape)
    if ids.size and ids[0] != 0:
        return inv + 1, ids.size
    return inv, max(ids.size - 1, 0)


def overlap_pairs(true_inst: np.ndarray, pred_inst: np.ndarray, valid: np.ndarray | None = None):
    """Areas of both maps' objects and their intersections as sparse pairs: (area_t (n_t,), area_p (n_p,),
    ti, pj, inter), one entry per (true, predicted) pair sharing at least one pixel, sorted by (ti, pj). Sparse,
    so a slide with tens of thousands of nuclei needs memory for its touching pairs only, not n_t x n_p."""
    true_inst, pred_inst = np.asarray(true_inst), np.asarray(pred_inst)
    if true_inst.shape != pred_inst.shape or true_inst.ndim != 2:
        raise EqsegError(f"object metrics: true {true_inst.shape} and predicted {pred_inst.shape} instance maps "
                         "must be 2-d of one shape")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        true_inst = np.where(valid, true_inst, 0)
        pred_inst = np.where(valid, pred_inst, 0)
    t, n_t = _relabel(true_inst)
    p, n_p = _relabel(pred_inst)
    area_t = np.bincount(t.ravel(), minlength=n_t + 1)[1:]
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)[1:]
    both = (t > 0) & (p > 0)
    code = (t[both].astype(np.int64) - 1) * max(n_p, 1) + (p[both].astype(np.int64) - 1)
    if n_t * n_p <= max(4 * code.size, DENSE_PAIRS):
        counts = np.bincount(code, minlength=n_t * n_p)
        code = np.flatnonzero(counts)
        inter = counts[code]
    else:
        code, inter = np.unique(code, return_counts=True)
    ti, pj = np.divmod(code, max(n_p, 1))
    return area_t, area_p, ti, pj, inter.astype(np.int64)


def overlap(true_inst: np.ndarray, pred_inst: np.ndarray, valid: np.ndarray | None = None):
    """Areas and pairwise intersections as a dense matrix: (area_t (n_t,), area_p (n_p,), inter (n_t, n_p));
    for small maps and tests (the scores use the sparse `overlap_pairs`)."""
    area_t, area_p, ti, pj, counts = overlap_pairs(true_inst, pred_inst, valid)
    inter = np.zeros((area_t.size, area_p.size), dtype=np.int64)
    inter[ti, pj] = counts
    return area_t, area_p, inter


def _match(pairs, iou_threshold: float) -> tuple[int, int, int]:
    area_t, area_p, ti, pj, inter = pairs
    n_t, n_p = area_t.size, area_p.size
    iou = inter / np.maximum(area_t[ti] + area_p[pj] - inter, 1)
    keep = np.flatnonzero(iou >= iou_threshold)
    order = keep[np.argsort(-iou[keep], kind="stable")]  # ties in (true, predicted) order
    used_t, used_p, tp = set(), set(), 0
    for k in order:
        a, b = int(ti[k]), int(pj[k])
        if a not in used_t and b not in used_p:
            used_t.add(a)
            used_p.add(b)
            tp += 1
    return tp, n_p - tp, n_t - tp


def _aji(pairs) -> tuple[int, int]:
    area_t, area_p, ti, pj, inter = pairs
    union = area_t[ti] + area_p[pj] - inter
    iou = inter / union
    order = np.lexsort((pj, -iou, ti))  # per truth: the best IoU first, ties to the lowest prediction
    first = order[np.r_[True, ti[order][1:] != ti[order][:-1]]] if order.size else order
    c = int(inter[first].sum())
    u = int(union[first].sum())
    touched = np.zeros(area_t.size, dtype=bool)
    touched[ti[first]] = True
    u += int(area_t[~touched].sum())  # a truth no prediction touches: its own area
    chosen = np.zeros(area_p.size, dtype=bool)
    chosen[pj[first]] = True
    u += int(area_p[~chosen].sum())  # every prediction never chosen
    return c, u


def match_objects(true_inst, pred_inst, iou_threshold: float = 0.5, valid=None) -> tuple[int, int, int]:
    """(TP, FP, FN) of the one-to-one matching at IoU >= iou_threshold."""
    return _match(overlap_pairs(true_inst, pred_inst, valid), iou_threshold)


def aji_counts(true_inst, pred_inst, valid=None) -> tuple[int, int]:
    """(C, U) of Kumar et al.'s aggregated Jaccard index for one image; AJI = C / U."""
    return _aji(overlap_pairs(true_inst, pred_inst, valid))


class ObjectScores:
    """Accumulates object F1 and AJI image by image.

    `update(pred_inst, true_inst, valid=None)` with instance maps (use `instances_from_classes` on a class map).
    `compute(prefix="")` returns {prefix+"obj_precision", "obj_recall", "obj_f1", "obj_tp", "obj_fp", "obj_fn",
    "aji" (mean over images with any true or predicted object), "aji_pooled", "aji_c", "aji_u" (its sums, for
    pooling over sources), "images"}.
    """

    def __init__(self, iou_threshold: float = 0.5):
        if not 0.0 < iou_threshold <= 1.0:
            raise EqsegError(f"ObjectScores: iou_threshold must be in (0, 1] (got {iou_threshold})")
        self.iou_threshold = iou_threshold
        self.tp = self.fp = self.fn = 0
        self.c = self.u = 0
        self.per_image_aji: list[float] = []

    def update(self, pred_inst, true_inst, valid=None) -> None:
        pairs = overlap_pairs(true_inst, pred_inst, valid)  # once for both scores
        tp, fp, fn = _match(pairs, self.iou_threshold)
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        c, u = _aji(pairs)
        self.c, self.u = self.c + c, self.u + u
        if u > 0:
            self.per_image_aji.append(c / u)

    def compute(self, prefix: str = "") -> dict:
        tp, fp, fn = self.tp, self.fp, self.fn
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        return {
            f"{prefix}obj_precision": precision, f"{prefix}obj_recall": recall, f"{prefix}obj_f1": f1,
            f"{prefix}obj_tp": tp, f"{prefix}obj_fp": fp, f"{prefix}obj_fn": fn,
            f"{prefix}aji": float(np.mean(self.per_image_aji)) if self.per_image_aji else float("nan"),
            f"{prefix}aji_pooled": self.c / self.u if self.u else float("nan"),
            f"{prefix}aji_c": self.c, f"{prefix}aji_u": self.u,
            f"{prefix}images": len(self.per_image_aji),
        }
