"""Normalisation is one recorded choice: each mode on real CPM-15 pixels, and evaluate == predict-dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from eqseg.config import parse_params
from eqseg.data import normalise as norm
from eqseg.errors import EqsegError
from eqseg.models import build, register
from eqseg.models.checkpoint import ModelInfo, save_model
from eqseg.tiling.store import TileStore, build_tile_store

CPM = Path(__file__).resolve().parents[1] / "data" / "cpm15"
TILE = 64


def crop_pairs(folder: Path, names: list[str], size: int, darken: dict[str, float] | None = None) -> None:
    """Real CPM-15 images cropped to size x size (a multiple of the tile, so windows and tiles coincide)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in names:
        img = np.asarray(Image.open(CPM / "images" / f"{name}.png").convert("RGB"))[:size, :size].astype(np.float64)
        img = np.clip(img * (darken or {}).get(name, 1.0), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"{name}.png")
        mask = np.asarray(Image.open(CPM / "masks" / f"{name}_mask.png"))[:size, :size]
        Image.fromarray(mask).save(folder / "masks" / f"{name}_mask.png")


def params_for(tmp: Path, folder: Path, mode: str, adabn: bool = False):
    p = yaml.safe_load((Path(__file__).parent / "smoke" / "params.yaml").read_text())
    p.pop("slides")
    p["grid"]["test_on"], p["compare"] = [], []  # smoke extras that name its datasets
    p["datasets"] = {"crops": dict(kind="pairs", images=str(folder / "images"), masks=str(folder / "masks"),
                                   mask_suffix="_mask", mask_mode="instances", classes=["background", "nucleus"],
                                   split={"by": "source", "fractions": {"train": 0.34, "val": 0.33, "test": 0.33}})}
    p["grid"]["datasets"] = ["crops"]
    p["tile"] = {"size": TILE, "overlap": 0, "min_valid_fraction": 0.0}
    p["predict"] = {"window": TILE, "overlap": 0, "batch_size": 8}
    p["normalise"] = {"mode": mode, "adabn": adabn}
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return parse_params(p)


