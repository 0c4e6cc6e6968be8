"""Quality of weak labels against the dense mask: how much is labelled, how much of that is right.

Counts are pooled over tiles before dividing, so a tile set's record weighs every pixel equally. Mask pixels of
255 (padding, nodata) count neither as labelled nor as valid.
"""

from __future__ import annotations

import numpy as np

from eqseg.weak.generators import IGNORE


def label_counts(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[valid, labelled, correct] pixel counts of labels (any shape) against the mask of the same shape."""
    valid = mask != IGNORE
    labelled = valid & (labels != IGNORE)
    return np.array([valid.sum(), labelled.sum(), (labelled & (labels == mask)).sum()], dtype=np.int64)


def summarise(counts: np.ndarray) -> dict:
    """JSON-ready record of pooled counts: labelled fraction of valid pixels, precision (None if nothing labelled)."""
    valid, labelled, correct = (int(v) for v in counts)
    return {
        "labelled_fraction": labelled / valid if valid else 0.0,
        "precision": correct / labelled if labelled else None,
        "labelled_pixels": labelled,
        "valid_pixels": valid,
    }


def label_quality(labels: np.ndarray, mask: np.ndarray) -> dict:
    return summarise(label_counts(labels, mask))
