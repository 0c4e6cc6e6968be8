"""`eqseg weak`: the labels a model trains on, for one dataset and supervision, as a versioned stage output.

`full` is the identity (the dense masks of the train tiles), so every training reads its labels the same way and
both orchestrators need no special case. Output folder: labels.npy (row i for tile ids.npy[i]), ids.npy,
quality.json (labelled fraction, precision against the dense mask, annotation effort), and the labels the same
supervision has on the validation tiles, val_labels.npy (row i for tile val_ids.npy[i]): the same generator and seed,
without expansion (an annotator's marks, not an algorithm's guesses), so that a weak cell is selected with what its
supervision has (`train.select: own`), not with dense masks it never had.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eqseg.config import Params, Supervision
from eqseg.tiling.store import TileStore
from eqseg.utils.atomic import atomic_dir, write_json
from eqseg.weak.quality import label_quality
from eqseg.weak.store import make_weak_labels


def make_weak_stage(params: Params, dataset: str, supervision: Supervision, tiles: Path, out: Path) -> dict:
    store = TileStore(tiles)
    ids, val_ids = store.ids("train"), store.ids("val")
    labels, quality = weak_labels(params, supervision, store, ids, supervision.expansion)
    val_labels = weak_labels(params, supervision, store, val_ids, "none")[0] if len(val_ids) else None
    quality |= {"dataset": dataset, "supervision": supervision.name, "val_tiles": int(len(val_ids))}
    with atomic_dir(out) as tmp:
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "ids.npy", ids)
        if val_labels is not None:
            np.save(tmp / "val_labels.npy", val_labels)
            np.save(tmp / "val_ids.npy", val_ids)
        write_json(tmp / "quality.json", quality)
    return quality


def weak_labels(params: Params, supervision: Supervision, store: TileStore, ids: np.ndarray, expansion: str) -> tuple[np.ndarray, dict]:
    """The labels of tiles `ids` under a supervision (rows in the order of ids) and their quality record."""
    kind = supervision.kind
    if kind == "full":
        labels = np.asarray(store.masks[ids])
        quality = {"kind": "full", "tiles": int(ids.size), "effort": {"unit": "dense masks", "total": int(ids.size),
                   "per_tile": 1.0}, "expansion": None} | label_quality(labels, store.scored_masks(ids))
        return labels, quality
    options = params.weak_options(store.meta.dataset, kind)
    if kind == "tags":
        options.setdefault("num_classes", store.meta.num_classes)
    return make_weak_labels(
        store.images, store.masks, ids, kind, params.weak.seed, options,
        expansion, params.weak.expansion_options.get(expansion, {}), scored=store.scored_masks, valid=store.valid,
    )
