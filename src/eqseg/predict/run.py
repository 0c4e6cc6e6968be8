"""`eqseg predict`: a trained model over a whole scene or slide, stitched, written as it goes, and scored.

Windows are read from the source (strips aligned to the file's blocks, tissue-only tiles of slides), normalised with
the model's band statistics, predicted in batches (optionally under the 8 D4 transforms), blended into a band of rows
(eqseg.predict.stitch) and written row of blocks by row of blocks (eqseg.predict.writer). The last window of each
row and column is shifted back to end at the source's edge, never padded past it. The class map (255 = nodata, and
no tissue on slides) carries the source's CRS and transform (level-0 pixel coordinates and the pixel size for
slides), overviews, and its class names beside it (NAME.tif.aux.xml for GDAL, NAME.qml for QGIS). Scene metrics
come from one confusion matrix accumulated over the finished rows, so each pixel is counted once; with the tile store
given, also over the test tiles only (the fair score for scenes split by blocks).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.enums import Resampling
from tqdm.auto import tqdm

from eqseg.config import Params, PredictConfig
from eqseg.errors import EqsegError
from eqseg.metrics import IGNORE, confusion, scores
from eqseg.metrics.objects import ObjectScores, instances_from_classes
from eqseg.metrics.ranking import HistogramAP, dice_scores
from eqseg.predict.stitch import RowBand
from eqseg.predict.writer import GeoTiffRowWriter, add_overviews, class_colours, profile, write_class_styles
from eqseg.tiling import grid
from eqseg.tiling.geotiff import GDAL_CACHE_BYTES
from eqseg.tiling.registry import open_source, source_names
from eqseg.data.normalise import Normaliser
from eqseg.models.checkpoint import ModelInfo
from eqseg.models.groups import D4
from eqseg.runtime import autocast, memory_format, to_device
from eqseg.utils.atomic import atomic_file, check_file_replaceable, check_outputs_apart, check_replaceable, write_json

log = logging.getLogger(__name__)


@dataclass
class Timing:
    forward: float = 0.0
    windows: int = 0
    skipped: int = 0
    start: float = field(default_factory=time.perf_counter)

    def report(self) -> dict:
        total = time.perf_counter() - self.start
        return dict(forward_seconds=round(self.forward, 3), total_seconds=round(total, 3),
                    forward_share=round(self.forward / total, 4) if total else None,
                    windows=self.windows, windows_skipped=self.skipped)


@torch.no_grad()
def window_probabilities(model, x: np.ndarray, tta: bool, device: torch.device, timing: Timing,
                         precision: str = "fp32") -> np.ndarray:
    """Softmax probabilities (B, K, S, S) of normalised windows, averaged over the D4 group with tta."""
    layout = memory_format(model)
    xs = to_device(torch.from_numpy(x), device, layout)
    total = None
    group = range(D4.order) if tta else (0,)
    for g in group:
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits = model(D4.transform(xs, g).contiguous(memory_format=layout))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timing.forward += time.perf_counter() - t0
        p = D4.untransform(torch.softmax(logits.float(), dim=1), g)
        total = p if total is None else total + p
    return (total / len(group)).cpu().numpy()


# --------------------------------------------------------------------------------------------- one source
def output_transform(source) -> Affine:
    """The source's georeferencing; level-0 pixel coordinates for slides; plain pixels otherwise."""
    if source.transform is not None:
        return source.transform
    return Affine.scale(source.downsample)


def _region(shapes, tree, transform: Affine, top: int, n: int, width: int) -> np.ndarray | None:
    """Pixels of rows [top, top + n) inside the given footprints (the test tiles), or None without footprints."""
    import rasterio.features
    from shapely.geometry import box

    if tree is None:
        return None
    out_t = transform @ Affine.translation(0, top)
    left, top_y = out_t @ (0, 0)
    right, bottom_y = out_t @ (width, n)
    hits = tree.query(box(min(left, right), min(top_y, bottom_y), max(left, right), max(top_y, bottom_y)))
    if not len(hits):
        return np.zeros((n, width), dtype=bool)
    return rasterio.features.rasterize([(shapes[i], 1) for i in sorted(hits)], out_shape=(n, width), transform=out_t,
                                       fill=0, dtype=np.uint8).astype(bool)


