"""Normalisation of raw pixels into network inputs: one function, one recorded choice (`normalise.mode`).

The same model scored 0.31 or 0.81 mIoU on the same pixels of another hospital depending only on which band
statistics its inputs were normalised with, so the choice is explicit, recorded in model.pt and every metrics file,
and applied by this module alone for training, evaluation and prediction:

- ``train``: the band statistics of the model's training split (they travel in model.pt);
- ``dataset``: the statistics of the dataset being scored (its store's train split, or all its tiles for a
  test-only store; a raster predicted without its store: its own), label-free: the simplest adaptation to data
  from elsewhere, and the default: in-domain it is the training statistics themselves, and on the study's 40x slide
  it gained +0.15 mIoU over train on average (docs/results/study_weak/modes_pooled.csv);
- ``image``: each source's own statistics (scene, slide or image; over the valid pixels of all its tiles, each
  pixel once).

Statistics are always taken over image-valid pixels (the tile store's valid.npy, each pixel once through its
owned.npy), never over labelled ones: labels must not shape the inputs of the pixels they score.

With `normalise.stain` (macenko, reinhard; H&E only) tiles are first mapped onto a stain reference fitted on the
training split (`eqseg.data.stain`), and the training statistics are those of the stain-normalised tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from eqseg.errors import EqsegError
from eqseg.tiling.store import band_moments as moments  # the tile store's own, so both agree

MODES = ("train", "dataset", "image")
Mode = Literal["train", "dataset", "image"]


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Raw tiles (N, C, H, W) of any dtype to float32 (x - mean) / std per band: the one normalisation in eqseg."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(std, dtype=np.float32))[:, None, None]
    return (np.asarray(images, dtype=np.float32) - mean) * inv_std


def pixel_sums(images: np.ndarray, valid: np.ndarray | None = None, step: int = 2) -> np.ndarray:
    """(3, C) float64 count, sum and sum of squares per band over valid pixels of (N, C, H, W) tiles, on every
    `step`-th row and column (plenty for statistics, and step² cheaper)."""
    x = np.asarray(images)[..., ::step, ::step]
    c = x.shape[1]
    x = np.moveaxis(x, 1, 0).reshape(c, -1).astype(np.float64)
    if valid is not None:
        keep = np.asarray(valid)[..., ::step, ::step].reshape(-1)
        x = x[:, keep]
    out = np.zeros((3, c))
    if x.shape[1]:
        out[0], out[1], out[2] = x.shape[1], x.sum(axis=1), np.einsum("ij,ij->i", x, x)
    return out


@dataclass
class Normaliser:
    """Turns raw tiles into inputs with the chosen statistics; `record` says which, for metrics files."""

    mode: str
    mean: list[float]
    std: list[float]
    per_source: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    stain: Any = None  # an eqseg.data.stain.StainNormaliser applied to the raw tiles first, or None

    def stats(self, source: str | None = None) -> tuple[list[float], list[float]]:
        if self.mode == "image":
            if source not in self.per_source:
                raise EqsegError(f"normalise: no statistics for source {source!r} (mode image)")
            return self.per_source[source]
        return self.mean, self.std

    def __call__(self, images: np.ndarray, sources: Sequence[str] | str | None = None) -> np.ndarray:
        """Normalise (N, C, H, W) tiles; with mode image, `sources` names each tile's source (or one for all)."""
        if self.stain is not None:
            images = self.stain(images)
        if self.mode != "image":
            return normalise(images, self.mean, self.std)
        names = [sources] * len(images) if sources is None or isinstance(sources, str) else list(sources)
        out = np.empty(np.shape(images), dtype=np.float32)
        for name in dict.fromkeys(names):
            sel = np.array([n == name for n in names])
            out[sel] = normalise(np.asarray(images)[sel], *self.stats(name))
        return out

    @property
    def record(self) -> dict:
        """What a metrics file says about the inputs the scores were computed on."""
        rec = {"mode": self.mode}
        if self.mode == "image":
            rec["sources"] = {k: {"mean": m, "std": s} for k, (m, s) in sorted(self.per_source.items())}
        else:
            rec |= {"mean": self.mean, "std": self.std}
        if self.stain is not None:
            rec["stain"] = self.stain.record
        return rec


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise EqsegError(f"normalise.mode: {mode!r} is not one of {', '.join(MODES)}")
    return mode


def source_statistics(store, sources: Sequence[str] | None = None, chunk: int = 64) -> dict[str, tuple[list, list]]:
    """Band statistics of each source over the valid (labelled or not, never padding/nodata) pixels of all its
    tiles in the store, each pixel once (owned), read in chunks (bounded memory)."""
    index = store.index
    out = {}
    for name in sources if sources is not None else sorted(set(index.source)):
        ids = np.sort(index.loc[index.source == name, "tile_id"].to_numpy())
        if not len(ids):
            raise EqsegError(f"{store.path}: no tiles of source {name!r} for normalise.mode image")
        sums = np.zeros((3, store.images.shape[1]))
        for start in range(0, len(ids), chunk):
            sel = ids[start : start + chunk]
            sums += pixel_sums(store.images[sel], store.counted(sel))
        out[name] = moments(sums)
    return out


def store_statistics(store) -> tuple[list[float], list[float]]:
    """The store's train-split statistics (meta.json); for a store without a train split, those of all its tiles
    (the tile store records which: `stats_from`)."""
    return list(store.meta.band_mean), list(store.meta.band_std)


def for_store(mode: str, train_stats: tuple[list, list], store, sources: Sequence[str] | None = None,
              stain=None) -> Normaliser:
    """The normaliser for tiles of `store` under `mode`; `train_stats` are the model's (or, when training, the
    store's own train split); `stain`, a fitted StainNormaliser, only goes with mode train."""
    check_mode(mode)
    if stain is not None and mode != "train":
        raise EqsegError("normalise.stain needs normalise.mode train (the statistics are those of the stained training tiles)")
    if mode == "train":
        return Normaliser("train", *map(list, train_stats), stain=stain)
    if mode == "dataset":
        return Normaliser("dataset", *store_statistics(store))
    return Normaliser("image", *map(list, train_stats), per_source=source_statistics(store, sources))


def stained_statistics(store, ids: Sequence[int], stain, limit: int = 256, chunk: int = 32) -> tuple[list, list]:
    """Band statistics of up to `limit` of the tiles `ids` after stain normalisation (the model's train stats)."""
    ids = np.sort(np.asarray(ids))[:limit]
    sums = np.zeros((3, store.images.shape[1]))
    for start in range(0, len(ids), chunk):
        sel = ids[start : start + chunk]
        sums += pixel_sums(stain(np.asarray(store.images[sel])), store.counted(sel))
    return moments(sums)


def for_source_pixels(mode: str, train_stats: tuple[list, list], name: str, sums: np.ndarray) -> Normaliser:
    """The normaliser of one source without a tile store (e.g. `eqseg predict --raster`; `sums` = pixel_sums over
    the source): train as ever; dataset and image both take the source's own statistics, since the source is the
    whole dataset being scored (the record says which statistics were used)."""
    check_mode(mode)
    if mode == "train":
        return Normaliser("train", *map(list, train_stats))
    if mode == "dataset":
        return Normaliser("dataset", *moments(sums))
    return Normaliser("image", *map(list, train_stats), per_source={name: moments(sums)})
