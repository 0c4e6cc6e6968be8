"""`eqseg weak`: the labels a model trains on, for one dataset and supervision, as a versioned stage output.

`full` is the identity (the dense masks of the train tiles), so every training reads its labels the same way and
both orchestrators need no special case. Output folder: labels.npy (row i for tile ids.npy[i]), ids.npy,
quality.json (labelled fraction, precision against the dense mask, annotation effort).
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
    kind, expansion = supervision.kind, supervision.expansion
    store = TileStore(tiles)
    ids = store.ids("train")
    if kind == "full":
        labels = np.asarray(store.masks[ids])
        quality = {"kind": "full", "tiles": int(ids.size), "effort": {"unit": "dense masks", "total": int(ids.size),
                   "per_tile": 1.0}, "expansion": None} | label_quality(labels, labels)
    else:
        options = dict(params.weak.options.get(kind, {}))
        if kind == "tags":
            options.setdefault("num_classes", store.meta.num_classes)
        labels, quality = make_weak_labels(
            store.images, store.masks, ids, kind, params.weak.seed, options,
            expansion, params.weak.expansion_options.get(expansion, {}),
        )
    quality |= {"dataset": dataset, "supervision": supervision.name}
    with atomic_dir(out) as tmp:
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "ids.npy", ids)
        write_json(tmp / "quality.json", quality)
    return quality