def predict_source(
    model, info: ModelInfo, source, cfg: PredictConfig, device: torch.device, out: Path, proba_out: Path | None = None,
    test_footprints: list | None = None, labelled: bool = True, normaliser: Normaliser | None = None,
    adabn_used: bool = False, precision: str = "fp32",
) -> dict:
    """Predict one source into `out` (class map, 255 = nodata) and optionally `proba_out`; return its metrics
    (scene scores only when the source has labels). Windows are normalised by `normaliser` (default: the model's
    training statistics, `normalise.mode: train`)."""
    from shapely import STRtree

    info = info if isinstance(info, ModelInfo) else ModelInfo.model_validate(info)
    normaliser = normaliser or Normaliser("train", info.band_mean, info.band_std)
    S = cfg.window or int(info.tile_size)
    multiple = int(getattr(model, "tile_multiple", 1))
    path = source.path
    if S % multiple or 2 * cfg.overlap >= S:
        raise EqsegError(f"predict: window {S} must be a multiple of {multiple} (2**depth) and more than twice overlap ({cfg.overlap})")
    info.check_inputs(source.bands, None, str(path))
    K, classes, H, W = info.num_classes, list(info.classes), source.height, source.width
    background = source.background
    # the last window of each row and column ends at the source's edge (shifted back inside, never padded past it)
    rows, cols = grid.window_origins(H, S, cfg.overlap), grid.window_origins(W, S, cfg.overlap)
    band = RowBand(K, S, W, cfg.overlap)
    transform = output_transform(source)
    tree = STRtree(test_footprints) if test_footprints else None
    cm_all, cm_test = np.zeros((K, K), dtype=np.int64), np.zeros((K, K), dtype=np.int64)
    timing = Timing()
    ranking = HistogramAP(K)  # threshold-free: average precision per class from the blended probabilities
    # object F1 / AJI need whole objects: the stitched map and labels of the source, when small enough
    whole = ((np.full((H, W), IGNORE, np.uint8), np.full((H, W), IGNORE, np.uint8))
             if labelled and H * W <= cfg.object_metrics_max_pixels else None)
    model.eval()
    # A progress bar in a terminal (stderr), none in logs (tqdm's disable=None: off when stderr is not a TTY).
    progress = tqdm(total=len(rows) * len(cols), desc=f"predict {source.name}", unit="window", disable=None, leave=False)
    # A small GDAL block cache: written rows of blocks go to the file at once instead of piling up in memory.
    with progress, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), atomic_file(out) as tmp, _proba_target(proba_out) as tmp_p:
        maps = GeoTiffRowWriter(tmp, **profile(H, W, 1, "uint8", source.crs, transform, IGNORE))
        probs_w = GeoTiffRowWriter(tmp_p, **profile(H, W, K, cfg.probabilities, source.crs, transform,
                                             None if cfg.probabilities == "uint8" else float("nan"))) if tmp_p else None
        _describe_output(maps.dataset, source, classes)
        if probs_w:
            for k, name in enumerate(classes, 1):
                probs_w.dataset.set_band_description(k, name)
        for i, r in enumerate(rows):
            for start in range(0, len(cols), cfg.batch_size):
                chunk = cols[start : start + cfg.batch_size]
                reads = [source.read_tile(r, c, S, H, W) for c in chunk]
                active = [k for k, rd in enumerate(reads) if rd.valid_fraction > 0]
                timing.windows += len(active)
                timing.skipped += len(reads) - len(active)
                probs = None
                if active:
                    x = normaliser(np.stack([reads[k].image for k in active]), source.name)
                    probs = dict(zip(active, window_probabilities(model, x, cfg.tta, device, timing, precision)))
                for k, (c, rd) in enumerate(zip(chunk, reads)):
                    band.add(c, probs.get(k) if probs else None, rd.mask, rd.valid)
                progress.update(len(chunk))
            n = (rows[i + 1] if i + 1 < len(rows) else H) - r
            cls, p, labels, missing = band.pop(n)  # 255 (nodata) wherever no window was computed
            # scored: what the pipeline decided there; pixels of a slide skipped as non-tissue count as its background
            scored = cls if background is None else np.where(missing, np.uint8(background), cls)
            labels[(scored == IGNORE) | (not labelled)] = IGNORE
            cm_all += confusion(scored, labels, K)
            region = _region(test_footprints, tree, transform, r, n, W)
            if region is not None:
                cm_test += confusion(scored[region], labels[region], K)
            if labelled:
                ranking.update(p, np.where(missing, IGNORE, labels))
                if whole is not None:
                    whole[0][r : r + n], whole[1][r : r + n] = scored, labels
            maps.push(cls[None])
            if probs_w:
                probs_w.push(np.round(p * 255).astype(np.uint8) if cfg.probabilities == "uint8" else np.where(cls == IGNORE, np.nan, p))
        maps.close()
        if probs_w:
            probs_w.close()
        if timing.windows == 0:
            what = source.empty_reason
            raise EqsegError(f"{path}: nothing to predict ({what})")
        add_overviews(tmp, Resampling.mode)  # every map: a GIS shows large scenes zoomed out from the overviews
        if tmp_p:
            add_overviews(tmp_p, Resampling.average)
        write_class_styles(out, classes, class_colours(len(classes)))  # beside `out`, before it is renamed into place
    metrics = dict(source=source.name, height=H, width=W, window=S, overlap=cfg.overlap, tta=cfg.tta, timing=timing.report(),
                   normalise=normaliser.mode, inputs=normaliser.record, adabn=adabn_used, precision=precision)
    if labelled:
        metrics["scene"] = (scores(cm_all, classes) | dice_scores(cm_all, classes) | ranking.compute(classes)
                            | {"confusion": cm_all.tolist()})
        if whole is not None:
            metrics["objects"] = object_scores(*whole, classes)
    if tree is not None:
        metrics["test"] = scores(cm_test, classes) | {"confusion": cm_test.tolist()}
    return metrics


