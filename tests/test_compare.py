"""`eqseg compare`: CKA heat map and invariance profiles of two saved models on a real tile store."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
