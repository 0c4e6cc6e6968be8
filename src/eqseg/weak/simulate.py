"""The entry points of eqseg.weak (which re-exports the names this module defines): `generate(mask, kind, seed,
**options)`, the one entry point to the generators, `annotate` (one tile with a numpy Generator), `check_kind`,
and `LABEL_KINDS`, the kinds they simulate (built from eqseg.weak.generators.PER_TILE; their options are typed for
params in eqseg.weak.options)."""

from __future__ import annotations

import numpy as np

from eqseg.errors import EqsegError
from eqseg.utils.checks import check_known, require_seed
from eqseg.weak.expansion import METHODS, expand
from eqseg.weak.generators import EFFORT_UNITS, IGNORE, PER_TILE, Annotation, partial

LABEL_KINDS = (*PER_TILE, "partial")  # the kinds of weak labels `generate` simulates (options: weak.options.WEAK_KINDS)

__all__ = ["EFFORT_UNITS", "IGNORE", "LABEL_KINDS", "METHODS", "Annotation", "annotate", "check_kind", "expand", "generate"]


def check_kind(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise EqsegError(f"weak: unknown kind {kind!r} (allowed: {', '.join(LABEL_KINDS)})")


def _check_mask(mask: np.ndarray, ndim: int, kind: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != ndim:
        shape = "(N, H, W)" if ndim == 3 else "(H, W)"
        raise EqsegError(f"weak.{kind}: mask must be a {shape} uint8 array of class ids (got {mask.ndim}-d {mask.dtype})")
    return mask


def annotate(mask: np.ndarray, kind: str, rng: np.random.Generator, **options) -> Annotation:
    """Labels and annotation effort of one tile for a per-tile kind (all but `partial`)."""
    check_kind(kind)
    if kind == "partial":
        raise EqsegError("weak.partial: chooses among tiles; pass a (N, H, W) stack to generate() or use make_weak_labels")
    fn = PER_TILE[kind]
    check_known(f"weak.{kind}", fn, options, skip=2)
    return fn(_check_mask(mask, 2, kind), rng, **options)


def generate(mask: np.ndarray, kind: str, seed: int = 0, **options) -> np.ndarray:
    """Weak labels of a dense mask: uint8 map of the mask's shape, 255 = no label; same seed, same bytes.

    `tags` returns the sorted class ids present instead; `partial` takes a (N, H, W) stack of tiles.
    """
    check_kind(kind)
    seed = require_seed(seed)
    if kind == "partial":
        check_known("weak.partial", partial, options, skip=3)
        masks = _check_mask(mask, 3, kind)
        return partial(masks, np.arange(len(masks)), seed, **options).labels
    return annotate(mask, kind, np.random.default_rng(seed), **options).labels
