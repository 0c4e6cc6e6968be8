"""Batched inference over tiles of a store, with the recorded normalisation: below train (validation), evaluate
and predict, so none of them imports another."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from eqseg.data import normalise as norm
from eqseg.data.normalise import Normaliser
from eqseg.labels import IGNORE
from eqseg.models.checkpoint import ModelInfo
from eqseg.runtime import autocast, memory_format, to_device
from eqseg.tiling.store import TileStore


class ClassicalNet(torch.nn.Module):
    """A fitted classical method (eqseg.classical) behind the network interface: one-hot scores of its class map,
    so evaluate, predict, test-time augmentation and the equivariance metric treat it as any model. Its inputs are
    the normalised tiles; the methods standardise each image themselves (normalise: image), which an affine
    normalisation before them does not change."""

    tile_multiple = 1
    prefers_contiguous = True

    def __init__(self, state: dict, num_classes: int):
        super().__init__()
        self.state, self.num_classes = state, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from eqseg import classical

        maps = np.stack([classical.predict(self.state, image) for image in x.detach().float().cpu().numpy()])
        onehot = torch.nn.functional.one_hot(torch.from_numpy(maps.astype(np.int64)), self.num_classes)
        return onehot.permute(0, 3, 1, 2).to(device=x.device, dtype=torch.float32)


def load_trained(model_dir, device) -> tuple[torch.nn.Module, ModelInfo]:
    """The model of a grid cell's model.pt: a network, or a fitted classical baseline behind ClassicalNet."""
    from pathlib import Path

    from eqseg.models.checkpoint import load_model, read_model_file

    path = Path(model_dir) / "model.pt"
    blob, info = read_model_file(path)
    if "classical" in blob:
        return ClassicalNet(blob["classical"], info.num_classes).to(device).eval(), info
    return load_model(path, device)


def stain_of(info: ModelInfo):
    """The model's stain normaliser (None without one)."""
    if not info.stain:
        return None
    from eqseg.data.stain import StainNormaliser

    return StainNormaliser(info.stain["method"], info.stain["reference"])


def normaliser_for(mode: str, info: ModelInfo, store: TileStore, ids: np.ndarray) -> norm.Normaliser:
    """The recorded normalisation of the tiles `ids` of `store` for a model (shared by evaluate and predict)."""
    sources = store.sources(ids, distinct=True) if mode == "image" else None
    return norm.for_store(mode, (info.band_mean, info.band_std), store, sources, stain=stain_of(info))


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """AdaBN (Li et al. 2016): replace every batch norm's running statistics by those of unlabelled target inputs
    (cumulative average over `batches`), the simplest unsupervised domain adaptation. Group batch norms keep their
    statistics shared over the group axis, so equivariant models stay equivariant. Returns the images seen."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every target image counts equally
    model.eval()
    for m in bns:
        m.train()
    seen = 0
    for x in batches:
        model(x)
        seen += len(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
    return seen


def adapt_to_store(model, store: TileStore, ids: np.ndarray, normaliser: Normaliser, batch_size: int, device) -> int:
    """AdaBN on the tiles `ids` of a store (their images only; labels are never read)."""
    ids = np.sort(np.asarray(ids))
    batches = (torch.from_numpy(normalised_tiles(store, ids[i : i + batch_size], normaliser)).to(device)
               for i in range(0, len(ids), batch_size))
    return adapt_batchnorm(model, batches)


def normalised_tiles(store: TileStore, ids: np.ndarray, normaliser: Normaliser) -> np.ndarray:
    ids = np.asarray(ids)
    return normaliser(store.images[ids], store.sources(ids) if normaliser.mode == "image" else None)


@torch.no_grad()
def tile_logits(
    model: torch.nn.Module, store: TileStore, ids: np.ndarray, batch_size: int, device: torch.device,
    normaliser: Normaliser, precision: str = "fp32", tta: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (sorted tile ids, float32 logits on `device`) batch by batch, computed at the resolved `precision`
    (eqseg.runtime); with `tta`, the log of the softmax averaged over the 8 D4 transforms (each mapped back), the
    test-time augmentation control."""
    from eqseg.models.groups import D4

    model.eval()
    layout = memory_format(model)
    ids = np.sort(np.asarray(ids))
    for start in range(0, len(ids), batch_size):
        sel = ids[start : start + batch_size]
        x = to_device(torch.from_numpy(normalised_tiles(store, sel, normaliser)), device, layout)
        if not tta:
            with autocast(device, precision):
                logits = model(x)
            yield sel, logits.float()
            continue
        total = 0
        for g in range(D4.order):
            with autocast(device, precision):
                logits = model(D4.transform(x, g).contiguous(memory_format=layout))
            total = total + D4.untransform(torch.softmax(logits.float(), dim=1), g)
        yield sel, torch.log(total / D4.order + 1e-12)


def predict_tiles(
    model: torch.nn.Module, store: TileStore, ids: np.ndarray, batch_size: int, device: torch.device,
    normaliser: Normaliser, precision: str = "fp32",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (sorted tile ids, predicted class maps) batch by batch."""
    for sel, logits in tile_logits(model, store, ids, batch_size, device, normaliser, precision):
        yield sel, logits.argmax(1).cpu().numpy().astype(np.uint8)


def confusion_on(model, store: TileStore, ids: np.ndarray, batch_size: int, device: torch.device, normaliser: Normaliser,
                 precision: str = "fp32", ranking=None, tta: bool = False, truth=None) -> np.ndarray:
    """Confusion matrix over the tiles `ids`, each labelled pixel once (TileStore.scored_masks: valid, owned,
    labelled); with `ranking` (a metrics.ranking.HistogramAP), also feed it the softmax probabilities for
    threshold-free average precision. `truth(sel)` gives other labels of the sorted tiles `sel` (e.g. a weak
    cell's own validation labels), 255 where not scored. The matrix is summed on the device and read back once."""
    n = store.meta.num_classes
    cm = torch.zeros(n * n + 1, dtype=torch.int64, device=device)  # the last bin takes the unscored pixels
    for sel, logits in tile_logits(model, store, ids, batch_size, device, normaliser, precision, tta):
        masks = store.scored_masks(sel) if truth is None else truth(sel)
        target = torch.from_numpy(np.ascontiguousarray(masks)).to(device, non_blocking=True).long()
        cell = torch.where(target == IGNORE, n * n, target * n + logits.argmax(1))
        cm += torch.bincount(cell.ravel(), minlength=n * n + 1)
        if ranking is not None:
            ranking.update(torch.softmax(logits, dim=1).cpu().numpy(), masks)
    return cm[: n * n].view(n, n).cpu().numpy()
