"""Threshold-free per-class average precision (AP) and per-class Dice.

AP ranks pixels by the predicted probability of a class, so a model whose decision threshold is shifted (e.g. by
a stain change) but whose ranking is good still scores well, unlike IoU at argmax. It is computed one-vs-rest per
class, as scikit-learn's `average_precision_score` (step-wise sum over thresholds of ΔRecall × Precision, no
interpolation): AP = Σ_n (R_n − R_{n−1}) P_n.

`HistogramAP` bounds memory for millions of pixels: it keeps, per class, two histograms of the scores (positives
and negatives) over fixed bins and updates them batch by batch (tile by tile, image by image; order does not
matter). Only the order of pixels inside one bin is lost; AP from the histograms takes the expected precision
over a random order inside each bin (see `HistogramAP.per_class`). Bins are uniform in logit(p) over [-32, 32] by
default (1000 bins, width 0.064 in logit), so saturated soft-max outputs near 0 and 1 are still resolved (scores
beyond the range share the end bins); `spacing="linear"` uses uniform bins on [0, 1].
Tested tolerance against the exact AP (tests/test_metrics_extra.py): |AP_hist − AP_exact| < 1e-3 on 200k scores,
both spread over [0, 1] and saturated near 0/1 (logits up to about ±40).

Target pixels labelled 255 are never counted. A class with no positive pixel has AP = NaN (undefined recall) and
is left out of the macro mean, as are classes absent from truth for Dice when also never predicted.
"""

from __future__ import annotations

import numpy as np

from eqseg.errors import EqsegError
from eqseg.labels import IGNORE

LOGIT_RANGE = 32.0


