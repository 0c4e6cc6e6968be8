"""Tissue detection on a low-resolution level, so that background (glass, blank margins) is never read at full size.

Stained tissue is coloured, glass and blank areas are grey or white: Otsu's threshold on the HSV saturation splits
them, floored by a minimum saturation so that an all-blank or all-tissue thumbnail is not split in two at random;
a closing joins the nuclei and stroma of one piece of tissue, small specks (dust, pen dots) are removed and holes
(lumina, fat) filled. Nothing is dilated beyond that, so a tile of pure background never counts as tissue.
"""

from __future__ import annotations

import numpy as np


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of a (3, H, W) image in [0, 1]; 0 where the pixel is black."""
    x = rgb.astype(np.float32)
    hi, lo = x.max(axis=0), x.min(axis=0)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def saturation_threshold(sat: np.ndarray, floor: float) -> float:
    from skimage.filters import threshold_otsu

    return max(float(threshold_otsu(sat)) if np.ptp(sat) > 0 else 1.0, floor)


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, min_area: int = 64) -> np.ndarray:
    """Boolean tissue map of a (C, H, W) thumbnail (C >= 3; a single band counts dark pixels as tissue)."""
    from scipy import ndimage
    from skimage.morphology import disk

    if rgb.shape[0] >= 3:
        sat = saturation(rgb[:3])
        mask = sat > saturation_threshold(sat, min_saturation)
    else:
        grey = rgb[0].astype(np.float32) / max(float(rgb[0].max()), 1.0)
        mask = grey < 1.0 - max(min_saturation, 0.1)
    mask = ndimage.binary_closing(mask, structure=disk(2), border_value=0)
    mask = drop_small(mask, min_area)
    return ndimage.binary_fill_holes(mask)


def drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove connected components (4-connected) of at most min_area pixels."""
    from skimage.morphology import remove_small_objects

    try:
        return remove_small_objects(mask, max_size=min_area)  # scikit-image >= 0.26
    except TypeError:  # older: min_size, which removes components strictly smaller than it
        return remove_small_objects(mask, min_size=min_area + 1)
