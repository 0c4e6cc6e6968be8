"""Segmentation metrics from one confusion matrix over all evaluated pixels.

Macro mIoU (mean of per-class IoU), frequency-weighted IoU (fwIoU, Long et al. 2015: per-class IoU weighted by each
class's share of the true pixels) and pixel accuracy are reported separately: TorchGeo's micro-averaged "mIoU"
confused its users. Micro IoU (IoU pooled over classes) is not reported: for single-label segmentation it always
equals acc / (2 - acc), pixel accuracy in disguise. Pixels labelled 255 are never counted.
"""

from __future__ import annotations

import numpy as np

from eqseg.labels import IGNORE


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, ignoring target pixels of 255."""
    pred = np.asarray(pred).ravel()
    target = np.asarray(target).ravel()
    keep = target != IGNORE
    idx = target[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(cm: np.ndarray, classes: list[str]) -> dict:
    """Per-class IoU, macro mIoU over classes present in truth or prediction, frequency-weighted IoU, pixel accuracy.

    fwIoU = sum_c (n_c / N) IoU_c with n_c the true pixels of class c and N all of them: a class absent from the truth
    weighs 0, even when it is predicted (its IoU is then 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    support = cm.sum(axis=1)
    out = {
        "miou_macro": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "fwiou": float(np.sum(support[support > 0] * iou[support > 0]) / total) if total else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }
    for name, value in zip(classes, iou):
        out[f"iou_{name}"] = float(value)
    return out
