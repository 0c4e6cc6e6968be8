"""`eqseg predict`: stitched maps keep the source's grid, equal per-tile predictions without overlap, have no seams
with overlap, count each pixel once in the scene metrics; slides give pyramidal maps; errors are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from shapely.geometry import box
from torch import nn

from eqseg.config import PredictConfig, parse_params
from eqseg.errors import EqsegError
from eqseg.evaluate.inference import save_model
from eqseg.evaluate.metrics import confusion
from eqseg.models import build
from eqseg.predict.run import predict, predict_source
from eqseg.predict.stitch import ramp
from eqseg.tiling.sources import GeoSource, load_vector_labels

SPACENET = Path(__file__).resolve().parents[1] / "data" / "spacenet_atlanta"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: one torch thread avoids oversubscription (much faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def info(bands: int, classes: int = 2, tile: int = 64, depth: int = 2, width: int = 4) -> dict:
    return dict(model="unet", options={"depth": depth, "width": width}, in_channels=bands, num_classes=classes,
                classes=[f"c{i}" for i in range(classes)], band_mean=[400.0] * bands, band_std=[150.0] * bands,
                tile_size=tile, dataset="t", supervision="full", seed=0)


def tiny_unet(bands: int, classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return build("unet", bands, classes, depth=2, width=4).eval()


class Constant(nn.Module):
    """The same logits everywhere, whatever the input: a blended map must be exactly these probabilities."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits)[None, :, None, None])

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, x.shape[2], x.shape[3])


def spacenet_source() -> GeoSource:
    raster = SPACENET / "sample_geotiff.tif"
    with rasterio.open(raster) as ds:
        crs, bounds = ds.crs, ds.bounds
    return GeoSource(raster, load_vector_labels(SPACENET / "geotiff_labels.geojson", raster, crs, bounds, None, None, 2))


