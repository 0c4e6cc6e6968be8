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


def params_for(tmp: Path, folder: Path, mode: str, adabn: bool = False, **sections):
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
    for section, values in sections.items():  # e.g. evaluate={"batch_size": 4}
        p[section] |= values
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


def test_a_source_predicted_without_its_store_is_its_own_dataset(crops, tmp_path):
    """`eqseg predict` of one source without --tiles in mode dataset (the default): the source is the whole dataset
    being scored, so its inputs are normalised with its own statistics, as mode image does, and the record says so
    (mode dataset, the statistics used)."""
    import rasterio

    from eqseg.predict.run import predict

    tmp, _ = crops
    out = {}
    for mode in ("dataset", "image"):
        m = predict(params_for(tmp, tmp / "data", mode), tmp / "model", tmp_path / f"{mode}.tif", "crops", "image02")
        with rasterio.open(tmp_path / f"{mode}.tif") as ds:
            out[mode] = (ds.read(1), m)
    assert np.array_equal(out["dataset"][0], out["image"][0])
    rec, image_rec = out["dataset"][1]["inputs"], out["image"][1]["inputs"]
    assert rec["mode"] == "dataset" and image_rec["mode"] == "image"
    assert (rec["mean"], rec["std"]) == (image_rec["sources"]["image02"]["mean"], image_rec["sources"]["image02"]["std"])
    store = TileStore(tmp / "tiles")
    assert not np.allclose(rec["mean"], store.meta.band_mean)  # not the store's (or the model's) statistics


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


def test_adabn_is_one_setting_not_the_scoring_batch(crops, tmp_path):
    """AdaBN's statistics are averages of per-batch statistics, so the batch of its pass changes the adapted model:
    that batch is normalise.adabn_batch_size, the same in evaluate, the normalisation axis and predict-dataset; the
    scoring batch (evaluate.batch_size, a speed knob) changes no score."""
    from eqseg.evaluate.run import evaluate
    from eqseg.predict.run import predict_dataset

    tmp, _ = crops

    def scored(name: str, eval_batch: int, adabn_batch: int) -> tuple[np.ndarray, dict]:
        params = params_for(tmp, tmp / "data", "train", adabn=True, train={"precision": "fp32"},
                            evaluate={"batch_size": eval_batch, "normalise_modes": ["dataset+adabn"]},
                            normalise={"adabn_batch_size": adabn_batch})
        m = evaluate(params, tmp / "model", tmp / "tiles", tmp_path / name)
        return np.loadtxt(tmp_path / name / "confusion.csv", delimiter=",", dtype=np.int64), m

    cm_small, m_small = scored("small", eval_batch=3, adabn_batch=8)
    cm_large, m_large = scored("large", eval_batch=36, adabn_batch=8)
    assert np.array_equal(cm_small, cm_large)
    assert m_small["mode_dataset_adabn_miou_macro"] == pytest.approx(m_large["mode_dataset_adabn_miou_macro"], abs=1e-12)
    assert m_small["adabn_batch_size"] == 8
    cm_other, _ = scored("other", eval_batch=36, adabn_batch=2)  # the setting itself is real: another adapted model
    assert not np.array_equal(cm_other, cm_large)
    params = params_for(tmp, tmp / "data", "train", adabn=True, train={"precision": "fp32"},
                        evaluate={"batch_size": 5}, predict={"batch_size": 7}, normalise={"adabn_batch_size": 8})
    r = predict_dataset(params, tmp / "model", "crops", tmp / "tiles", tmp_path / "pred")
    cm_pred = sum(np.asarray(json.loads((tmp_path / "pred" / f"{s}.json").read_text())["test"]["confusion"])
                  for s in r["sources"])
    assert np.array_equal(cm_pred, cm_large)


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


# ------------------------------------------------------------------------- statistics against numpy brute force
class _Store:
    """The parts of a TileStore that normalise reads: images, index (tile_id, source), counted(ids), meta, path."""

    def __init__(self, images: np.ndarray, sources: list[str], counted: np.ndarray, order: np.ndarray | None = None):
        import pandas as pd
        from types import SimpleNamespace

        n = len(images)
        order = np.arange(n) if order is None else order  # index rows in any order
        self.images, self._counted, self.path = images, counted, Path("fake-store")
        self.index = pd.DataFrame({"tile_id": order, "source": [sources[i] for i in order]})
        self.meta = SimpleNamespace(band_mean=(1.5, 2.5), band_std=(3.5, 4.5))

    def counted(self, ids) -> np.ndarray:
        return self._counted[np.asarray(ids)]


