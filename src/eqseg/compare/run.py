"""`eqseg compare`: what two trained models learned, on the same test tiles of one tile store.

Writes into `out`: `cka.csv` (layer x layer debiased linear CKA, rows = model A's layers, columns = B's),
`cka.png` (the heat map), `invariance.csv` (per model and layer, the relative change of its features under each
D4 element, group axis pooled), `invariance.png`, and `compare.json` (models, tiles, examples). The unet-vs-unet
(other seed) pair gives the noise floor that a unet-vs-p4m_unet difference must exceed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from eqseg.compare.cka import cka_matrix, default_layers, invariance_profile
from eqseg.config import Params
from eqseg.errors import EqsegError
from eqseg.inference import ClassicalNet, load_trained, normaliser_for, normalised_tiles
from eqseg.runtime import resolve_device
from eqseg.tiling.store import TileStore
from eqseg.utils import strictjson
from eqseg.utils.atomic import atomic_dir, check_replaceable, write_json


def test_batches(store: TileStore, ids: np.ndarray, info, mode: str, batch_size: int, device) -> list[torch.Tensor]:
    """The tiles in batches of nearly equal size, at most `batch_size` but as few batches as that allows: debiased
    CKA needs >= 4 examples a batch, which a remainder batch (58 tiles by 8: 8 x 7 + 2) would not have."""
    normaliser = normaliser_for(mode, info, store, ids)
    ids = np.sort(ids)
    return [torch.from_numpy(normalised_tiles(store, part, normaliser)).to(device)
            for part in np.array_split(ids, -(-len(ids) // batch_size))]


def compare(params: Params, model_a: Path, model_b: Path, tiles: Path, out: Path, max_tiles: int = 64,
            batch_size: int = 8) -> dict:
    check_replaceable(out)  # a folder eqseg did not write is refused before any work
    device = resolve_device(params.evaluate.device)
    store = TileStore(tiles)
    (net_a, info_a), (net_b, info_b) = load_trained(model_a, device), load_trained(model_b, device)
    for net, path in ((net_a, model_a), (net_b, model_b)):
        if isinstance(net, ClassicalNet):
            raise EqsegError(f"{path}: a classical baseline has no layers to compare")
    for info, path in ((info_a, model_a), (info_b, model_b)):
        info.check_inputs(store.meta.bands, store.meta.classes, str(tiles))
    ids = store.ids("test")
    if not len(ids):
        raise EqsegError(f"{tiles}: the test split has no tiles")
    ids = np.sort(np.random.default_rng(0).choice(ids, min(max_tiles, len(ids)), replace=False))
    if params.normalise.mode == "train" and (info_a.band_mean, info_a.band_std) != (info_b.band_mean, info_b.band_std):
        raise EqsegError(f"compare: {model_a} and {model_b} were trained with different band statistics; compare "
                         "models of one dataset, or set normalise.mode to dataset or image")
    x = test_batches(store, ids, info_a, params.normalise.mode, batch_size, device)  # the same inputs for both
    layers_a, layers_b = default_layers(net_a), default_layers(net_b)
    cka = cka_matrix(net_a, net_b, x, layers_a, layers_b)
    profiles = {"a": invariance_profile(net_a, x, layers_a), "b": invariance_profile(net_b, x, layers_b)}
    label_a = f"A: {info_a.model} {info_a.supervision} seed{info_a.seed}"
    label_b = f"B: {info_b.model} {info_b.supervision} seed{info_b.seed}"
    table = pd.DataFrame(cka["cka"], index=pd.Index(layers_a, name=label_a), columns=layers_b)
    rows = [dict(model=key, name=(info_a if key == "a" else info_b).model, layer=layer, **errors)
            for key, prof in profiles.items() for layer, errors in prof.items()]
    inv = pd.DataFrame(rows)
    constant = constant_layers(cka["cka"], layers_a, layers_b)
    with atomic_dir(out) as tmp:
        table.to_csv(tmp / "cka.csv", na_rep="NA")  # NA (pandas reads it as missing), not an empty field
        inv.to_csv(tmp / "invariance.csv", index=False, na_rep="NA")
        plot_cka(tmp / "cka.png", cka["cka"], layers_a, layers_b, label_a, label_b, constant)
        plot_invariance(tmp / "invariance.png", inv, label_a, label_b)
        summary = dict(model_a=str(model_a), model_b=str(model_b), tiles=str(tiles), examples=int(cka["examples"]),
                       normalise=params.normalise.mode, undefined_layers=constant,
                       **diagonal_mean(cka["cka"], layers_a, layers_b, constant))
        write_json(tmp / "compare.json", summary)
    return strictjson.finite(summary)


def constant_layers(matrix: np.ndarray, layers_a: list[str], layers_b: list[str]) -> dict[str, str]:
    """{"A: up.0": reason} for each layer whose CKA row (A) or column (B) is undefined: its features do not vary
    over the test tiles (a degenerate model), so no similarity to anything can be measured."""
    out = {}
    for side, names, undefined in (("A", layers_a, np.isnan(matrix).all(axis=1)), ("B", layers_b, np.isnan(matrix).all(axis=0))):
        for name, bad in zip(names, undefined):
            if bad:
                out[f"{side}: {name}"] = f"constant features in layer {name} of model {side} on the test tiles"
    return out


def diagonal_mean(matrix: np.ndarray, layers_a: list[str], layers_b: list[str], constant: dict[str, str]) -> dict:
    """The mean CKA of same-named layers, or null with the reason it is undefined."""
    if len(layers_a) != len(layers_b):
        return {"cka_diagonal_mean": None, "cka_diagonal_mean_undefined": "the models have different numbers of layers"}
    diag = np.diag(matrix)
    if np.isfinite(diag).all():
        return {"cka_diagonal_mean": float(diag.mean())}
    return {"cka_diagonal_mean": None, "cka_diagonal_mean_undefined": "; ".join(constant.values())
            or "CKA undefined on the diagonal"}


def plot_cka(path: Path, matrix: np.ndarray, layers_a: list[str], layers_b: list[str], label_a: str, label_b: str,
             undefined: dict[str, str] | None = None) -> None:
    """The heat map; an undefined cell reads "n/a", and the reasons are printed under the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.55 * len(layers_b) + 2.5, 0.5 * len(layers_a) + 2), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="magma", origin="lower")
    ax.set_facecolor("lightgrey")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            ax.text(j, i, f"{v:.2f}" if np.isfinite(v) else "n/a", ha="center", va="center", fontsize=7,
                    color="black" if not np.isfinite(v) or v > 0.6 else "white")
    ax.set_xticks(range(len(layers_b)), layers_b, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers_a)), layers_a, fontsize=8)
    ax.set_xlabel(f"layer of {label_b}")
    ax.set_ylabel(f"layer of {label_a}")
    ax.set_title("debiased linear CKA on test tiles", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    if undefined:  # below the axes, in room made for it
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.04 * len(undefined))
        fig.text(0.01, 0.01, "\n".join(f"n/a: {r}" for r in undefined.values()), fontsize=6, va="bottom")
    fig.savefig(path)
    plt.close(fig)


def plot_invariance(path: Path, inv: pd.DataFrame, label_a: str, label_b: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    elements = [c for c in inv.columns if c not in ("model", "name", "layer", "e")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110, sharey=True)
    for ax, key, label in zip(axes, ("a", "b"), (label_a, label_b)):
        sub = inv[inv.model == key]
        for el in elements:
            ax.plot(range(len(sub)), sub[el].to_numpy(), "o-", ms=3, label=el)
        ax.set_xticks(range(len(sub)), sub.layer, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
    axes[0].set_ylabel("relative change under g (group pooled)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
