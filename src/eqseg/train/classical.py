"""`eqseg train` for a classical baseline: fit it on the train split's labels (seconds, no epochs) and write a model
folder that evaluate, predict and the report read like a network's: classical.json (state + model info),
config.json, history.csv (one row: the validation score), run.json (its MLflow run)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from eqseg import classical, paths, tracking
from eqseg.config import CLASSICAL_OPTIONS, Params, stable_hash
from eqseg.data import normalise as norm
from eqseg.errors import EqsegError
from eqseg.inference import ClassicalNet
from eqseg.train.record import plot_history, weak_metrics, write_history
from eqseg.train.validate import undefined_reasons, validation_for
from eqseg.models.checkpoint import ModelInfo, save_classical
from eqseg.runtime import resolve_device
from eqseg.tiling.store import TileStore, tile_rows
from eqseg.utils import strictjson
from eqseg.utils.atomic import atomic_dir, write_json


def fit_classical(params: Params, dataset: str, model_name: str, supervision: str, seed: int, tiles: Path,
                  labels_dir: Path, out: Path, variant: str = "none", budget: int = 100) -> dict:
    """Fit on (a seeded sample of) the cell's train tiles; `variant` does not apply to a fitted method and is only
    recorded. The cell's `seed` picks the tiles and drives every random choice of the fit (k-means initialisation,
    pixel sample)."""
    from eqseg.data.cells import cell_train_ids, check_labels_match, load_labels

    t0, started = time.perf_counter(), time.time()  # the MLflow run starts at `started`: it spans the fit
    options = dict(params.model_options(model_name))
    arch = params.model_arch(model_name)
    typed = CLASSICAL_OPTIONS[arch].model_validate(options)
    store = TileStore(tiles)
    meta = store.meta
    sup = params.supervision(supervision)
    labels, label_ids, quality = load_labels(labels_dir)
    if labels.ndim != 3:
        raise EqsegError(f"{model_name}: classical baselines need pixel labels, not image tags ({supervision})")
    check_labels_match(quality, sup.name, labels_dir)
    cap = min(typed.max_fit_tiles, params.train.max_train_tiles or typed.max_fit_tiles)  # fitting takes seconds
    ids = cell_train_ids(store, label_ids, sup.distill, cap, seed, budget)
    if len(ids) > cap:  # a student's tiles: a seeded sample of them
        ids = np.sort(np.random.default_rng(seed).choice(ids, cap, replace=False))
    images = [np.asarray(store.images[i]) for i in ids]
    masks = [np.asarray(labels[r]) for r in tile_rows(label_ids, ids)]  # the cell's tiles all have labels
    method_options = typed.model_dump(exclude={"max_fit_tiles"})
    state = classical.fit(arch, images, masks, meta.classes, seed=seed, **method_options)
    # one fit, nothing to select: the validation score is a record, scored with the cell's own labels as networks are
    validation = validation_for(params.train.select, store, labels_dir)
    info = ModelInfo(model=model_name, arch=arch if arch != model_name else None, options=options, in_channels=meta.bands, num_classes=meta.num_classes,
                     classes=meta.classes, band_mean=meta.band_mean, band_std=meta.band_std,
                     normalise=params.normalise.mode, tile_size=meta.tile_size, dataset=dataset,
                     supervision=sup.name, seed=seed, select=validation.select, selected_by="the one fit",
                     precision="fp32")
    val_ids = validation.ids
    device = resolve_device("cpu")
    normaliser = norm.for_store(params.normalise.mode, (meta.band_mean, meta.band_std), store,
                                store.sources(val_ids, distinct=True) if params.normalise.mode == "image" else None)
    val = validation.score(ClassicalNet(state, meta.num_classes), store, params.evaluate.batch_size, device, normaliser,
                           precision="fp32")
    seconds = time.perf_counter() - t0
    history = [dict(epoch=1, train_loss=float("nan"), **val, seconds=seconds)]
    summary = dict(best_epoch=1, best_val_miou=history[0]["val_miou"], best_val_score=val["val_score"], final_train_loss=float("nan"), n_params=0,
                   macs_per_tile=0, train_seconds=seconds)
    run_config = dict(dataset=dataset, model=model_name, supervision=sup.name, variant=variant, budget=budget, seed=seed,
                      model_options=options, **({"arch": arch} if arch != model_name else {}),
                      normalise=params.normalise.mode, n_train_tiles=len(ids), n_val_tiles=len(val_ids), tiles=str(tiles))
    cell = dict(dataset=dataset, model=model_name, supervision=sup.name, variant=variant, budget=budget, seed=seed)
    run = tracking.start_cell_run(params.mlflow, dict(stage="train", **cell), stable_hash(run_config | {"classical": True}),
                                  run_name=paths.CELL.format(**cell),
                                  tags={k: str(v) for k, v in cell.items()} | {"classical": "true"}, start_time=started)
    try:
        tracking.log_params(run_config)
        tracking.log_metrics(weak_metrics(quality) | summary)
        with atomic_dir(out) as tmp:
            save_classical(tmp / "model.pt", state, info)
            write_json(tmp / "classical.json", {"info": info.model_dump(), "state": state})  # readable copy
            write_history(tmp / "history.csv", history)
            plot_history(tmp / "curves.png", history, title=f"{dataset} / {model_name} (fitted) / {sup.name} / seed {seed}")
            (tmp / "config.json").write_text(strictjson.dumps(run_config | {"summary": summary},
                undefined_reasons(validation) | {"final_train_loss": "a classical fit has no training loss"},
                indent=2, default=str) + "\n")
            (tmp / "run.json").write_text(strictjson.dumps({"run_id": run.info.run_id, "tracking_uri": params.mlflow.tracking_uri}) + "\n")
        tracking.log_artifacts([out / "classical.json", out / "config.json", out / "curves.png"])
        tracking.end_run()
    except BaseException:
        tracking.end_run("KILLED")
        raise
    return summary
