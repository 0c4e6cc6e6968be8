"""`eqseg predict`: stitched maps keep the source's grid, blend exactly the windows covering each pixel, have no
seams with overlap, count each pixel once in the scene metrics; edge windows are shifted inside the source, never
padded; no tissue and nodata are 255; maps have overviews and class names GDAL and QGIS read; a progress bar only
in a terminal; errors are one line."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from shapely.geometry import box
from torch import nn
from torch.nn import functional as F

from eqseg.config import PredictConfig, parse_params
from eqseg.errors import EqsegError
from eqseg.models.checkpoint import ModelInfo, save_model
from eqseg.metrics import confusion
from eqseg.models import build
from eqseg.predict.run import predict, predict_source
from eqseg.predict.stitch import RowBand, ramp
from eqseg.predict.writer import class_colours
from eqseg.tiling.geotiff import GeoSource
from eqseg.tiling.grid import window_origins
from eqseg.tiling.vector import load_vector_labels

SPACENET = Path(__file__).resolve().parents[1] / "data" / "spacenet_atlanta"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: one torch thread avoids oversubscription (much faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def info(bands: int, classes: int | list[str] = 2, tile: int = 64, depth: int = 2, width: int = 4, **extra) -> ModelInfo:
    names = classes if isinstance(classes, list) else [f"c{i}" for i in range(classes)]
    return ModelInfo(**(dict(model="unet", options={"depth": depth, "width": width}, in_channels=bands, num_classes=len(names),
                             classes=names, band_mean=[400.0] * bands, band_std=[150.0] * bands,
                             tile_size=tile, dataset="t", supervision="full", seed=0) | extra))


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


class PaddingDetector(nn.Module):
    """Class 1 within `reach` pixels of a pixel whose every band is raw 0 (`pad`: 0 after normalisation), i.e. of the
    zero padding of a window that reaches past its source; class 0 elsewhere. No real pixel of the bundled SpaceNet
    scene (min 54) or H&E tiles is 0 in every band, so inside a source it sees padding and nothing else."""

    def __init__(self, pad: float, reach: int = 15):
        super().__init__()
        self.pad, self.reach = pad, reach

    def forward(self, x):
        hit = ((x - self.pad).abs().amax(1, keepdim=True) < 1e-3).float()
        near = F.max_pool2d(hit, 2 * self.reach + 1, stride=1, padding=self.reach)
        return torch.cat([1 - near, near], 1) * 10


def softmax_window(model, src, r: int, c: int, size: int, mean: float = 400.0, std: float = 150.0) -> np.ndarray:
    """The model's probabilities (K, size, size) on one window of the source, normalised by hand."""
    x = (src.read_tile(r, c, size, src.height, src.width).image.astype(np.float32) - mean) / std
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x[None])), 1)[0].numpy()


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


def test_window_origins_end_exactly_at_the_edge():
    assert window_origins(900, 128, 16) == [0, 112, 224, 336, 448, 560, 672, 772]
    assert window_origins(900, 128, 0) == [0, 128, 256, 384, 512, 640, 768, 772]
    assert window_origins(896, 128, 0) == [0, 128, 256, 384, 512, 640, 768]  # a multiple: nothing shifted
    assert window_origins(128, 128, 16) == [0] and window_origins(100, 128, 16) == [0]  # smaller: one padded window
    for extent in range(129, 700, 37):
        for size, overlap in ((128, 0), (128, 16), (64, 31)):
            o = window_origins(extent, size, overlap)
            assert o[0] == 0 and o[-1] == extent - size and all(0 < b - a <= size - overlap for a, b in zip(o, o[1:]))
    with pytest.raises(EqsegError, match="larger than its overlap"):
        window_origins(900, 16, 16)


def test_without_overlap_each_pixel_is_the_mean_of_the_windows_covering_it(tmp_path):
    """overlap 0: every blending weight is 1, so the stitched probabilities are the plain mean of the windows that
    cover a pixel (one window, or two where the last window was shifted back inside the scene)."""
    src, model, inf = spacenet_source(), tiny_unet(1), info(1)
    cfg = PredictConfig(window=128, overlap=0, probabilities="float32")
    predict_source(model, inf, src, cfg, CPU, tmp_path / "p.tif", tmp_path / "pp.tif")
    acc, n = np.zeros((2, 900, 900)), np.zeros((900, 900))
    origins = [0, 128, 256, 384, 512, 640, 768, 772]
    for r in origins:
        for c in origins:
            acc[:, r : r + 128, c : c + 128] += softmax_window(model, src, r, c, 128)
            n[r : r + 128, c : c + 128] += 1
    with rasterio.open(tmp_path / "pp.tif") as prob, rasterio.open(tmp_path / "p.tif") as cls:
        assert np.abs(prob.read() - acc / n).max() < 1e-5
        assert np.array_equal(cls.read(1), (acc / n).argmax(0))


