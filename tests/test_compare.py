"""`eqseg compare`: CKA heat map and invariance profiles of two saved models on a real tile store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import BIN, run
from eqseg.models import build
from eqseg.models.checkpoint import ModelInfo, save_model


def saved(folder, name: str, seed: int, meta: dict) -> None:
    torch.manual_seed(seed)
    folder.mkdir()
    info = ModelInfo(model=name, options={"depth": 2, "width": 8}, in_channels=3, num_classes=2, classes=meta["classes"],
                     band_mean=meta["band_mean"], band_std=meta["band_std"], tile_size=64, dataset="cpm15",
                     supervision="full", seed=seed)
    save_model(folder / "model.pt", build(name, 3, 2, depth=2, width=8), info)


def test_compare_writes_cka_and_invariance(small_setup, tmp_path):
    """18 test tiles in batches of 8 used to leave a batch of 2, too small for debiased CKA: the default run's
    comparison on the slides failed so."""
    import json

    tmp = small_setup
    meta = json.loads((tmp / "tiles" / "meta.json").read_text())
    saved(tmp_path / "unet", "unet", 0, meta)
    saved(tmp_path / "p4m", "p4m_unet", 0, meta)
    common = [str(BIN / "eqseg"), "compare", "--params", str(tmp / "params.yaml"), "--tiles", str(tmp / "tiles"), "--max-tiles", "18"]
    run([*common, "--model-a", str(tmp_path / "unet"), "--model-b", str(tmp_path / "p4m"), "--out", str(tmp_path / "c")], cwd=tmp)
    cka = pd.read_csv(tmp_path / "c" / "cka.csv", index_col=0)
    assert list(cka.columns) == ["down.0", "down.1", "down.2", "up.0", "up.1", "head"] and len(cka) == 6
    assert np.isfinite(cka.to_numpy()).all()
    inv = pd.read_csv(tmp_path / "c" / "invariance.csv")
    elements = ["r1", "r2", "r3", "m", "mr1", "mr2", "mr3"]
    assert inv.loc[inv.model == "b", elements].to_numpy().max() < 1e-4  # p4m: every layer, group pooled
    assert inv.loc[(inv.model == "a") & (inv.layer == "head"), elements].to_numpy().min() > 1e-2  # unet is not
    assert (tmp_path / "c" / "cka.png").stat().st_size > 10_000 and (tmp_path / "c" / "invariance.png").is_file()
    # a model against itself: CKA 1 on the diagonal
    run([*common, "--model-a", str(tmp_path / "unet"), "--model-b", str(tmp_path / "unet"), "--out", str(tmp_path / "self")], cwd=tmp)
    same = pd.read_csv(tmp_path / "self" / "cka.csv", index_col=0).to_numpy()
    assert np.allclose(np.diag(same), 1.0, atol=1e-6)


def test_a_constant_layer_is_null_with_its_reason_never_nan(small_setup, tmp_path):
    """A degenerate model (one block's features the same for every tile, as in a model that predicts one class)
    used to write "cka_diagonal_mean": NaN, which strict JSON parsers reject, and an empty column in cka.csv."""
    import json

    tmp = small_setup
    meta = json.loads((tmp / "tiles" / "meta.json").read_text())
    saved(tmp_path / "unet", "unet", 0, meta)
    net = build("unet", 3, 2, depth=2, width=8)
    with torch.no_grad():  # up.0's last conv and batch norm give a constant: the same features for every input
        net.up[0][3].weight.zero_()
        net.up[0][4].weight.zero_()
        net.up[0][4].bias.fill_(0.5)
    info = ModelInfo(model="unet", options={"depth": 2, "width": 8}, in_channels=3, num_classes=2, classes=meta["classes"],
                     band_mean=meta["band_mean"], band_std=meta["band_std"], tile_size=64, dataset="cpm15",
                     supervision="full", seed=1)
    (tmp_path / "dead").mkdir()
    save_model(tmp_path / "dead" / "model.pt", net, info)
    run([str(BIN / "eqseg"), "compare", "--params", str(tmp / "params.yaml"), "--tiles", str(tmp / "tiles"),
         "--max-tiles", "18", "--model-a", str(tmp_path / "unet"), "--model-b", str(tmp_path / "dead"),
         "--out", str(tmp_path / "c")], cwd=tmp)
    text = (tmp_path / "c" / "compare.json").read_text()
    summary = json.loads(text, parse_constant=lambda name: pytest.fail(f"compare.json holds {name}"))
    assert summary["cka_diagonal_mean"] is None
    assert summary["cka_diagonal_mean_undefined"] == "constant features in layer up.0 of model B on the test tiles"
    assert summary["undefined_layers"] == {"B: up.0": "constant features in layer up.0 of model B on the test tiles"}
    cka = pd.read_csv(tmp_path / "c" / "cka.csv", index_col=0)
    assert cka["up.0"].isna().all() and np.isfinite(cka.drop(columns="up.0").to_numpy()).all()
    assert ",," not in (tmp_path / "c" / "cka.csv").read_text()  # NA, not an empty field