def object_scores(pred: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict:
    """Object precision/recall/F1 (one-to-one matches at IoU >= 0.5, as the SpaceNet metric) and aggregated Jaccard
    (AJI) per foreground class, objects = connected components of each class in the stitched map and the labels
    (touching objects of one class merge: an instance-level truth would be stricter)."""
    out = {}
    valid = truth != IGNORE
    for k, name in enumerate(classes):
        if k == 0:
            continue  # background is not made of objects
        acc = ObjectScores(0.5)
        acc.update(instances_from_classes(pred, k), instances_from_classes(truth, k), valid)
        out[name] = acc.compute()
    return out


def pool_objects(per_source: list[dict]) -> dict:
    """Object counts summed over sources: F1 from the pooled matches, AJI as pooled intersection / union."""
    out = {}
    for name in dict.fromkeys(k for d in per_source for k in d):
        tp, fp, fn, c, u = (sum(d[name][f"obj_{x}"] if x in ("tp", "fp", "fn") else d[name][f"aji_{x}"]
                                for d in per_source if name in d) for x in ("tp", "fp", "fn", "c", "u"))
        out[name] = dict(obj_tp=tp, obj_fp=fp, obj_fn=fn, obj_f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
                         aji_pooled=c / u if u else float("nan"))
    return out


def _proba_target(path: Path | None):
    import contextlib

    return atomic_file(path) if path else contextlib.nullcontext(None)


def _describe_output(ds, source, classes: list[str]) -> None:
    """Class names, a colour table and, for slides, the pixel size in the resolution tags."""
    ds.update_tags(classes=",".join(classes), nodata_meaning=f"{IGNORE}: nodata, not predicted (no tissue on slides)")
    ds.write_colormap(1, {k: (*rgb, 255) for k, rgb in enumerate(class_colours(len(classes)))} | {IGNORE: (0, 0, 0, 0)})
    mpp = source.mpp
    if mpp:
        ppcm = f"{1e4 / mpp:.6f}"
        ds.update_tags(TIFFTAG_XRESOLUTION=ppcm, TIFFTAG_YRESOLUTION=ppcm, TIFFTAG_RESOLUTIONUNIT="3", mpp=str(mpp))


# --------------------------------------------------------------------------------------------- datasets and the CLI
def prediction_sources(params: Params, dataset: str, root: Path = Path(".")) -> list[str]:
    """The sources worth a scene prediction: the test sources when splitting by source; every scene when splitting
    by block (its metrics are then also reported over the test tiles alone)."""
    cfg = params.dataset(dataset)
    names = source_names(cfg, root)
    if cfg.split.by == "block":
        return names
    from eqseg.tiling.store import source_splits

    splits = source_splits(cfg, root)  # as the tile store draws them (sources sharing ground are one unit)
    return [n for n in names if splits[n] == "test"]


def test_footprints(tiles: Path, source: str) -> list:
    from eqseg.tiling.store import TileStore

    index = TileStore(tiles).index
    return list(index.loc[(index.source == source) & (index.split == "test")].geometry)


def predict(params: Params, model_dir: Path, out: Path, dataset: str | None = None, source: str | None = None,
            raster: Path | None = None, tiles: Path | None = None, metrics_out: Path | None = None) -> dict:
    """Load the model, open the source (a dataset's, with labels, or any GeoTIFF without), predict, write metrics."""
    from eqseg.inference import load_trained
    from eqseg.runtime import resolve_device, resolve_precision, set_threads
    from eqseg.tiling.geotiff import GeoSource

    cfg = params.predict
    device = resolve_device(cfg.device)
    precision = resolve_precision(params.train.precision, device)
    set_threads(cfg.threads, 0)
    if raster is not None:
        src = GeoSource(raster, [])
    elif dataset and source:
        src = open_source(params.dataset(dataset), source)
    else:
        raise EqsegError("predict: give --dataset and --source, or --raster")
    proba = out.with_name(f"{out.stem}.proba{out.suffix}") if cfg.probabilities != "none" else None
    try:
        check_outputs_apart({"--out": out, "--metrics": metrics_out or out.with_suffix(".json"), "probabilities": proba},
                            {"--raster": raster, "source": src.path})
        for path in (out, metrics_out or out.with_suffix(".json"), proba):  # before any work: nothing half-written
            if path is not None:
                check_file_replaceable(path)
        model, info = load_trained(model_dir, device)
        footprints = test_footprints(tiles, src.name) if tiles else None
        normaliser = source_normaliser(params.normalise.mode, info, src, tiles)
        if params.normalise.adabn:
            adabn(model, info, normaliser, tiles, params.normalise.adabn_batch_size, device)
        metrics = predict_source(model, info, src, cfg, device, out, proba, footprints, labelled=raster is None,
                                 normaliser=normaliser, adabn_used=params.normalise.adabn, precision=precision)
    finally:
        src.close()
    metrics |= dict(model=info.model, dataset=info.dataset, supervision=info.supervision, seed=info.seed,
                    precision=precision)
    write_json(metrics_out or out.with_suffix(".json"), metrics)
    return metrics


def adabn(model, info: ModelInfo, source_normaliser_: Normaliser, tiles: Path | None, batch_size: int, device) -> None:
    """AdaBN exactly as `eqseg evaluate` does it: on the test tiles of the dataset's store, with the same
    normalisation of those tiles, so both commands score the same adapted model."""
    from eqseg.inference import adapt_to_store, normaliser_for
    from eqseg.tiling.store import TileStore

    if tiles is None:
        raise EqsegError("normalise.adabn: predicting needs the dataset's tile store (--tiles) to adapt on")
    store = TileStore(tiles)
    test_ids = store.ids("test")
    adapt_to_store(model, store, test_ids, normaliser_for(source_normaliser_.mode, info, store, test_ids), batch_size, device)


def source_normaliser(mode: str, info: ModelInfo, source, tiles: Path | None) -> Normaliser:
    """The recorded normalisation for one source: from the tile store when given (as `eqseg evaluate` does, so
    both commands score the same inputs), else from the model (train) or one pass over the source (dataset, image:
    a source predicted on its own is the whole dataset being scored)."""
    from eqseg.data import normalise as norm
    from eqseg.tiling.store import TileStore

    from eqseg.inference import stain_of

    stats = (info.band_mean, info.band_std)
    if info.stain and mode != "train":
        raise EqsegError(f"normalise.mode {mode}: the model was trained with stain normalisation; use mode train")
    if tiles is not None and mode != "train":
        store = TileStore(tiles)
        if mode == "image" and source.name in set(store.index.source):
            return norm.for_store(mode, stats, store, [source.name])
        if mode == "dataset":
            return norm.for_store(mode, stats, store)
    if mode == "train":
        return norm.Normaliser("train", *map(list, stats), stain=stain_of(info))
    S = int(info.tile_size)
    sums = np.zeros((3, source.bands))
    for r in grid.tile_origins(source.height, S, 0):
        for c in grid.tile_origins(source.width, S, 0):
            rd = source.read_tile(r, c, S, source.height, source.width)
            if rd.valid_fraction > 0:
                valid = rd.valid if rd.valid is not None else rd.mask != IGNORE
                sums += norm.pixel_sums(rd.image[None], valid[None])
    return norm.for_source_pixels(mode, stats, source.name, sums)


def predict_dataset(params: Params, model_dir: Path, dataset: str, tiles: Path | None, out_dir: Path) -> dict:
    """Predict every source worth a scene prediction (`prediction_sources`) into `out_dir`, atomically:
    `{source}.tif` (+ `.json` metrics) each, and `scenes.json` with the metrics pooled over every pixel once."""
    from eqseg.metrics import scores
    from eqseg.utils.atomic import atomic_dir

    check_replaceable(out_dir)
    names = prediction_sources(params, dataset)
    with atomic_dir(out_dir) as tmp:
        per_source = {name: predict(params, model_dir, tmp / f"{name}.tif", dataset, name, None, tiles) for name in names}
        pooled = {}
        for key in ("scene", "test"):
            cms = [np.asarray(m[key]["confusion"]) for m in per_source.values() if key in m]
            if cms:
                pooled[key] = scores(sum(cms), params.dataset(dataset).classes)
        objects = pool_objects([m["objects"] for m in per_source.values() if "objects" in m])
        if objects:
            pooled["objects"] = objects
        write_json(tmp / "scenes.json", {"sources": names, "pooled": pooled})
    log_scene_metrics(params, model_dir, pooled, out_dir / "scenes.json", dataset)
    return {"sources": names, "pooled": pooled}


def log_scene_metrics(params: Params, model_dir: Path, pooled: dict, scenes_json: Path, dataset: str) -> None:
    """The stitched-scene scores join the training's MLflow run (scene_* over every pixel once, stitched_test_*
    over the test tiles' footprints; on_<dataset>_ before them for another dataset than the model's)."""
    import json

    from eqseg import tracking

    run_file = model_dir / "run.json"
    config = model_dir / "config.json"
    if not run_file.is_file():
        return
    own = json.loads(config.read_text()).get("dataset") if config.is_file() else dataset
    on = "" if own == dataset else f"on_{dataset}_"
    metrics = {f"{on}scene_{k}": v for k, v in pooled.get("scene", {}).items()}
    metrics |= {f"{on}stitched_test_{k}": v for k, v in pooled.get("test", {}).items()}
    for cls, obj in pooled.get("objects", {}).items():
        metrics |= {f"{on}scene_{k}_{cls}": v for k, v in obj.items()}
    tracking.log_to_run(params.mlflow, json.loads(run_file.read_text())["run_id"], metrics, [scenes_json],
                        subdir="predict" if not on else f"predict_{on.rstrip('_')}")
