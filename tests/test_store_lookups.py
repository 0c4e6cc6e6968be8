"""The tile store's two lookups, each written once: a tile's source (TileStore.sources) and a tile's row in arrays
aligned to a list of tile ids (tile_rows: weak labels, pseudo-labels, validation labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eqseg.data.dataset import TileDataset
from eqseg.errors import EqsegError
from eqseg.tiling.store import TileStore, tile_rows


def test_tile_rows_finds_each_tile_in_any_order():
    row_ids = np.array([7, 3, 11, 0, 5])  # rows of weak labels: tiles in the order eqseg weak wrote them
    assert tile_rows(row_ids, [3, 0, 11, 7, 5, 3]).tolist() == [1, 3, 2, 0, 4, 1]
    assert tile_rows(row_ids, [4, 12, -1, 5]).tolist() == [-1, -1, -1, 4]  # absent tiles, also past either end
    assert tile_rows(row_ids, np.array([], np.int64)).tolist() == []
    assert tile_rows([], [1, 2]).tolist() == [-1, -1]
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000)[:300]
    asked = rng.integers(0, 1000, 500)
    rows = tile_rows(ids, asked)
    expected = {int(t): r for r, t in enumerate(ids)}
    assert rows.tolist() == [expected.get(int(t), -1) for t in asked]


def _store(index: pd.DataFrame) -> TileStore:
    store = object.__new__(TileStore)  # the index alone, no files
    store.__dict__["index"] = index
    return store


def test_sources_of_tiles_follow_their_ids_not_the_index_order():
    index = pd.DataFrame({"tile_id": [2, 0, 3, 1], "source": ["b", "a", "c", "a"]})
    store = _store(index)
    assert store.sources([3, 1, 2, 0, 3]) == ["c", "a", "b", "a", "c"]
    assert store.sources(np.array([3, 1, 0]), distinct=True) == ["a", "c"]
    assert store.sources([]) == [] and store.sources([], distinct=True) == []
    assert store.source_of[1] == "a"


class _Store:
    """The parts of a TileStore that TileDataset reads."""

    def __init__(self):
        self.images = np.zeros((6, 1, 4, 4), np.float32)
        self.masks = np.zeros((6, 4, 4), np.uint8)
        self.meta = type("Meta", (), {"band_mean": [0.0], "band_std": [1.0]})()


def test_dataset_reads_weak_labels_by_tile_id():
    labels = np.stack([np.full((4, 4), v, np.uint8) for v in (50, 30, 10)])  # rows hold tiles 5, 3, 1
    ds = TileDataset(_Store(), np.array([1, 5, 3]), labels=labels, label_ids=np.array([5, 3, 1]))
    assert [int(ds[i][1][0, 0]) for i in range(3)] == [10, 50, 30]
    with pytest.raises(EqsegError, match=r"do not cover train tiles \[2, 4\]"):
        TileDataset(_Store(), np.array([2, 3, 4]), labels=labels, label_ids=np.array([5, 3, 1]))