def _moments(images: np.ndarray, mask: np.ndarray, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and population std (+ 1e-6) of the masked pixels on every step-th row and column."""
    x = images[..., ::step, ::step].astype(np.float64)
    m = mask[..., ::step, ::step]
    per_band = [x[:, b][m] for b in range(x.shape[1])]
    return np.array([v.mean() for v in per_band]), np.array([v.std() for v in per_band]) + 1e-6


def _random_store(seed: int = 0, n: int = 7, size: int = 6, dtype=np.uint16) -> _Store:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 4000, (n, 2, size, size)).astype(dtype)
    counted = rng.random((n, size, size)) < 0.7
    sources = ["b" if i % 3 else "a" for i in range(n)]
    return _Store(images, sources, counted, order=rng.permutation(n))


@pytest.mark.parametrize("step", [1, 2, 3])
def test_pixel_sums_of_several_tiles_against_numpy(step):
    rng = np.random.default_rng(step)
    images = rng.integers(0, 65535, (3, 2, 7, 5)).astype(np.uint16)
    valid = rng.random((3, 7, 5)) < 0.6
    x = images[..., ::step, ::step].astype(np.float64)
    v = valid[..., ::step, ::step]
    expected = np.array([[v.sum()] * 2, [x[:, b][v].sum() for b in range(2)], [(x[:, b][v] ** 2).sum() for b in range(2)]])
    assert np.array_equal(norm.pixel_sums(images, valid, step), expected)
    all_pixels = np.array([[x[:, 0].size] * 2, x.sum(axis=(0, 2, 3)), (x**2).sum(axis=(0, 2, 3))])
    assert np.array_equal(norm.pixel_sums(images, None, step), all_pixels)
    assert np.array_equal(norm.pixel_sums(images, np.zeros_like(valid), step), np.zeros((3, 2)))
    if step == 2:
        assert np.array_equal(norm.pixel_sums(images, valid), expected)  # the default step


def test_source_statistics_over_counted_pixels_of_each_source():
    store = _random_store()
    names = np.array(["b" if i % 3 else "a" for i in range(7)])
    for chunk in (2, 64):
        stats = norm.source_statistics(store, chunk=chunk)
        assert sorted(stats) == ["a", "b"]
        for name in ("a", "b"):
            mean, std = _moments(store.images[names == name], store._counted[names == name])
            assert np.allclose(stats[name][0], mean, rtol=1e-12) and np.allclose(stats[name][1], std, rtol=1e-12)
    assert sorted(norm.source_statistics(store, ["b"])) == ["b"]
    with pytest.raises(EqsegError, match=r"^fake-store: no tiles of source 'c' for normalise.mode image$"):
        norm.source_statistics(store, ["c"])


def test_for_store_in_each_mode_with_statistics_from_numpy():
    store = _random_store()
    raw = store.images[:3]
    train_stats = ((10.0, 20.0), (2.0, 4.0))
    n = norm.for_store("train", train_stats, store)
    assert (n.mode, n.mean, n.std, n.per_source, n.stain) == ("train", [10.0, 20.0], [2.0, 4.0], {}, None)
    assert np.allclose(n(raw), (raw - np.array([10.0, 20.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None])
    n = norm.for_store("dataset", train_stats, store)
    assert (n.mode, n.mean, n.std, n.per_source) == ("dataset", [1.5, 2.5], [3.5, 4.5], {})
    assert norm.store_statistics(store) == ([1.5, 2.5], [3.5, 4.5])  # lists, as meta.json has them
    n = norm.for_store("image", train_stats, store, ["a"])
    assert (n.mode, n.mean, n.std, sorted(n.per_source)) == ("image", [10.0, 20.0], [2.0, 4.0], ["a"])
    n = norm.for_store("image", train_stats, store)
    names = np.array(["b" if i % 3 else "a" for i in range(7)])
    mean, std = _moments(store.images[names == "b"], store._counted[names == "b"])
    assert np.allclose(n(raw, "b"), (raw - mean[:, None, None]) / std[:, None, None], rtol=1e-5)
    assert n.record["mode"] == "image" and sorted(n.record["sources"]) == ["a", "b"]
    assert np.allclose(n.record["sources"]["b"]["mean"], mean, rtol=1e-12)
    with pytest.raises(EqsegError, match=r"^normalise: no statistics for source 'nope' \(mode image\)$"):
        n(raw, "nope")
    with pytest.raises(EqsegError, match=r"^normalise.mode: 'stain' is not one of train, dataset, image$"):
        norm.for_store("stain", train_stats, store)


def test_for_store_with_a_stain_only_in_mode_train():
    store = _random_store()
    stain = lambda x: 4000 - np.asarray(x)  # noqa: E731 - any map of the raw tiles
    n = norm.for_store("train", ((10.0, 20.0), (2.0, 4.0)), store, stain=stain)
    assert n.stain is stain and n.mode == "train"
    raw = store.images[:2]
    assert np.allclose(n(raw), (4000.0 - raw - np.array([10.0, 20.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None])
    for mode in ("dataset", "image"):
        with pytest.raises(EqsegError, match=r"^normalise.stain needs normalise.mode train"):
            norm.for_store(mode, ((10.0, 20.0), (2.0, 4.0)), store, stain=stain)


def test_stained_statistics_of_the_first_256_tiles_by_id():
    """Up to `limit` (256) of the tiles, the lowest ids, after the stain map; counted pixels only."""
    rng = np.random.default_rng(3)
    n = 300
    images = rng.integers(0, 200, (n, 2, 4, 4)).astype(np.uint8)
    images[256:] = 250  # tiles past the limit would move every statistic
    counted = rng.random((n, 4, 4)) < 0.8
    store = _Store(images, ["s"] * n, counted)
    stain = lambda x: np.asarray(x) // 2 + 3  # noqa: E731
    ids = rng.permutation(n)
    mean, std = _moments(images[:256] // 2 + 3, counted[:256])
    got = norm.stained_statistics(store, ids, stain)
    assert np.allclose(got[0], mean, rtol=1e-12) and np.allclose(got[1], std, rtol=1e-12)
    mean, std = _moments(images[:10] // 2 + 3, counted[:10])
    got = norm.stained_statistics(store, ids, stain, limit=10, chunk=3)
    assert np.allclose(got[0], mean, rtol=1e-12) and np.allclose(got[1], std, rtol=1e-12)


def test_for_source_pixels_in_each_mode():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 255, (2, 3, 8, 8)).astype(np.uint8)
    valid = rng.random((2, 8, 8)) < 0.5
    sums = norm.pixel_sums(images, valid)
    train_stats = ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    n = norm.for_source_pixels("train", train_stats, "scene", sums)
    assert (n.mode, n.mean, n.std, n.per_source) == ("train", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], {})
    n = norm.for_source_pixels("image", train_stats, "scene", sums)
    assert (n.mode, n.mean, n.std, sorted(n.per_source)) == ("image", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], ["scene"])
    mean, std = _moments(images, valid)
    assert np.allclose(n.stats("scene")[0], mean, rtol=1e-12) and np.allclose(n.stats("scene")[1], std, rtol=1e-12)
    # a source predicted without its tile store is the whole dataset being scored: its own statistics
    n = norm.for_source_pixels("dataset", train_stats, "scene", sums)
    assert (n.mode, n.per_source) == ("dataset", {})
    assert np.allclose(n.mean, mean, rtol=1e-12) and np.allclose(n.std, std, rtol=1e-12)
    with pytest.raises(EqsegError, match=r"^normalise.mode: 'x' is not one of train, dataset, image$"):
        norm.for_source_pixels("x", train_stats, "scene", sums)


def test_normaliser_of_mode_image_uses_each_tiles_own_source():
    """Tiles of two sources interleaved in one batch, a single name for all, and the plain map (x - m) / s per band
    with float64 numpy as the reference."""
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 255, (5, 2, 3, 4)).astype(np.uint8)
    per_source = {"a": ([10.0, 20.0], [2.0, 5.0]), "b": ([100.0, 50.0], [8.0, 0.5])}
    n = norm.Normaliser("image", [0.0, 0.0], [1.0, 1.0], per_source=per_source)

    def ref(x, name):
        m, s = (np.array(v)[:, None, None] for v in per_source[name])
        return (x.astype(np.float64) - m) / s

    names = ["b", "a", "b", "b", "a"]
    out = n(raw, names)
    assert out.dtype == np.float32 and out.shape == raw.shape
    for k, name in enumerate(names):
        assert np.allclose(out[k], ref(raw[k], name), rtol=1e-6, atol=1e-5), k
    assert np.allclose(n(raw, "a"), ref(raw, "a"), rtol=1e-6, atol=1e-5)
    assert np.allclose(n(raw, tuple(names)), out)
    with pytest.raises(EqsegError, match=r"^normalise: no statistics for source None \(mode image\)$"):
        n(raw)
    stained = norm.Normaliser("image", [0.0, 0.0], [1.0, 1.0], per_source=per_source, stain=lambda x: 255 - x)
    assert np.allclose(stained(raw, names[::-1]), np.stack([ref(255 - raw[k], nm) for k, nm in enumerate(names[::-1])]),
                       rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_normalise_in_float32_of_any_input_dtype(dtype):
    """(x - mean) / std per band (float64 numpy reference), float32 out, from sequences of floats."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 250, (2, 3, 4, 5)).astype(dtype)
    mean, std = [3.0, 100.5, 250.25], [0.5, 7.0, 3.0]
    out = norm.normalise(x, mean, std)
    expected = (x.astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.allclose(out, expected, rtol=1e-6, atol=1e-5)
    assert norm.normalise(x, (3, 100, 250), (1, 2, 4)).dtype == np.float32  # integer statistics too