def fit_a_little(model, store: TileStore, stats, lr: float, steps: int) -> None:
    """A few Adam steps on the store's train tiles: a model that finds nuclei, not all background."""
    ids = store.ids("train")
    x = torch.from_numpy(norm.normalise(store.images[ids], *stats))
    y = torch.from_numpy(np.asarray(store.masks[ids]).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        sel = torch.arange(step * 8, step * 8 + 8) % len(ids)
        loss = torch.nn.functional.cross_entropy(model(x[sel]), y[sel], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("norm")
    crop_pairs(tmp / "data", ["image01", "image02", "image03"], 384)
    params = params_for(tmp, tmp / "data", "train")
    meta = build_tile_store("crops", params.dataset("crops"), params.tile, tmp / "tiles")
    torch.manual_seed(0)
    model = build("unet", 3, 2, depth=2, width=8)
    info = ModelInfo(model="unet", options={"depth": 2, "width": 8}, in_channels=3, num_classes=2,
                     classes=["background", "nucleus"], band_mean=meta.band_mean, band_std=meta.band_std,
                     tile_size=TILE, dataset="crops", supervision="full", seed=0)
    fit_a_little(model, TileStore(tmp / "tiles"), (info.band_mean, info.band_std), lr=0.01, steps=40)
    (tmp / "model").mkdir()
    save_model(tmp / "model" / "model.pt", model, info)
    return tmp, meta


def test_normalise_is_the_plain_affine_map():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint16).reshape(2, 3, 4, 4)
    out = norm.normalise(x, [1.0, 2.0, 3.0], [2.0, 4.0, 8.0])
    assert out.dtype == np.float32
    assert np.allclose(out[:, 1], (x[:, 1] - 2.0) / 4.0)


def test_modes_on_real_cpm15_tiles(crops):
    tmp, meta = crops
    store = TileStore(tmp / "tiles")
    train_stats = ([150.0, 110.0, 160.0], [45.0, 50.0, 35.0])
    ids = np.sort(store.index.tile_id.to_numpy())[:4]
    raw = store.images[ids]
    # train: the model's statistics, whatever the data
    n = norm.for_store("train", train_stats, store)
    assert np.allclose(n(raw), (raw - np.array(train_stats[0])[:, None, None]) / np.array(train_stats[1])[:, None, None], atol=1e-5)
    # dataset: the store's own train-split statistics (meta.json)
    n = norm.for_store("dataset", train_stats, store)
    assert n.mean == meta.band_mean and n(raw).mean() == pytest.approx(
        ((raw - np.array(meta.band_mean)[:, None, None]) / np.array(meta.band_std)[:, None, None]).mean(), abs=1e-4)
    # image: each source's own statistics, close to mean 0 / std 1 over that source's valid pixels
    n = norm.for_store("image", train_stats, store)
    src = store.index.source.iloc[0]
    all_ids = np.sort(store.index.loc[store.index.source == src, "tile_id"].to_numpy())
    x = n(store.images[all_ids], src)
    assert np.abs(x.mean(axis=(0, 2, 3))).max() < 0.02 and np.abs(x.std(axis=(0, 2, 3)) - 1).max() < 0.02
    assert n.record["mode"] == "image" and src in n.record["sources"]
    with pytest.raises(EqsegError, match="no statistics for source"):
        n(raw, "nope")
    with pytest.raises(EqsegError, match="normalise.mode"):
        norm.for_store("stain", train_stats, store)


def test_image_mode_undoes_a_darker_stain_and_train_mode_does_not(tmp_path):
    """A copy of the same real tiles at 60 % brightness: per-image statistics map it back onto the original inputs
    (within 0.05 in normalised units: rounding to uint8 and clipping); the training statistics leave it far off."""
    crop_pairs(tmp_path / "a", ["image04", "image05", "image06"], 256)
    crop_pairs(tmp_path / "b", ["image04", "image05", "image06"], 256, darken={f"image0{i}": 0.6 for i in (4, 5, 6)})
    stores = []
    for name in ("a", "b"):
        params = params_for(tmp_path, tmp_path / name, "image")
        build_tile_store("crops", params.dataset("crops"), params.tile, tmp_path / f"tiles_{name}")
        stores.append(TileStore(tmp_path / f"tiles_{name}"))
    a, b = stores
    train_stats = (a.meta.band_mean, a.meta.band_std)
    ids = np.sort(a.index.loc[a.index.source == "image05", "tile_id"].to_numpy())
    xa = norm.for_store("image", train_stats, a)(a.images[ids], "image05")
    xb = norm.for_store("image", train_stats, b)(b.images[ids], "image05")
    assert np.abs(xa - xb).mean() < 0.05
    ta = norm.for_store("train", train_stats, a)(a.images[ids])
    tb = norm.for_store("train", train_stats, b)(b.images[ids])
    assert np.abs(ta - tb).mean() > 0.5


@pytest.mark.parametrize("mode, adabn", [("train", False), ("dataset", False), ("image", False), ("train", True)])
def test_evaluate_and_predict_dataset_agree(crops, mode, adabn, tmp_path):
    """Same model, same pixels, same recorded normalisation: the same confusion matrix from both commands."""
    from eqseg.evaluate.run import evaluate
    from eqseg.predict.run import predict_dataset

    tmp, _ = crops
    params = params_for(tmp, tmp / "data", mode, adabn)
    m = evaluate(params, tmp / "model", tmp / "tiles", tmp_path / "eval")
    r = predict_dataset(params, tmp / "model", "crops", tmp / "tiles", tmp_path / "pred")
    cm_eval = np.loadtxt(tmp_path / "eval" / "confusion.csv", delimiter=",", dtype=np.int64)
    scenes = json.loads((tmp_path / "pred" / "scenes.json").read_text())
    per_source = [json.loads((tmp_path / "pred" / f"{s}.json").read_text()) for s in r["sources"]]
    cm_pred = sum(np.asarray(p["test"]["confusion"]) for p in per_source)
    assert cm_eval.sum() == cm_pred.sum() > 0
    assert np.array_equal(cm_eval, cm_pred)
    assert (cm_eval.sum(axis=0) > 0).all(), "the model must predict both classes for the check to mean anything"
    assert m["miou_macro"] == pytest.approx(scenes["pooled"]["test"]["miou_macro"], abs=1e-12)
    assert m["normalise"] == mode and all(p["normalise"] == mode for p in per_source)
    assert m["adabn"] is adabn and all(p["adabn"] is adabn for p in per_source)


def _pixelwise(in_channels: int, num_classes: int, width: int = 8) -> torch.nn.Module:
    """A per-pixel model (1x1 convolutions, one batch norm): its output at a pixel does not depend on the window
    around it, so evaluate (each pixel from the tile owning it) and predict (each pixel blended from every
    overlapping window) must agree exactly."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                               torch.nn.Conv2d(width, num_classes, 1))


@pytest.fixture(scope="module")
def blended(tmp_path_factory):
    """Crops of 360 px (not a multiple of the 64-px tile: the last tiles are shifted back and overlap), a per-pixel
    model whose recorded statistics differ from the store's (so that modes train, dataset and image all give other
    inputs), and prediction windows that overlap and blend (window 64, overlap 16)."""
    from eqseg.models import _REGISTRY

    register("pixelwise_test")(_pixelwise)  # for this module only: the registry holds the pipeline's models
    tmp = tmp_path_factory.mktemp("blend")
    crop_pairs(tmp / "data", ["image01", "image02", "image03"], 360)
    params = params_for(tmp, tmp / "data", "train")
    meta = build_tile_store("crops", params.dataset("crops"), params.tile, tmp / "tiles")
    store = TileStore(tmp / "tiles")
    assert (store.index.col % TILE != 0).any()  # shifted edge tiles: the store's tiles overlap
    torch.manual_seed(0)
    model = build("pixelwise_test", 3, 2)
    stats = ([m + 25.0 for m in meta.band_mean], [s * 1.4 for s in meta.band_std])  # not the store's statistics
    info = ModelInfo(model="pixelwise_test", options={}, in_channels=3, num_classes=2, classes=["background", "nucleus"],
                     band_mean=stats[0], band_std=stats[1], tile_size=TILE, dataset="crops", supervision="full", seed=0)
    fit_a_little(model, store, stats, lr=0.05, steps=30)
    (tmp / "model").mkdir()
    save_model(tmp / "model" / "model.pt", model.eval(), info)
    yield tmp
    _REGISTRY.pop("pixelwise_test")


@pytest.mark.parametrize("mode, adabn", [("train", False), ("dataset", False), ("image", False), ("dataset", True)])
def test_evaluate_and_blended_predictions_agree_on_shifted_overlapping_tiles(blended, mode, adabn, tmp_path):
    """Tiles overlap (shifted edge tiles) and prediction windows overlap and blend; the model's statistics are not
    the dataset's: evaluate (each pixel once, from its owning tile) and predict-dataset (each pixel once, blended)
    still give one confusion matrix, whose total is the number of distinct labelled test pixels."""
    from eqseg.evaluate.run import evaluate
    from eqseg.predict.run import predict_dataset

    tmp = blended
    params = params_for(tmp, tmp / "data", mode, adabn)
    params = params.model_copy(update={"predict": params.predict.model_copy(update={"overlap": 16})})
    evaluate(params, tmp / "model", tmp / "tiles", tmp_path / "eval")
    r = predict_dataset(params, tmp / "model", "crops", tmp / "tiles", tmp_path / "pred")
    cm_eval = np.loadtxt(tmp_path / "eval" / "confusion.csv", delimiter=",", dtype=np.int64)
    per_source = [json.loads((tmp_path / "pred" / f"{s}.json").read_text()) for s in r["sources"]]
    cm_pred = sum(np.asarray(p["test"]["confusion"]) for p in per_source)
    assert cm_eval.sum() == 360 * 360 * len(r["sources"])  # every labelled test pixel once (no 255 in CPM-15)
    assert np.array_equal(cm_eval, cm_pred)
    assert (cm_eval.sum(axis=0) > 0).all(), "the model must predict both classes for the check to mean anything"
    if mode != "train" and not adabn:  # a command using the model's own statistics would score other inputs (with
        # AdaBN it would not: a batch norm re-estimated after a 1x1 convolution undoes any affine normalisation)
        evaluate(params_for(tmp, tmp / "data", "train", adabn), tmp / "model", tmp / "tiles", tmp_path / "eval-train")
        cm_train = np.loadtxt(tmp_path / "eval-train" / "confusion.csv", delimiter=",", dtype=np.int64)
        assert not np.array_equal(cm_train, cm_eval)


def test_adabn_takes_target_statistics_and_keeps_p4m_equivariant():
    from eqseg.inference import adapt_batchnorm
    from eqseg.models.groups import P4M, equivariance_errors

    torch.manual_seed(0)
    model = build("p4m_unet", 3, 2, depth=2, width=8).double()
    target = [torch.randn(4, 3, 32, 32, dtype=torch.float64) * 3 + 5 for _ in range(3)]
    first = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    before = first.running_mean.clone()
    assert adapt_batchnorm(model, target) == 12
    assert not model.training and not torch.allclose(first.running_mean, before)
    assert first.momentum == 0.1  # restored
    errors = equivariance_errors(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), P4M)
    assert max(errors.values()) < 1e-10, errors


def test_tta_control_changes_nothing_for_an_exactly_equivariant_model(crops, tmp_path):
    """evaluate.tta scores every model also under D4 test-time augmentation: a no-op for p4m_unet (equal up to
    rounding ties), a real change for a unet."""
    from eqseg.evaluate.run import evaluate

    tmp, meta = crops
    params = params_for(tmp, tmp / "data", "train")
    m = evaluate(params, tmp / "model", tmp / "tiles", tmp_path / "unet")
    assert m["tta_miou_macro"] != m["miou_macro"]
    torch.manual_seed(1)
    info = ModelInfo(model="p4m_unet", options={"depth": 2, "width": 16}, in_channels=3, num_classes=2,
                     classes=["background", "nucleus"], band_mean=meta.band_mean, band_std=meta.band_std,
                     tile_size=TILE)
    (tmp_path / "p4m").mkdir()
    save_model(tmp_path / "p4m" / "model.pt", build("p4m_unet", 3, 2, depth=2, width=16), info)
    m = evaluate(params, tmp_path / "p4m", tmp / "tiles", tmp_path / "p4m_eval")
    assert m["tta_miou_macro"] == pytest.approx(m["miou_macro"], abs=1e-4)
    assert m["equivariance_error_max"] < 1e-4


# --------------------------------------------------------------------------------------------------- stain
def _real_tile(name: str = "image01", size: int = 256) -> np.ndarray:
    return np.asarray(Image.open(CPM / "images" / f"{name}.png").convert("RGB"))[:size, :size].transpose(2, 0, 1)[None]


@pytest.mark.parametrize("method, self_tol, dark_tol", [("reinhard", 1.0, 1.5), ("macenko", 6.0, 35.0)])
def test_stain_normalisation_maps_the_reference_to_itself_and_a_darker_copy_back(method, self_tol, dark_tol):
    """Tolerances (mean absolute difference in grey levels, measured 0.38/0.55 for Reinhard, 4.3/30.7 for Macenko;
    the darkened copy starts 51.9 away): Reinhard matches Lab statistics exactly; Macenko re-mixes stain
    concentrations, and a uniform darkening is not a stain change, so it moves the copy only part of the way."""
    from eqseg.data.stain import StainNormaliser

    ref = _real_tile()
    dark = (ref * 0.7).astype(np.uint8)
    stain = StainNormaliser.fit(method, ref)
    assert np.abs(stain(ref).astype(float) - ref).mean() < self_tol
    start = np.abs(dark.astype(float) - ref).mean()
    assert start > 50 and np.abs(stain(dark).astype(float) - ref).mean() < dark_tol
    again = StainNormaliser(method, json.loads(json.dumps(stain.reference)))  # as stored in model.pt
    assert np.array_equal(again(dark), stain(dark))
    blank = np.full((1, 3, 64, 64), 235, np.uint8)  # glass: too little tissue to estimate a stain, left unchanged
    assert np.array_equal(stain(blank), blank)


def test_stain_needs_mode_train_and_rgb():
    from eqseg.data.stain import StainNormaliser

    with pytest.raises(EqsegError, match="3-band uint8"):
        StainNormaliser.fit("macenko", np.zeros((1, 1, 8, 8), np.uint8))
    raw = yaml.safe_load((Path(__file__).parent / "smoke" / "params.yaml").read_text())
    raw["normalise"] = {"mode": "image", "stain": "reinhard"}
    with pytest.raises(EqsegError, match="stain reinhard needs mode train"):
        parse_params(raw)


def test_evaluate_and_predict_agree_under_stain_normalisation(crops, tmp_path):
    from eqseg.data import normalise as norm_mod
    from eqseg.data.stain import StainNormaliser, reference_tiles
    from eqseg.evaluate.run import evaluate
    from eqseg.models.checkpoint import load_model
    from eqseg.predict.run import predict_dataset

    tmp, meta = crops
    store = TileStore(tmp / "tiles")
    stain = StainNormaliser.fit("reinhard", reference_tiles(store, store.ids("train")))
    model, info = load_model(tmp / "model" / "model.pt", torch.device("cpu"))
    mean, std = norm_mod.stained_statistics(store, store.ids("train"), stain)
    (tmp_path / "m").mkdir()
    save_model(tmp_path / "m" / "model.pt", model, info.model_copy(update={"stain": stain.record, "band_mean": mean, "band_std": std}))
    params = params_for(tmp, tmp / "data", "train")
    m = evaluate(params, tmp_path / "m", tmp / "tiles", tmp_path / "eval")
    predict_dataset(params, tmp_path / "m", "crops", tmp / "tiles", tmp_path / "pred")
    cm_eval = np.loadtxt(tmp_path / "eval" / "confusion.csv", delimiter=",", dtype=np.int64)
    per_source = [json.loads(f.read_text()) for f in (tmp_path / "pred").glob("image*.json")]
    assert np.array_equal(cm_eval, sum(np.asarray(p["test"]["confusion"]) for p in per_source))
    inputs = json.loads((tmp_path / "eval" / "inputs.json").read_text())
    assert inputs["normalise"]["stain"]["method"] == "reinhard" and m["miou_macro"] > 0.4
