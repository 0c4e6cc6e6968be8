"""Weak labels of a tile set: the arrays of a tile store in, the labels and their quality record out.

Pure over arrays (memory-mapped ones are read a tile at a time), so the CLI only loads the store and writes
`labels.npy` and `quality.json`.
"""

from __future__ import annotations

import numpy as np

from eqseg.errors import EqsegError
from eqseg.weak import EFFORT_UNITS, annotate, check_kind
from eqseg.weak.expansion import check_method, expand
from eqseg.weak.generators import IGNORE, partial, tags
from eqseg.utils.checks import check_known, require_int, require_seed
from eqseg.weak.quality import label_counts, summarise


def tag_matrix(masks: np.ndarray, tile_ids: np.ndarray, num_classes: int | None = None, min_pixels: int = 1) -> np.ndarray:
    """(len(tile_ids), num_classes) uint8 class presence, row i for tile tile_ids[i]: the targets of the MIL loss.

    Pass num_classes (the store's class count): a class absent from every tile must still get a column.
    """
    present = [tags(np.asarray(masks[t]), None, min_pixels).labels for t in tile_ids]
    top = max((int(p.max()) for p in present if p.size), default=0)
    num_classes = top + 1 if num_classes is None else require_int("weak.tags", "num_classes", num_classes, 1)
    if top >= num_classes:
        raise EqsegError(f"weak.tags: num_classes is {num_classes} but the masks hold class id {top}")
    matrix = np.zeros((len(present), num_classes), dtype=np.uint8)
    for row, p in enumerate(present):
        matrix[row, p] = 1
    return matrix


def make_weak_labels(
    images: np.ndarray, masks: np.ndarray, train_ids: np.ndarray, kind: str, seed: int, options: dict | None = None,
    expansion: str = "none", expansion_options: dict | None = None, scored=None, valid=None,
) -> tuple[np.ndarray, dict]:
    """Weak (optionally expanded) labels of the train tiles, row i for tile train_ids[i], and the quality record.

    Labels are (N, H, W) uint8, 255 = no label, except for kind='tags': a (N, num_classes) presence matrix
    (`tag_matrix`; option num_classes). Tile t draws from default_rng((seed, t)), so its labels do not depend on
    which other tiles are processed, nor in what order. Expanded labels are 255 wherever the mask is: padding is
    known without annotation, and never a class (`valid`: the store's image validity, indexed by tile id; default:
    the labelled pixels of the mask). The quality record counts the pixels `scored(ids)` keeps (the
    tile store's scored_masks: valid, owned, labelled: each pixel once); default: every labelled pixel.
    """
    check_kind(kind)
    seed = require_seed(seed)
    options, expansion_options = dict(options or {}), dict(expansion_options or {})
    check_method(expansion, expansion_options)
    if expansion != "none" and kind in ("tags", "partial"):
        raise EqsegError(f"weak: expansion {expansion!r} needs sparse pixel labels, which kind {kind!r} does not give (use none)")
    train_ids = np.asarray(train_ids, dtype=np.int64)
    scored = scored or (lambda ids: np.asarray(masks[ids]))
    if train_ids.size == 0:
        raise EqsegError("weak: no train tiles to label")
    record = {"kind": kind, "seed": seed, "options": options, "tiles": int(train_ids.size)}

    if kind == "tags":
        check_known("weak.tags", tag_matrix, options, skip=2)
        labels = tag_matrix(masks, train_ids, **options)
        valid = sum(int(np.count_nonzero(scored([t]) != IGNORE)) for t in train_ids)
        quality = summarise([valid, 0, 0])
        return labels, record | _effort(kind, int(labels.sum()), train_ids.size) | quality | {"expansion": None}
    if kind == "partial":
        check_known("weak.partial", partial, options, skip=3)
        dense = np.asarray(masks[train_ids])
        labels, effort = partial(dense, train_ids, seed, **options)
        quality = summarise(label_counts(labels, scored(train_ids)))
        return labels, record | _effort(kind, effort, train_ids.size) | quality | {"expansion": None}

    labels = np.empty((train_ids.size, *masks.shape[1:]), dtype=np.uint8)
    weak_counts, expanded_counts, effort = np.zeros(3, np.int64), np.zeros(3, np.int64), 0
    from tqdm import tqdm

    # a progress bar in a terminal, none in logs (disable=None: off when stderr is not a TTY)
    for row, t in enumerate(tqdm(train_ids, desc=f"weak {kind}", unit="tile", disable=None, leave=False)):
        mask, truth = np.asarray(masks[t]), scored([t])[0]
        weak, tile_effort = annotate(mask, kind, np.random.default_rng((seed, int(t))), **options)
        effort += tile_effort
        weak_counts += label_counts(weak, truth)
        if expansion != "none":
            weak = expand(np.asarray(images[t]), weak, expansion, **expansion_options)
            weak[(mask == IGNORE) if valid is None else ~np.asarray(valid[t])] = IGNORE
            expanded_counts += label_counts(weak, truth)
        labels[row] = weak
    expanded = None if expansion == "none" else {"method": expansion, "options": expansion_options} | summarise(expanded_counts)
    return labels, record | _effort(kind, effort, train_ids.size) | summarise(weak_counts) | {"expansion": expanded}


def _effort(kind: str, total: int, tiles: int) -> dict:
    """Annotation effort in the kind's unit (clicks, strokes, ...), in total and per tile."""
    return {"effort": {"unit": EFFORT_UNITS[kind], "total": total, "per_tile": total / tiles}}