def test_map_has_the_source_crs_transform_and_size(tmp_path):
    src = spacenet_source()
    m = predict_source(tiny_unet(1), info(1), src, PredictConfig(window=128, overlap=16), CPU, tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as out, rasterio.open(SPACENET / "sample_geotiff.tif") as ref:
        assert out.crs == ref.crs and out.transform == ref.transform and out.shape == ref.shape
        assert out.profile["tiled"] and out.profile["compress"] == "deflate" and out.nodata == 255
        pred = out.read(1)
    assert set(np.unique(pred)) <= {0, 1}
    # scene metrics: every labelled pixel counted once, the same confusion as from the whole arrays
    labels = src.read_tile(0, 0, 900, 900, 900).mask
    assert m["scene"]["confusion"] == confusion(pred, labels, 2).tolist() and m["scene"]["pixels"] == 900 * 900


def test_without_overlap_the_map_equals_per_tile_predictions(tmp_path):
    src, model, inf = spacenet_source(), tiny_unet(1), info(1)
    predict_source(model, inf, src, PredictConfig(window=128, overlap=0), CPU, tmp_path / "p.tif")
    expected = np.zeros((1024, 1024), np.uint8)
    for r in range(0, 900, 128):
        for c in range(0, 900, 128):
            x = (src.read_tile(r, c, 128, 900, 900).image.astype(np.float32) - 400) / 150
            with torch.no_grad():
                expected[r : r + 128, c : c + 128] = model(torch.from_numpy(x[None]))[0].argmax(0).numpy()
    with rasterio.open(tmp_path / "p.tif") as out:
        assert np.array_equal(out.read(1), expected[:900, :900])


@pytest.mark.parametrize("tta", [False, True])
def test_with_overlap_a_constant_model_gives_a_constant_map(tmp_path, tta):
    src = spacenet_source()
    logits = [0.3, 1.1, -0.4]
    cfg = PredictConfig(window=96, overlap=40, tta=tta, probabilities="float32", batch_size=5)
    predict_source(Constant(logits), info(1, 3), src, cfg, CPU, tmp_path / "p.tif", tmp_path / "p.proba.tif")
    expected = torch.softmax(torch.tensor(logits), 0).numpy()
    with rasterio.open(tmp_path / "p.tif") as cls, rasterio.open(tmp_path / "p.proba.tif") as prob:
        assert (cls.read(1) == 1).all()
        p = prob.read()
        assert prob.count == 3 and np.abs(p - expected[:, None, None]).max() < 1e-6


def test_blending_weights_ramp_up_and_never_vanish():
    w = ramp(64, 16)
    assert w.min() > 0 and (w[16:48] == 1).all() and np.all(np.diff(w[:16]) > 0) and np.allclose(w, w[::-1])
    assert (ramp(32, 0) == 1).all()


def test_pointwise_model_with_overlap_and_tta_has_no_seams(tmp_path):
    """A 1x1 convolution sees one pixel: blended over overlapping windows and the D4 group, the stitched
    probabilities must equal the model applied to the whole scene at once."""
    src = spacenet_source()
    torch.manual_seed(1)
    model = nn.Conv2d(1, 2, 1).eval()
    cfg = PredictConfig(window=128, overlap=48, tta=True, probabilities="float32")
    predict_source(model, info(1), src, cfg, CPU, tmp_path / "p.tif", tmp_path / "pp.tif")
    x = (src.read_tile(0, 0, 900, 900, 900).image.astype(np.float32) - 400) / 150
    with torch.no_grad():
        whole = torch.softmax(model(torch.from_numpy(x[None])), 1)[0].numpy()
    with rasterio.open(tmp_path / "pp.tif") as prob:
        assert np.abs(prob.read() - whole).max() < 1e-5


def test_all_nodata_scene_is_an_error_and_leaves_nothing(tmp_path):
    raster = tmp_path / "void.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=100, height=80, count=1, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 0, 1, 1)) as ds:
        ds.write(np.zeros((1, 80, 100), np.uint8))
    with pytest.raises(EqsegError, match="void.tif: nothing to predict .every pixel is nodata"):
        predict_source(tiny_unet(1), info(1), GeoSource(raster, []), PredictConfig(window=64, overlap=8), CPU, tmp_path / "o.tif")
    assert list(tmp_path.iterdir()) == [raster]


def test_slide_map_is_pyramidal_and_skips_background(tmp_path, root):
    from eqseg.slides.make import make_slide
    from eqseg.slides.source import MaskLabels, SlideSource

    placed = make_slide(root / "data/cpm15/images", root / "data/cpm15/masks", tmp_path / "s.tif", tmp_path / "m.tif", 0.25,
                        mask_suffix="_mask", include=("image08.png", "image14.png"), columns=1, margin=320)
    src = SlideSource(tmp_path / "s.tif", MaskLabels(tmp_path / "m.tif", "classes", None, 2), mpp=0.5)
    p = placed[0]  # "test tiles": the first real tile, in level-0 pixels (its sides are even: 596 x 798)
    test = [box(p.col, p.row, p.col + p.width, p.row + p.height)]
    m = predict_source(tiny_unet(3), info(3) | {"band_mean": [200.0] * 3, "band_std": [40.0] * 3}, src,
                       PredictConfig(window=64, overlap=8), CPU, tmp_path / "p.tif", test_footprints=test)
    assert m["timing"]["windows_skipped"] > 0 and m["scene"]["pixels"] == src.height * src.width
    assert m["test"]["pixels"] == (p.height // 2) * (p.width // 2)
    with rasterio.open(tmp_path / "p.tif") as out:
        assert out.shape == (src.height, src.width) and out.overviews(1)[:2] == [2, 4]
        assert out.transform.a == 2.0 and float(out.tags()["mpp"]) == 0.5
        assert out.tags()["TIFFTAG_RESOLUTIONUNIT"].startswith("3")
        corner = out.read(1, window=rasterio.windows.Window(0, 0, 64, 64))
    assert (corner == 0).all()  # blank margin: background without running the model


def test_predict_cli_writes_map_and_metrics_and_refuses_truncated_rasters(tmp_path, eqseg_cli, root):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_model(model_dir / "model.pt", tiny_unet(1), info(1))
    params = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    params.pop("slides")
    params["datasets"] = {"sn": {"kind": "geotiff", "classes": ["background", "building"],
                                 "scenes": [{"raster": str(SPACENET / "sample_geotiff.tif"), "labels": str(SPACENET / "geotiff_labels.geojson")}]}}
    params["grid"]["datasets"] = ["sn"]
    params["predict"] = {"window": 256, "overlap": 32, "probabilities": "uint8", "threads": 1}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "pred" / "sample_geotiff.tif"
    proc = eqseg_cli(["predict", "--params", "p.yaml", "--model-dir", "model", "--dataset", "sn", "--source", "sample_geotiff",
                      "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_suffix(".json").is_file() and (out.parent / "sample_geotiff.proba.tif").is_file()
    assert "scene mIoU" in proc.stdout
    cut = tmp_path / "cut.tif"
    cut.write_bytes((SPACENET / "sample_geotiff.tif").read_bytes()[:800_000])
    with pytest.raises(EqsegError, match="cut.tif.*truncated"):
        predict(parse_params(params), model_dir, tmp_path / "x.tif", raster=cut)
    assert not (tmp_path / "x.tif").exists()


def test_prediction_sources_are_the_test_sources_of_the_store(tmp_path, root):
    import shutil

    from eqseg.predict.run import prediction_sources
    from eqseg.tiling.store import TileStore, build_tile_store

    images, masks = tmp_path / "im", tmp_path / "mk"
    images.mkdir(), masks.mkdir()
    for n in ("01", "06", "07", "14", "15"):
        shutil.copy(root / f"data/cpm15/images/image{n}.png", images)
        shutil.copy(root / f"data/cpm15/masks/image{n}_mask.png", masks)
    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw.pop("slides")
    raw["datasets"] = {"cpm": {"kind": "pairs", "images": str(images), "masks": str(masks), "mask_suffix": "_mask",
                               "mask_mode": "instances", "classes": ["background", "nucleus"],
                               "split": {"by": "source", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 4}}}
    raw["grid"]["datasets"] = ["cpm"]
    raw["tile"]["size"] = 256
    params = parse_params(raw)
    build_tile_store("cpm", params.dataset("cpm"), params.tile, tmp_path / "tiles")
    index = TileStore(tmp_path / "tiles").index
    assert prediction_sources(params, "cpm") == sorted(set(index.loc[index.split == "test", "source"]))
