"""Which epoch a cell keeps (`train.select`), scored only with labels the cell's supervision has.

- ``own`` (default): the validation tiles labelled the way the cell's training tiles are (`eqseg weak` writes
  val_labels.npy with the same generator and seed, without expansion): a points cell is selected on points, a
  tags cell on image-level tags; a fully supervised cell on the dense masks, which are its own labels.
- ``dense``: the dense validation masks, an oracle a weak cell does not have (recorded as such).
- ``last``: the last epoch; also what any cell keeps when the dataset has no validation tiles.

Scores count each pixel once (valid, owned by the tile, labelled: TileStore.counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqseg.errors import EqsegError
from eqseg.inference import confusion_on, predict_tiles
from eqseg.labels import IGNORE
from eqseg.metrics import scores
from eqseg.tiling.store import TileStore, tile_rows

NAN = float("nan")


@dataclass
class Validation:
    """The validation of one cell: what `select` asked for, what it uses (`labels`: own, dense or none), the val
    tiles and their own labels (pixel labels (N, S, S) or a tag matrix (N, K), rows in the order of `ids`)."""

    select: str
    labels: str
    ids: np.ndarray
    own: np.ndarray | None = None
    min_pixels: int = 1

    def _rows(self, sel: np.ndarray) -> np.ndarray:
        """Rows of `own` for the tiles `sel` (own is in the order of the sorted ids)."""
        return tile_rows(self.ids, sel)

    @property
    def record(self) -> dict:
        """What metrics.json, model.pt and MLflow say about the selection."""
        how = {"own": "best validation score against the cell's own labels on the val tiles",
               "dense": "best validation score against the dense val masks (oracle)",
               "none": "last epoch"}[self.labels]
        if self.select != "last" and self.labels == "none":
            how += " (no validation tiles)"
        return {"select": self.select, "selected_by": how}

    @property
    def undefined(self) -> str:
        """Why a validation score is missing (written beside the null in config.json)."""
        if self.labels == "none":
            return f"no validation: train.select {self.select}" + ("" if self.select == "last" else ", no val tiles")
        return "no validation score: the val tiles hold no pixels or tags of these labels"

    def score(self, net, store: TileStore, batch_size: int, device, normaliser, precision: str) -> dict:
        """{val_score, val_miou, val_fwiou} of the current weights; NaN where not defined (no validation, or
        tags: val_score is then the mean over classes of the Jaccard index of predicted vs given tags)."""
        empty = {"val_score": NAN, "val_miou": NAN, "val_fwiou": NAN}
        if self.labels == "none":
            return empty
        if self.own is not None and self.own.ndim == 2:
            return empty | {"val_score": self._tag_score(net, store, batch_size, device, normaliser, precision)}
        truth = None
        if self.own is not None:

            def truth(sel):
                return np.where(store.counted(sel), self.own[self._rows(sel)], np.uint8(IGNORE))

        cm = confusion_on(net, store, self.ids, batch_size, device, normaliser, precision, truth=truth)
        s = scores(cm, store.meta.classes)
        return {"val_score": s["miou_macro"], "val_miou": s["miou_macro"], "val_fwiou": s["fwiou"]}

    def _tag_score(self, net, store, batch_size, device, normaliser, precision) -> float:
        """Mean over classes of the Jaccard index between the tiles a class is predicted in (on at least
        min_pixels counted pixels) and the tiles tagged with it."""
        k = self.own.shape[1]
        inter, union = np.zeros(k), np.zeros(k)
        for sel, pred in predict_tiles(net, store, self.ids, batch_size, device, normaliser, precision):
            for p, c, tagged in zip(pred, store.counted(sel), self.own[self._rows(sel)]):
                present = np.bincount(p[c], minlength=k)[:k] >= self.min_pixels
                given = tagged.astype(bool)
                inter += present & given
                union += present | given
        return float(np.mean(inter[union > 0] / union[union > 0])) if (union > 0).any() else NAN


def undefined_reasons(validation: Validation) -> dict[str, str]:
    """Reasons for the summary's validation scores where they are undefined (eqseg.utils.strictjson)."""
    return dict.fromkeys(("best_val_score", "best_val_miou", "best_val_fwiou", "val_score", "val_miou"),
                         validation.undefined)


def validation_for(select: str, store: TileStore, labels_dir: Path, min_pixels: int = 1) -> Validation:
    """The validation of a cell trained on the labels in `labels_dir` (an `eqseg weak` or `eqseg distill` folder)."""
    ids = np.sort(store.ids("val"))
    if select == "last" or not len(ids):
        return Validation(select, "none", ids)
    if select == "dense":
        return Validation(select, "dense", ids)
    files = [labels_dir / "val_labels.npy", labels_dir / "val_ids.npy"]
    if not all(f.is_file() for f in files):
        raise EqsegError(f"{labels_dir}: no val_labels.npy for train.select own (labels of an earlier eqseg); "
                         "re-run `eqseg weak`, or set train.select: dense or last")
    own, own_ids = np.load(files[0], mmap_mode="r"), np.load(files[1])
    if not np.array_equal(np.sort(own_ids), ids):
        raise EqsegError(f"{labels_dir}: val_ids.npy does not match the val tiles of {store.path}; re-run `eqseg weak`")
    order = np.argsort(own_ids)
    return Validation(select, "own", ids, np.asarray(own)[order], min_pixels)


def selected_epoch(history: list[dict], validation: Validation) -> dict:
    """The history row whose weights the cell keeps: the first best val_score, or the last epoch without one."""
    if validation.labels == "none":
        return history[-1]
    scored = [r for r in history if np.isfinite(r["val_score"])]
    return max(scored, key=lambda r: r["val_score"]) if scored else history[-1]
