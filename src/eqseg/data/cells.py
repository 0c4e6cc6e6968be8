"""What one grid cell trains on: its train tiles (label budget, cap) and the labels folder of `eqseg weak` or
`eqseg distill`. Shared by training, the classical fits and the teacher that labels a student's tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eqseg.errors import EqsegError
from eqseg.tiling.store import TileStore


def select_train_ids(store: TileStore, max_tiles: int | None, seed: int, budget: int = 100) -> np.ndarray:
    """The train tiles of a cell: the label budget (whole percent) as a nested seeded subset (the 10 % tiles lie
    inside the 30 % tiles of the same seed), then the `train.max_train_tiles` cap."""
    ids = store.ids("train")
    if not len(ids):
        raise EqsegError(f"{store.path}: the dataset has no train tiles (a test-only dataset cannot train a model)")
    if budget < 100:
        from eqseg.stats import nested_budget_ids

        ids = np.asarray(nested_budget_ids(ids.tolist(), [budget / 100], seed)[budget / 100])
    if max_tiles is not None and max_tiles < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_tiles, replace=False))
    return ids


def load_labels(labels_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The output of `eqseg weak` or `eqseg distill`: labels (memory-mapped), the tile ids of its rows, the quality
    record."""
    for f in ("labels.npy", "ids.npy", "quality.json"):
        if not (labels_dir / f).is_file():
            raise EqsegError(f"{labels_dir}: missing {f}; run `eqseg weak` (or `eqseg distill` for +distill) first")
    return (np.load(labels_dir / "labels.npy", mmap_mode="r"), np.load(labels_dir / "ids.npy"),
            json.loads((labels_dir / "quality.json").read_text()))


def cell_train_ids(store: TileStore, label_ids: np.ndarray, distill: bool, max_tiles: int | None, seed: int,
                   budget: int) -> np.ndarray:
    """A cell's train tiles. A distilled student trains on every tile of its labels folder: `eqseg distill` chose
    them (the teacher's labelled tiles plus the unlabelled ones), so budget and cap are not applied twice."""
    if distill:
        return np.sort(np.asarray(label_ids, dtype=np.int64))
    return select_train_ids(store, max_tiles, seed, budget)


def check_labels_match(quality: dict, supervision: str, labels_dir: Path) -> None:
    """Refuse labels made for another supervision (e.g. the weak labels given to a +distill student)."""
    made_for = quality.get("supervision")
    if made_for is not None and made_for != supervision:
        hint = "; make them with `eqseg distill`" if supervision.endswith("+distill") else ""
        raise EqsegError(f"{labels_dir}: these labels are for supervision {made_for!r}, not {supervision!r}{hint}")
