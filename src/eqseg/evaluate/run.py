"""`eqseg evaluate`: dense test labels, one confusion matrix over all test pixels, metrics and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from eqseg import tracking
from eqseg.config import Params
from eqseg.data import normalise as norm
from eqseg.errors import EqsegError
from eqseg.inference import adapt_to_store, confusion_on, normaliser_for, normalised_tiles, predict_tiles
from eqseg.metrics import IGNORE, scores
from eqseg.metrics.ranking import HistogramAP, dice_scores
from eqseg.inference import load_trained
from eqseg.models.groups import D4, equivariance_errors as group_errors
from eqseg.runtime import resolve_device, resolve_precision
from eqseg.tiling.meta import StoreMeta
from eqseg.tiling.store import TileStore
from eqseg.utils.atomic import atomic_dir, check_replaceable, write_json


def evaluate(params: Params, model_dir: Path, tiles: Path, out: Path) -> dict:
    check_replaceable(out)
    cfg = params.evaluate
    device = resolve_device(cfg.device)
    precision = resolve_precision(params.train.precision, device)
    store = TileStore(tiles)
    model, info = load_trained(model_dir, device)
    info.check_inputs(store.meta.bands, store.meta.classes, str(tiles))
    test_ids = store.ids("test")
    if len(test_ids) == 0:
        raise EqsegError(f"{tiles}: the test split has no tiles")
    normaliser = normaliser_for(params.normalise.mode, info, store, test_ids)
    if params.normalise.adabn:
        adapt_to_store(model, store, test_ids, normaliser, params.normalise.adabn_batch_size, device)
    ranking = HistogramAP(store.meta.num_classes)
    cm = confusion_on(model, store, test_ids, cfg.batch_size, device, normaliser, precision, ranking=ranking)
    preview = preview_ids(store, test_ids, cfg.n_preview)
    x = torch.from_numpy(normalised_tiles(store, preview, normaliser)).to(device)
    classes = store.meta.classes
    metrics = (scores(cm, classes) | dice_scores(cm, classes) | ranking.compute(classes)
               | {"n_test_tiles": int(len(test_ids)), "normalise": normaliser.mode, "adabn": params.normalise.adabn,
                  **({"adabn_batch_size": params.normalise.adabn_batch_size}
                     if params.normalise.adabn or any("adabn" in m for m in cfg.normalise_modes) else {}),
                  "select": info.select, "precision": precision, "trained_precision": info.precision}
               | equivariance_errors(model, x))
    if cfg.tta:  # the D4 test-time augmentation control, for every model
        cm_tta = confusion_on(model, store, test_ids, cfg.batch_size, device, normaliser, precision, tta=True)
        metrics |= {f"tta_{k}": v for k, v in scores(cm_tta, classes).items()}
    for label in cfg.normalise_modes:  # the normalisation axis: the same model, other inputs
        metrics |= mode_scores(label, model_dir, info, store, test_ids, cfg.batch_size, device, precision,
                               params.normalise.adabn_batch_size)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "inputs.json", {"normalise": normaliser.record, "model": info.model_dump(exclude={"band_mean", "band_std"})})
        np.savetxt(tmp / "confusion.csv", cm, fmt="%d", delimiter=",", header=",".join(store.meta.classes))
        plot_confusion(tmp / "confusion.png", cm, store.meta.classes)
        preds = np.concatenate([p for _, p in predict_tiles(model, store, preview, cfg.batch_size, device, normaliser, precision)])
        plot_predictions(tmp / "predictions.png", store, preview, preds)
    run_file = model_dir / "run.json"
    if run_file.is_file():  # add the test scores to the training's run, without reopening it
        run_id = json.loads(run_file.read_text())["run_id"]
        # scores on another dataset (grid.test_on) get their own names, so they never overwrite the in-domain ones
        scored = store.meta.dataset
        prefix = "test_" if scored == info.dataset else f"test_on_{scored}_"
        tracking.log_to_run(params.mlflow, run_id, {f"{prefix}{k}": v for k, v in metrics.items()},
                            [out / "metrics.json", out / "confusion.png", out / "predictions.png"],
                            subdir="eval" if prefix == "test_" else f"eval_on_{scored}",
                            tags={"normalise": normaliser.mode, "adabn": str(params.normalise.adabn).lower()})
    return metrics


def mode_key(label: str) -> str:
    """The metric prefix of a normalisation of the axis: "image+adabn" -> "mode_image_adabn_"."""
    return "mode_" + label.replace("+", "_") + "_"


def mode_scores(label: str, model_dir: Path, info, store: TileStore, test_ids: np.ndarray, batch_size: int,
                device: torch.device, precision: str, adabn_batch_size: int) -> dict:
    """Scores of the test tiles under one normalisation `label` (mode, "+adabn" for AdaBN on the test tiles), with a
    freshly loaded model (AdaBN rewrites batch-norm statistics). A model trained with a stain reference only makes
    sense under train: other modes give no scores (NaN), said in `mode_<label>_skipped`."""
    mode, _, adapt = label.partition("+")
    key = mode_key(label)
    if info.stain and mode != "train":
        return {f"{key}miou_macro": float("nan"), f"{key}skipped": 1}
    model, _ = load_trained(model_dir, device)
    normaliser = normaliser_for(mode, info, store, test_ids)
    if adapt:
        adapt_to_store(model, store, test_ids, normaliser, adabn_batch_size, device)
    cm = confusion_on(model, store, test_ids, batch_size, device, normaliser, precision)
    return {f"{key}{k}": v for k, v in scores(cm, store.meta.classes).items() if k != "pixels"}


def equivariance_errors(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """max|f(g·x) - g·f(x)| / max|f(x)| on the logits (eval mode) for each non-identity element of D4, named as in
    `models.groups` (r1..r3 rotations, m, mr1..mr3 reflections), their maximum over rotations, over reflections
    and over all: 0 up to rounding for p4m models, rotations only for p4, large for a plain CNN."""
    model.eval()
    errs = group_errors(model, x, D4)
    out = {f"equivariance_error_{name}": v for name, v in errs.items() if name != "e"}
    rot = [v for g, v in enumerate(errs.values()) if g and not D4.is_reflection(g)]
    ref = [v for g, v in enumerate(errs.values()) if D4.is_reflection(g)]
    return out | {"equivariance_error_rotations": max(rot), "equivariance_error_reflections": max(ref),
                  "equivariance_error_max": max(rot + ref)}


def preview_ids(store: TileStore, ids: np.ndarray, n: int) -> np.ndarray:
    """The test tiles with the most foreground, so that the preview shows objects rather than background."""
    fg = (np.asarray(store.masks[np.sort(ids)]) % IGNORE > 0).sum(axis=(1, 2))
    return np.sort(np.sort(ids)[np.argsort(-fg, kind="stable")[:n]])


def _palette(n: int) -> np.ndarray:
    import matplotlib

    base = matplotlib.colormaps["tab10"](np.arange(10))[:, :3]
    pal = np.zeros((256, 3))
    pal[:n] = base[np.arange(n) % 10]
    pal[0] = (0.08, 0.08, 0.08)
    pal[IGNORE] = (0.6, 0.6, 0.6)
    return pal


def _display(image: np.ndarray, meta: StoreMeta) -> np.ndarray:
    """A tile as an RGB float image in [0, 1], contrast-stretched per band (works for 1 band and for uint16)."""
    x = norm.normalise(image[None], meta.band_mean, meta.band_std)[0]
    x = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0)
    x = np.clip((x + 2.5) / 5.0, 0, 1)
    return x.transpose(1, 2, 0)


def plot_predictions(path: Path, store: TileStore, ids: np.ndarray, preds: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pal = _palette(store.meta.num_classes)
    fig, axes = plt.subplots(len(ids), 3, figsize=(6.6, 2.2 * len(ids)), dpi=100, squeeze=False)
    for row, (i, pred) in enumerate(zip(ids, preds)):
        truth = np.asarray(store.masks[i])
        shown = pred.copy()
        shown[truth == IGNORE] = IGNORE
        for ax, img, title in zip(axes[row], (_display(store.images[i], store.meta), pal[truth], pal[shown]), ("image", "truth", "prediction")):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5), dpi=110)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for r in range(len(classes)):
        for c in range(len(classes)):
            ax.text(c, r, f"{frac[r, c]:.2f}\n{cm[r, c]:,}", ha="center", va="center", fontsize=8,
                    color="white" if frac[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion (row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