def average_precision_exact(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact one-vs-rest AP of `scores` for the boolean labels `positive` (ties form one threshold).

    Equals scikit-learn's `average_precision_score`; NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise EqsegError(f"average_precision_exact: scores {scores.shape} and labels {positive.shape} differ in size")
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of every group of tied scores
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    return _ap_from_counts(tp, fp, n_pos)


def _ap_from_counts(tp: np.ndarray, fp: np.ndarray, n_pos: float) -> float:
    """AP from cumulative TP/FP counts at decreasing thresholds."""
    recall = tp / n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


class HistogramAP:
    """Per-class AP from score histograms, accumulated batch by batch in O(classes × bins) memory.

    `update(probs, target)`: probs (B, C, H, W) or (C, H, W) or (N, C) class probabilities (numpy or torch),
    target the matching (B, H, W) / (H, W) / (N,) integer labels with 255 = ignored. `compute(classes)` returns
    {"ap_macro": mean over classes with positives, "ap_<name>": per class}.
    """

    def __init__(self, num_classes: int, bins: int = 1000, spacing: str = "logit"):
        if num_classes < 1 or bins < 2:
            raise EqsegError(f"HistogramAP: need num_classes >= 1 and bins >= 2 (got {num_classes}, {bins})")
        if spacing not in ("logit", "linear"):
            raise EqsegError(f"HistogramAP: spacing must be 'logit' or 'linear' (got {spacing!r})")
        self.num_classes, self.bins, self.spacing = num_classes, bins, spacing
        self.pos = np.zeros((num_classes, bins), dtype=np.int64)
        self.neg = np.zeros((num_classes, bins), dtype=np.int64)

    def _bin(self, p: np.ndarray) -> np.ndarray:
        # update() accepts rounding just outside [0, 1]; the logit of p > 1 would be NaN and rank it lowest
        p = np.clip(p.astype(np.float64), 0.0, 1.0)
        if self.spacing == "logit":
            with np.errstate(divide="ignore"):
                z = np.log(p) - np.log1p(-p)
            z = np.nan_to_num(z, nan=-LOGIT_RANGE, posinf=LOGIT_RANGE, neginf=-LOGIT_RANGE)
            u = (z + LOGIT_RANGE) / (2 * LOGIT_RANGE)
        else:
            u = p
        return np.clip((u * self.bins).astype(np.int64), 0, self.bins - 1)

    def update(self, probs, target) -> None:
        probs = _to_numpy(probs)
        target = _to_numpy(target)
        if probs.ndim == 2:  # (N, C)
            flat = probs
        elif probs.ndim in (3, 4):
            flat = np.moveaxis(probs, -3, -1).reshape(-1, probs.shape[-3])
        else:
            raise EqsegError(f"HistogramAP.update: probs must be (N, C), (C, H, W) or (B, C, H, W), got {probs.shape}")
        if flat.shape[1] != self.num_classes:
            raise EqsegError(f"HistogramAP.update: probs have {flat.shape[1]} classes, expected {self.num_classes}")
        t = target.reshape(-1)
        if t.size != flat.shape[0]:
            raise EqsegError(f"HistogramAP.update: target has {t.size} pixels, probs {flat.shape[0]}")
        keep = t != IGNORE
        flat, t = flat[keep], t[keep].astype(np.int64)
        if flat.size and (flat.min() < -1e-6 or flat.max() > 1 + 1e-6 or not np.isfinite(flat).all()):
            raise EqsegError("HistogramAP.update: probs must be probabilities in [0, 1] (soft-max them, not logits)")
        if t.size and (t.min() < 0 or t.max() >= self.num_classes):
            raise EqsegError(f"HistogramAP.update: target labels outside 0..{self.num_classes - 1} (and 255)")
        for c in range(self.num_classes):
            b = self._bin(flat[:, c])
            is_pos = t == c
            self.pos[c] += np.bincount(b[is_pos], minlength=self.bins)
            self.neg[c] += np.bincount(b[~is_pos], minlength=self.bins)

    def merge(self, other: "HistogramAP") -> "HistogramAP":
        """Add another accumulator's counts (e.g. from another worker); returns self."""
        if (other.num_classes, other.bins, other.spacing) != (self.num_classes, self.bins, self.spacing):
            raise EqsegError("HistogramAP.merge: accumulators differ in classes, bins or spacing")
        self.pos += other.pos
        self.neg += other.neg
        return self

    def per_class(self) -> np.ndarray:
        """AP per class (NaN for a class without positives).

        Inside one bin the order of pixels is unknown: the bin's s = a + b pixels (a positives) are taken in random
        order, so the k-th of them is positive with probability a / s and the precision there is about
        f(k/s) = (tp0 + a k/s) / (n0 + k), with tp0 and n0 the counts above the bin. The sum over k is taken as
        s times the integral of f over [1/(2s), 1 + 1/(2s)] (midpoint rule, closed form), which makes the error
        second order in the bin content; a bin holding one pixel is exact.
        """
        out = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            n_pos = float(self.pos[c].sum())
            if n_pos == 0:
                continue
            a = self.pos[c][::-1].astype(np.float64)  # thresholds from the top bin down
            b = self.neg[c][::-1].astype(np.float64)
            used = a > 0  # only bins holding positives add recall
            a, s = a[used], (a + b)[used]
            tp0 = (np.cumsum(self.pos[c][::-1]) - self.pos[c][::-1])[used].astype(np.float64)
            n0 = (np.cumsum(self.pos[c][::-1] + self.neg[c][::-1]) - (self.pos[c][::-1] + self.neg[c][::-1]))[used]
            n0 = n0.astype(np.float64)

            def antiderivative(t):  # of f(t) = (tp0 + a t) / (n0 + s t)
                return a / s * t + (tp0 - a * n0 / s) * np.log(n0 + s * t) / s

            mean_precision = antiderivative(1 + 0.5 / s) - antiderivative(0.5 / s)
            mean_precision = np.where(s == 1, (tp0 + 1) / (n0 + 1), mean_precision)
            out[c] = float(np.sum(a * mean_precision) / n_pos)
        return out

    def compute(self, classes: list[str]) -> dict:
        if len(classes) != self.num_classes:
            raise EqsegError(f"HistogramAP.compute: {len(classes)} class names for {self.num_classes} classes")
        ap = self.per_class()
        out = {"ap_macro": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")}
        out.update({f"ap_{name}": float(v) for name, v in zip(classes, ap)})
        return out


def dice_scores(cm: np.ndarray, classes: list[str]) -> dict:
    """Per-class Dice 2TP / (2TP + FP + FN) from a confusion matrix (rows = truth, columns = prediction), and the
    macro mean over classes present in truth or prediction (a class absent from both is NaN and left out)."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise EqsegError(f"dice_scores: confusion matrix {cm.shape} does not match {len(classes)} classes")
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2 * tp / denom, np.nan)
    out = {"dice_macro": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")}
    out.update({f"dice_{name}": float(v) for name, v in zip(classes, dice)})
    return out


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
