"""The classical methods by name (`CLASSICAL`) and their common interface, `fit` and `predict` (re-exported by
eqseg.classical, whose names this module defines; the methods' options are typed for params in
eqseg.classical.options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from eqseg.classical import methods
from eqseg.errors import EqsegError


@dataclass(frozen=True)
class ClassicalMethod:
    name: str
    fit: Callable[..., dict]
    predict: Callable[[dict, np.ndarray], np.ndarray]
    instances: Callable[[dict, np.ndarray], np.ndarray] | None = None


CLASSICAL: dict[str, ClassicalMethod] = {
    "otsu": ClassicalMethod("otsu", methods.otsu_fit, methods.otsu_predict),
    "kmeans": ClassicalMethod("kmeans", methods.kmeans_fit, methods.kmeans_predict),
    "watershed": ClassicalMethod("watershed", methods.watershed_fit, methods.watershed_predict,
                                 methods.watershed_instances),
    "felzenszwalb": ClassicalMethod("felzenszwalb", methods.felzenszwalb_fit, methods.felzenszwalb_predict),
    "split_merge": ClassicalMethod("split_merge", methods.split_merge_fit, methods.split_merge_predict),
}


def get(name: str) -> ClassicalMethod:
    if name not in CLASSICAL:
        raise EqsegError(f"unknown classical method {name!r} (allowed: {sorted(CLASSICAL)})")
    return CLASSICAL[name]


def is_classical(name: str) -> bool:
    return name in CLASSICAL


def fit(name: str, images, masks, classes, seed: int = 0, **params) -> dict:
    """Fit the named method on train images and masks with the cell's `seed`; returns its JSON-able state."""
    return get(name).fit(images, masks, classes, seed=seed, **params)


def predict(state: dict, image) -> np.ndarray:
    """(H, W) uint8 class map of one (C, H, W) image with a fitted state."""
    if not isinstance(state, dict) or "method" not in state:
        raise EqsegError("classical.predict: state must be the dict returned by fit")
    return get(state["method"]).predict(state, image)
