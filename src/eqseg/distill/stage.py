"""`eqseg distill`: a teacher cell's pseudo-labels for its +distill student, as a versioned stage output.

The teacher is the trained cell of the weak parent supervision (e.g. `points`); its own labels folder (`eqseg
weak`) gives the labels that stay. The student's tiles are the teacher's labelled tiles (its budget) plus the
other train tiles, which were unlabelled for the teacher (up to `train.max_train_tiles` of them, drawn with the
teacher's seed). Output folder, read by `eqseg train` like the output of `eqseg weak`: labels.npy (row i for
tile ids.npy[i]), ids.npy, quality.json (the union's labelled fraction and precision against the dense masks,
the fraction of open pixels the teacher labelled, and the parent's record), and the parent's validation labels
(val_labels.npy, val_ids.npy): the student is selected with the same labels as its teacher.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from eqseg.config import DISTILL, Params
from eqseg.data.cells import check_labels_match, load_labels, select_train_ids
from eqseg.distill.pseudo import fill_confident
from eqseg.errors import EqsegError
from eqseg.inference import load_trained, normaliser_for, tile_logits
from eqseg.labels import IGNORE
from eqseg.runtime import resolve_device, resolve_precision
from eqseg.tiling.store import TileStore, tile_rows
from eqseg.utils.atomic import atomic_dir, check_outputs_apart, check_replaceable, write_json
from eqseg.weak.quality import label_counts, summarise


def teacher_cell(model_dir: Path) -> dict:
    """The teacher's cell (dataset, model, supervision, budget, seed) from its config.json."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise EqsegError(f"{model_dir}: no config.json; is this the output folder of `eqseg train`?")
    c = json.loads(config.read_text())
    missing = [k for k in ("dataset", "supervision", "seed") if k not in c]
    if missing:
        raise EqsegError(f"{config}: missing {', '.join(missing)}")
    return dict(dataset=c["dataset"], model=c.get("model"), supervision=c["supervision"], seed=int(c["seed"]),
                budget=int(c.get("budget", 100)))


def make_pseudo_stage(params: Params, model_dir: Path, tiles: Path, labels_dir: Path, out: Path) -> dict:
    check_replaceable(out)
    check_outputs_apart({"--out": out}, {"--model-dir": model_dir, "--tiles": tiles, "--labels": labels_dir})
    cell = teacher_cell(model_dir)
    sup = params.supervision(cell["supervision"] + DISTILL)  # refuses a teacher on dense labels
    given, given_ids, parent = load_labels(labels_dir)
    check_labels_match(parent, cell["supervision"], labels_dir)
    store = TileStore(tiles)
    meta = store.meta
    cfg = params.distill
    device = resolve_device(cfg.device)
    model, info = load_trained(model_dir, device)
    info.check_inputs(meta.bands, meta.classes, str(tiles))

    labelled = select_train_ids(store, params.train.max_train_tiles, cell["seed"], cell["budget"])  # the teacher's
    others = select_train_ids(store, params.train.max_train_tiles, cell["seed"], 100)
    ids = np.union1d(labelled, others).astype(np.int64)
    given_row = tile_rows(given_ids, ids)  # of each tile of ids: its row in the given labels, -1 for none
    absent = labelled[tile_rows(given_ids, labelled) < 0].astype(np.int64).tolist()
    if absent:
        raise EqsegError(f"{labels_dir}: no labels for the teacher's train tiles {absent[:5]}; re-run `eqseg weak`")
    tags = np.asarray(given).ndim == 2
    labelled_set = set(labelled.tolist())

    normaliser = normaliser_for(params.normalise.mode, info, store, ids)
    out_labels = np.full((len(ids), *store.masks.shape[1:]), IGNORE, dtype=np.uint8)
    counts = {k: np.zeros(3, np.int64) for k in ("given", "pseudo", "union")}
    open_pixels = 0
    precision = resolve_precision(params.train.precision, device)
    for batch, logits in tile_logits(model, store, ids, cfg.batch_size, device, normaliser, precision, tta=cfg.tta):
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        masks, valids = store.scored_masks(batch), np.asarray(store.valid[batch])
        for t, at, p, mask, valid in zip(batch, tile_rows(ids, batch), probs, masks, valids):
            known = int(t) in labelled_set
            row = np.asarray(given[given_row[at]]) if known else None
            if tags or not known:
                tile_given = np.full(mask.shape, IGNORE, np.uint8)
            else:
                tile_given = row
            allowed = row.astype(bool) if tags and known else None
            result = fill_confident(tile_given, p, valid, cfg.threshold, allowed)
            out_labels[at] = result
            open_pixels += int(np.count_nonzero((mask != IGNORE) & (tile_given == IGNORE)))
            counts["given"] += label_counts(tile_given, mask)
            counts["pseudo"] += label_counts(np.where(tile_given == IGNORE, result, IGNORE), mask)
            counts["union"] += label_counts(result, mask)

    pseudo = summarise(counts["pseudo"])
    record = dict(
        teacher=str(model_dir), threshold=cfg.threshold, tta=cfg.tta, normalise=normaliser.mode,
        labelled_tiles=int(len(labelled)), unlabelled_tiles=int(len(ids) - len(labelled)), open_pixels=open_pixels,
        pseudo_pixels=pseudo["labelled_pixels"], kept_fraction=pseudo["labelled_pixels"] / open_pixels if open_pixels else 0.0,
        pseudo_precision=pseudo["precision"], given=summarise(counts["given"]),
    )
    quality = summarise(counts["union"]) | dict(
        kind=parent.get("kind"), dataset=cell["dataset"], supervision=sup.name, tiles=int(len(ids)),
        seed=cell["seed"], budget=cell["budget"], effort=parent.get("effort"), expansion=parent.get("expansion"),
        distill=record, parent=parent,
    )
    with atomic_dir(out) as tmp:
        np.save(tmp / "labels.npy", out_labels)
        np.save(tmp / "ids.npy", ids)
        for f in ("val_labels.npy", "val_ids.npy"):
            if (labels_dir / f).is_file():
                shutil.copyfile(labels_dir / f, tmp / f)
        write_json(tmp / "quality.json", quality)
    return quality
