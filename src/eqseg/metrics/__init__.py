"""Segmentation metrics from one confusion matrix over all evaluated pixels.

Macro mIoU (mean of per-class IoU), micro IoU (pooled over classes) and pixel accuracy are reported separately:
TorchGeo's micro-averaged "mIoU" confused its users. Pixels labelled 255 are never counted.
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
    """Per-class IoU, macro mIoU over classes present in truth or prediction, micro IoU, pixel accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    out = {
        "miou_macro": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "iou_micro": float(tp.sum() / (tp.sum() + fp.sum() + fn.sum())) if total else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }
    for name, value in zip(classes, iou):
        out[f"iou_{name}"] = float(value)
    return out