def test_edge_windows_are_shifted_inside_the_scene_never_padded(tmp_path):
    """The real 900x900 SpaceNet scene (not a multiple of the window): a model that paints class 1 next to zero
    padding (as models that saw padded edge tiles did: a false "building" strip along the right and bottom edges)
    must find no padding in any window, so no class 1 anywhere, edges included."""
    src, detector = spacenet_source(), PaddingDetector((0 - 400) / 150)
    # the detector is sensitive: the old last window (origin 784 = 7 * 112, padded from column 900 on) paints the
    # scene's last 15 columns
    padded = softmax_window(detector, src, 0, 784, 128).argmax(0)
    assert padded[:, 101:116].all() and not padded[:, :101].any()
    predict_source(detector, info(1), src, PredictConfig(window=128, overlap=16), CPU, tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as out:
        pred = out.read(1)
    assert pred.shape == (900, 900) and (pred == 0).all()


def test_edge_rows_and_columns_get_the_prediction_of_a_window_inside_the_scene(tmp_path):
    """A fixed conv net (its output depends on the whole window): the last 100 rows and columns, covered only by
    the last window of their row or column, equal the model on a window lying wholly inside the scene (origin
    772 = 900 - 128), exactly as an interior region equals the window predicting it."""
    src, model = spacenet_source(), tiny_unet(1)
    cfg = PredictConfig(window=128, overlap=16, probabilities="float32")
    predict_source(model, info(1), src, cfg, CPU, tmp_path / "p.tif", tmp_path / "pp.tif")
    with rasterio.open(tmp_path / "pp.tif") as prob:
        p = prob.read()
    corner, right, bottom = softmax_window(model, src, 772, 772, 128), softmax_window(model, src, 0, 772, 128), softmax_window(model, src, 772, 0, 128)
    assert np.abs(p[:, 800:, 800:] - corner[:, 28:, 28:]).max() < 1e-5
    assert np.abs(p[:, :112, 800:] - right[:, :112, 28:]).max() < 1e-5  # rows 0-111: row window 0 only
    assert np.abs(p[:, 800:, :112] - bottom[:, 28:, :112]).max() < 1e-5
    assert np.abs(p[:, :112, :112] - softmax_window(model, src, 0, 0, 128)[:, :112, :112]).max() < 1e-5  # interior alike
    # and the net does see padding: the old padded last window predicted the last 15 columns differently
    old = softmax_window(model, src, 0, 784, 128)
    assert np.abs(p[:, :112, 885:900] - old[:, :112, 101:116]).max() > 1e-3


def test_padding_and_nodata_never_take_part_in_the_blend():
    """Where a window's pixels are invalid (padding, nodata), the other windows' probabilities come out unchanged;
    where no valid window covers a pixel, 255."""
    band = RowBand(2, 8, 12, 2)
    pa, pb = np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32)
    pa[0], pb[1] = 1, 1  # window A says class 0, window B class 1
    va = np.ones((8, 8), bool)
    va[:, 4:] = False  # A: its right half is padding
    vb = np.ones((8, 8), bool)
    vb[:, 4:] = False  # B (at column 4): columns 8-11 are nodata
    labels = np.zeros((8, 8), np.uint8)
    band.add(0, pa, labels, va)
    band.add(4, pb, labels, vb)
    cls, p, _, missing = band.pop(8)
    assert (cls[:, :4] == 0).all() and (cls[:, 4:8] == 1).all() and (cls[:, 8:] == 255).all()
    assert (p[1, :, 4:8] == 1).all() and (p[:, :, 8:] == 0).all() and np.array_equal(missing, cls == 255)


