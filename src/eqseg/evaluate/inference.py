"""Saved models and batched inference over tiles of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from eqseg.data.dataset import normalise
from eqseg.errors import EqsegError
from eqseg.evaluate.metrics import confusion
from eqseg.models import build
from eqseg.tiling.store import TileStore
from eqseg.train.runtime import autocast


def save_model(path: Path, model: torch.nn.Module, info: dict) -> None:
    torch.save({"info": info, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its saved name, options and weights."""
    if not Path(path).is_file():
        raise EqsegError(f"{path}: trained model not found; run `eqseg train` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise EqsegError(f"{path}: cannot load model ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    info = blob["info"]
    model = build(info["model"], info["in_channels"], info["num_classes"], **info["options"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), info


@torch.no_grad()
def predict_tiles(
    model: torch.nn.Module, store: TileStore, ids: np.ndarray, batch_size: int, device: torch.device, amp: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (tile ids, predicted class maps) batch by batch, in the order of ids."""
    model.eval()
    for start in range(0, len(ids), batch_size):
        sel = ids[start : start + batch_size]
        x = torch.from_numpy(normalise(store.images[np.sort(sel)], store.meta)).to(device)
        with autocast(device, amp):
            pred = model(x).argmax(1).cpu().numpy().astype(np.uint8)
        yield np.sort(sel), pred


def confusion_on(model, store: TileStore, ids: np.ndarray, batch_size: int, device: torch.device, amp: bool = True) -> np.ndarray:
    n = store.meta["num_classes"]
    cm = np.zeros((n, n), dtype=np.int64)
    for sel, pred in predict_tiles(model, store, ids, batch_size, device, amp):
        cm += confusion(pred, store.masks[sel], n)
    return cm