def test_a_scene_smaller_than_the_window_is_predicted_from_one_padded_window(tmp_path):
    crop = tmp_path / "crop.tif"
    with rasterio.open(SPACENET / "sample_geotiff.tif") as ds:
        prof = ds.profile | dict(width=100, height=80, transform=ds.window_transform(rasterio.windows.Window(300, 200, 100, 80)),
                                 tiled=False, blockxsize=None, blockysize=None)
        prof = {k: v for k, v in prof.items() if v is not None}
        data = ds.read(window=rasterio.windows.Window(300, 200, 100, 80))
    with rasterio.open(crop, "w", **prof) as out:
        out.write(data)
    src, model = GeoSource(crop, []), tiny_unet(1)
    predict_source(model, info(1), src, PredictConfig(window=128, overlap=16, probabilities="float32"), CPU,
                   tmp_path / "p.tif", tmp_path / "pp.tif", labelled=False)
    with rasterio.open(tmp_path / "pp.tif") as prob:
        assert prob.shape == (80, 100) and np.abs(prob.read() - softmax_window(model, src, 0, 0, 128)[:, :80, :100]).max() < 1e-5
    src.close()


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
    m = predict_source(tiny_unet(3), info(3, band_mean=[200.0] * 3, band_std=[40.0] * 3), src,
                       PredictConfig(window=64, overlap=8), CPU, tmp_path / "p.tif", test_footprints=test)
    # scene metrics still count every pixel: those skipped as non-tissue as the background class (they are glass)
    assert m["timing"]["windows_skipped"] > 0 and m["scene"]["pixels"] == src.height * src.width
    assert m["test"]["pixels"] == (p.height // 2) * (p.width // 2)
    with rasterio.open(tmp_path / "p.tif") as out:
        assert out.shape == (src.height, src.width) and out.overviews(1)[:2] == [2, 4]
        assert out.transform.a == 2.0 and float(out.tags()["mpp"]) == 0.5
        assert out.tags()["TIFFTAG_RESOLUTIONUNIT"].startswith("3")
        corner = out.read(1, window=rasterio.windows.Window(0, 0, 64, 64))
        tissue = out.read(1, window=rasterio.windows.Window(p.col // 2, p.row // 2, p.width // 2, p.height // 2))
    assert (corner == 255).all()  # blank margin, no tissue: nodata, as the README promises (the model never ran)
    assert set(np.unique(tissue)) <= {0, 1}  # the tissue itself is predicted


def test_slide_edges_touching_tissue_are_predicted_from_windows_inside_the_slide(tmp_path, root):
    """A slide whose tissue fills it to the right and bottom edges, 298 x 399 px at the level read (not a multiple
    of the window): no window may be padded there either."""
    from eqseg.slides.make import make_slide
    from eqseg.slides.source import MaskLabels, SlideSource

    make_slide(root / "data/cpm15/images", root / "data/cpm15/masks", tmp_path / "s.tif", tmp_path / "m.tif", 0.25,
               mask_suffix="_mask", include=("image08.png",), columns=1, margin=0)
    src = SlideSource(tmp_path / "s.tif", MaskLabels(tmp_path / "m.tif", "classes", None, 2), mpp=0.5)
    assert (src.height, src.width) == (298, 399)
    inf = info(3, band_mean=[200.0] * 3, band_std=[40.0] * 3)
    detector = PaddingDetector((0 - 200) / 40)
    # the old last row of windows (origin 280 = 5 * 56, padded from slide row 298 on) painted the last 15 rows
    padded = softmax_window(detector, src, 280, 0, 64, 200.0, 40.0).argmax(0)
    assert padded[3:18].all() and not padded[:3].any()
    predict_source(detector, inf, src, PredictConfig(window=64, overlap=8), CPU, tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as out:
        pred = out.read(1)
    assert (pred != 1).all()  # no false class along any edge
    assert (pred[-1] == 0).any() and (pred[:, -1] == 0).any()  # the edges were predicted, not skipped
    src.close()


def test_maps_have_overviews_and_class_names_that_gdal_and_qgis_read(tmp_path):
    src = spacenet_source()
    inf = info(1, classes=["background", "building <&>"])
    cfg = PredictConfig(window=256, overlap=32, probabilities="uint8")
    predict_source(Constant([0.0, 1.0]), inf, src, cfg, CPU, tmp_path / "p.tif", tmp_path / "p.proba.tif")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.proba.tif", "p.qml", "p.tif", "p.tif.aux.xml"]
    with rasterio.open(tmp_path / "p.tif") as out, rasterio.open(tmp_path / "p.proba.tif") as prob:
        assert out.overviews(1) == [2, 4] and prob.overviews(1) == [2, 4]  # 900 px: down to about one block
        assert prob.descriptions == ("background", "building <&>")
        colormap = out.colormap(1)
    colours = class_colours(2)
    assert [colormap[k][:3] for k in range(2)] == colours
    # QGIS: the default style beside the map, a paletted renderer with each class's value, colour and name
    style = ET.parse(tmp_path / "p.qml").getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(e.get("value"), e.get("color"), e.get("label")) for e in renderer.iter("paletteEntry")]
    assert entries == [("0", "#%02x%02x%02x" % colours[0], "background"), ("1", "#%02x%02x%02x" % colours[1], "building <&>")]
    # GDAL itself (what gdalinfo prints): category names and a thematic raster attribute table from NAME.tif.aux.xml
    names, rat = gdal_categories_and_rat(tmp_path / "p.tif")
    assert names == ["background", "building <&>"]
    assert rat == [{"Value": "0", "Class": "background", "Red": str(colours[0][0]), "Green": str(colours[0][1]),
                    "Blue": str(colours[0][2]), "Alpha": "255"},
                   {"Value": "1", "Class": "building <&>", "Red": str(colours[1][0]), "Green": str(colours[1][1]),
                    "Blue": str(colours[1][2]), "Alpha": "255"}]
    src.close()


def _libgdal():
    """The GDAL library rasterio itself uses (its wheel bundles one), through ctypes: the same reader as gdalinfo."""
    bundled = sorted((Path(rasterio.__file__).parent.parent / "rasterio.libs").glob("libgdal*.so*"))
    name = str(bundled[0]) if bundled else ctypes.util.find_library("gdal")
    if not name:
        pytest.skip("no GDAL library to load through ctypes")
    lib = ctypes.CDLL(name)
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (("GDALOpen", vp, [cp, i]), ("GDALGetRasterBand", vp, [vp, i]), ("GDALClose", None, [vp]),
                          ("GDALGetRasterCategoryNames", ctypes.POINTER(cp), [vp]), ("GDALGetDefaultRAT", vp, [vp]),
                          ("GDALRATGetRowCount", i, [vp]), ("GDALRATGetColumnCount", i, [vp]),
                          ("GDALRATGetNameOfCol", cp, [vp, i]), ("GDALRATGetValueAsString", cp, [vp, i, i]),
                          ("GDALRATGetTableType", i, [vp])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    lib.GDALAllRegister()
    return lib


def gdal_categories_and_rat(path: Path) -> tuple[list[str], list[dict]]:
    lib = _libgdal()
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        band = lib.GDALGetRasterBand(ds, 1)
        rat = lib.GDALGetDefaultRAT(band)  # first: GTiff loads the PAM file lazily, on calls like this one
        assert rat, "no raster attribute table"
        raw, names = lib.GDALGetRasterCategoryNames(band), []
        while raw and raw[len(names)] is not None:
            names.append(raw[len(names)].decode())
        assert lib.GDALRATGetTableType(rat) == 0  # GRTT_THEMATIC
        cols = [lib.GDALRATGetNameOfCol(rat, c).decode() for c in range(lib.GDALRATGetColumnCount(rat))]
        rows = [{name: lib.GDALRATGetValueAsString(rat, r, c).decode() for c, name in enumerate(cols)}
                for r in range(lib.GDALRATGetRowCount(rat))]
    finally:
        lib.GDALClose(ds)
    return names, rows


def test_progress_bar_in_a_terminal_and_none_in_logs(tmp_path, monkeypatch, capfd):
    src, cfg = spacenet_source(), PredictConfig(window=256, overlap=32)
    predict_source(Constant([0.0, 1.0]), info(1), src, cfg, CPU, tmp_path / "a.tif")
    assert capfd.readouterr().err == ""  # stderr is not a terminal here (as in a log file): not a byte of progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    predict_source(Constant([0.0, 1.0]), info(1), src, cfg, CPU, tmp_path / "b.tif")
    shown = term.getvalue()
    assert "predict sample_geotiff" in shown and "/16" in shown and "window" in shown  # 4 x 4 windows of 256 px
    src.close()


def test_predict_cli_writes_map_and_metrics_and_refuses_truncated_rasters(tmp_path, eqseg_cli, root):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_model(model_dir / "model.pt", tiny_unet(1), info(1))
    params = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    params.pop("slides")
    params["grid"]["test_on"], params["compare"] = [], []  # smoke extras that name its datasets
    params["datasets"] = {"sn": {"kind": "geotiff", "classes": ["background", "building"],
                                 "scenes": [{"raster": str(SPACENET / "sample_geotiff.tif"), "labels": str(SPACENET / "geotiff_labels.geojson")}]}}
    params["grid"]["datasets"] = ["sn"]
    params["predict"] = {"window": 256, "overlap": 32, "probabilities": "uint8", "threads": 1}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "pred" / "sample_geotiff.tif"
    proc = eqseg_cli(["predict", "--params", "p.yaml", "--model-dir", "model", "--dataset", "sn", "--source", "sample_geotiff",
                      "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(f.name for f in out.parent.iterdir()) == [
        "sample_geotiff.json", "sample_geotiff.proba.tif", "sample_geotiff.qml", "sample_geotiff.tif", "sample_geotiff.tif.aux.xml"]
    assert "scene mIoU" in proc.stdout
    assert "window" not in proc.stderr  # no progress bar when stderr is not a terminal (a log file)
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
    raw["grid"]["test_on"], raw["compare"] = [], []  # smoke extras that name its datasets
    raw["datasets"] = {"cpm": {"kind": "pairs", "images": str(images), "masks": str(masks), "mask_suffix": "_mask",
                               "mask_mode": "instances", "classes": ["background", "nucleus"],
                               "split": {"by": "source", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 4}}}
    raw["grid"]["datasets"] = ["cpm"]
    raw["tile"]["size"] = 256
    params = parse_params(raw)
    build_tile_store("cpm", params.dataset("cpm"), params.tile, tmp_path / "tiles")
    index = TileStore(tmp_path / "tiles").index
    assert prediction_sources(params, "cpm") == sorted(set(index.loc[index.split == "test", "source"]))


# --------------------------------------------------------------------------------- mutation testing (bench/README.md)
def test_row_band_outputs_keep_their_documented_types():
    """Class map uint8, probabilities float32 (what the probability rasters hold), labels uint8, whatever the band
    accumulates in between."""
    band = RowBand(3, 4, 6, 1)
    probs = np.full((3, 4, 4), 1 / 3, np.float32)
    probs[1] += 0.1
    band.add(0, probs, np.full((4, 4), 7, np.uint8), None)
    band.add(2, probs, np.full((4, 4), 9, np.uint8), None)
    cls, p, labels, missing = band.pop(4)
    assert cls.dtype == np.uint8 and p.dtype == np.float32 and labels.dtype == np.uint8 and missing.dtype == bool
    assert (cls == 1).all() and (labels[:, :2] == 7).all() and (labels[:, 2:] == 9).all() and not missing.any()
    assert np.allclose(p[1], 1 / 3 + 0.1) and np.allclose(p.sum(axis=0), 1.1)


def test_row_band_narrower_than_a_window_keeps_the_part_inside():
    """A scene narrower than the window (its one window padded on the right): only the columns inside count."""
    band = RowBand(2, 4, 3, 0)
    probs = np.zeros((2, 4, 4), np.float32)
    probs[1, :, :3], probs[0, :, 3] = 1, 1  # the padded column says class 0: it must not appear
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    band.add(0, probs, labels, None)
    cls, p, lab, missing = band.pop(4)
    assert cls.shape == (4, 3) and (cls == 1).all() and np.array_equal(lab, labels[:, :3]) and not missing.any()
    band = RowBand(2, 4, 6, 0)  # and a second window at column 3 that reaches one column past the edge
    band.add(0, probs[::-1].copy(), labels, None)
    band.add(3, probs, labels, None)
    cls, _, lab, _ = band.pop(4)
    assert cls.shape == (4, 6) and (cls[:, :3] == 0).all() and (cls[:, 3:] == 1).all()
    assert np.array_equal(lab[:, 3:], labels[:, :3])


def test_ramp_of_a_one_pixel_overlap_halves_the_edge_pixels():
    """Raised cosine sampled at pixel centres: 0.5 - 0.5 cos(pi (i + 0.5) / overlap); for overlap 1 that is 0.5."""
    assert ramp(4, 1) == pytest.approx([0.5, 1, 1, 0.5])
    assert ramp(6, 2) == pytest.approx([0.5 - 0.5 * np.cos(np.pi / 4), 0.5 - 0.5 * np.cos(3 * np.pi / 4), 1, 1,
                                        0.5 - 0.5 * np.cos(3 * np.pi / 4), 0.5 - 0.5 * np.cos(np.pi / 4)])
