"""GeoTIFF scenes labelled by a raster class mask (`Scene{raster, mask}`), as Inria, LandCover.ai and the
Massachusetts buildings ship their labels: read directly on the scene's grid, resampled with nearest neighbour from
another CRS and resolution (checked against an independent pixel-centre lookup with pyproj, not our code), nodata
and pixels outside the mask as no label, the bad inputs refused in one line, and the SpaceNet scene's solaris mask
giving the labels of its vector footprints.

The land-cover truth is the New Brunswick clip's gpkg rasterised onto the clip's grid (6 classes, 0 included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import yaml
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from scipy import ndimage as ndi

from eqseg.config import parse_params
from eqseg.errors import EqsegError
from eqseg.tiling import raster_mask
from eqseg.tiling.registry import open_sources
from eqseg.tiling.store import build_tile_store

ROOT = Path(__file__).resolve().parents[1]
NB_RASTER = ROOT / "data" / "new_brunswick" / "23322E759967N_clipped_1m_2of2.tif"
NB_LABELS = ROOT / "data" / "new_brunswick" / "BakerLake_2017_clipped.gpkg"
NB_IDS = {"Vegetation": 1, "Hydro": 2, "Road": 3, "Building": 4, "Train": 5}
CLASSES = ["background", "vegetation", "hydro", "road", "building", "railway"]
SPACENET = ROOT / "data" / "spacenet_atlanta"
TILE = 128
IGNORE = 255


def params_for(entry: dict, name: str = "scenes"):
    p = yaml.safe_load((ROOT / "tests" / "smoke" / "params.yaml").read_text())
    p.pop("slides")
    p["grid"]["test_on"], p["compare"] = [], []
    p["datasets"] = {name: entry}
    p["grid"]["datasets"] = [name]
    p["tile"] = {"size": TILE, "overlap": 0, "min_valid_fraction": 0.05}
    return parse_params(p, "test params")


def entry(mask: Path, raster: Path = NB_RASTER, classes=CLASSES, **extra) -> dict:
    return {"kind": "geotiff", "scenes": [{"raster": str(raster), "mask": str(mask)}], "classes": classes,
            "split": {"by": "source", "fractions": {"test": 1.0}, "seed": 0}} | extra


def scene_labels(entry: dict, resampled: bool | None = None) -> np.ndarray:
    """The labels of the whole (first) scene, read through the tiling source as one tile (and whether the mask was
    resampled, when `resampled` says which way to expect)."""
    (src,) = open_sources(params_for(entry).dataset("scenes"))
    try:
        if resampled is not None:
            assert src.mask.resampled == resampled
        size = max(src.height, src.width)
        return src.read_tile(0, 0, size, src.height, src.width).mask[: src.height, : src.width].copy()
    finally:
        src.close()


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, dict]:
    """Land-cover classes of the New Brunswick clip on its own grid, and its profile."""
    gdf = pyogrio.read_dataframe(NB_LABELS)
    with rasterio.open(NB_RASTER) as ds:
        assert gdf.crs == ds.crs
        profile = dict(driver="GTiff", height=ds.height, width=ds.width, count=1, dtype="uint8", crs=ds.crs,
                       transform=ds.transform)
        shapes = list(zip(gdf.geometry, (NB_IDS[n] for n in gdf["Niveau_2"])))
        labels = rasterio.features.rasterize(shapes, out_shape=ds.shape, transform=ds.transform, fill=0, dtype=np.uint8)
    assert len(np.unique(labels)) >= 4  # real land cover: several classes, 0 among them
    return labels, profile


def write(path: Path, data: np.ndarray, **profile) -> Path:
    data = data[None] if data.ndim == 2 else data
    prof = dict(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype) | profile
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return path


def reprojected(truth, path: Path, crs: str = "EPSG:32619", resolution: float = 0.4, nodata=None) -> Path:
    """The truth warped (nearest neighbour) to another CRS and resolution by rasterio, as a mask file."""
    labels, profile = truth
    left, bottom, right, top = rasterio.transform.array_bounds(profile["height"], profile["width"], profile["transform"])
    transform, width, height = rasterio.warp.calculate_default_transform(
        profile["crs"], crs, profile["width"], profile["height"], left, bottom, right, top, resolution=resolution)
    out = np.full((height, width), IGNORE if nodata is None else nodata, dtype=np.uint8)
    rasterio.warp.reproject(labels, out, src_transform=profile["transform"], src_crs=profile["crs"], dst_transform=transform,
                            dst_crs=crs, resampling=Resampling.nearest, dst_nodata=IGNORE if nodata is None else nodata)
    return write(path, out, crs=crs, transform=transform, nodata=nodata)


def nearest_lookup(scene_profile: dict, mask_path: Path) -> np.ndarray:
    """Independent nearest neighbour: every scene pixel centre transformed into the mask's CRS with pyproj, turned
    into a mask pixel with the inverse geotransform and floored, the mask indexed there (255 outside or at nodata)."""
    h, w, tf = scene_profile["height"], scene_profile["width"], scene_profile["transform"]
    rows, cols = np.mgrid[0:h, 0:w]
    xs, ys = rasterio.transform.xy(tf, rows.ravel(), cols.ravel(), offset="center")
    with rasterio.open(mask_path) as ds:
        mask, mtf, nodata = ds.read(1), ds.transform, ds.nodata
        mx, my = Transformer.from_crs(scene_profile["crs"], ds.crs, always_xy=True).transform(np.asarray(xs), np.asarray(ys))
    mc, mr = ~mtf * (mx, my)
    mr, mc = np.floor(mr).astype(int), np.floor(mc).astype(int)
    inside = (mr >= 0) & (mr < mask.shape[0]) & (mc >= 0) & (mc < mask.shape[1])
    out = np.full(h * w, IGNORE, dtype=np.uint8)
    out[inside] = mask[mr[inside], mc[inside]]
    if nodata is not None:
        out[inside & (out == nodata)] = IGNORE
    return out.reshape(h, w)


def away_from_edges(labels: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels at least `margin` pixels (chessboard) from any class edge."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return ~ndi.binary_dilation(edge, iterations=margin, structure=np.ones((3, 3), bool))


# ------------------------------------------------------------------------------------------------------- same grid
def test_mask_on_the_scene_grid_gives_exactly_its_labels(truth, tmp_path, monkeypatch):
    labels, profile = truth
    mask = write(tmp_path / "mask.tif", labels, crs=profile["crs"], transform=profile["transform"], tiled=True,
                 blockxsize=64, blockysize=64)
    assert np.array_equal(scene_labels(entry(mask), resampled=False), labels)
    monkeypatch.setattr(raster_mask, "CHUNK_PIXELS", 1000)  # a large scene: windows converted a few rows at a time
    params = params_for(entry(mask))
    build_tile_store("scenes", params.dataset("scenes"), params.tile, tmp_path / "store")
    import geopandas as gpd

    index, masks = gpd.read_parquet(tmp_path / "store" / "index.parquet"), np.load(tmp_path / "store" / "masks.npy")
    covered = np.zeros(labels.shape, dtype=int)
    for t in index.itertuples():
        part = labels[t.row : t.row + TILE, t.col : t.col + TILE]
        assert np.array_equal(masks[t.tile_id][: part.shape[0], : part.shape[1]], part)
        covered[t.row : t.row + TILE, t.col : t.col + TILE] += 1
    assert (covered >= 1).all()


def test_mask_values_map_raw_values_and_unmapped_become_no_label(truth, tmp_path):
    labels, profile = truth
    raw = (labels.astype(np.uint16) * 1000 + 7)  # e.g. a 16-bit product's codes
    mask = write(tmp_path / "codes.tif", raw, crs=profile["crs"], transform=profile["transform"])
    mapping = {c * 1000 + 7: c for c in range(len(CLASSES)) if c != 3}  # roads left out: no label
    got = scene_labels(entry(mask, mask_values=mapping))
    assert np.array_equal(got, np.where(labels == 3, IGNORE, labels))


def test_unreferenced_mask_of_the_scene_shape_is_read_pixel_for_pixel(truth, tmp_path):
    labels, _ = truth
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        mask = write(tmp_path / "bare.tif", labels)  # no CRS, no geotransform: as solaris writes masks
    assert np.array_equal(scene_labels(entry(mask), resampled=False), labels)


# ------------------------------------------------------------------------------------------- another CRS and grid
@pytest.mark.parametrize("crs, resolution", [("EPSG:32619", 0.4), ("EPSG:4326", 4e-6), ("EPSG:32619", 0.9)])
def test_mask_in_another_crs_is_resampled_with_nearest_neighbour(truth, tmp_path, crs, resolution, monkeypatch):
    labels, profile = truth
    mask = reprojected(truth, tmp_path / "warped.tif", crs, resolution)
    monkeypatch.setattr(raster_mask, "CHUNK_PIXELS", 20000)  # several chunks per window
    got = scene_labels(entry(mask), resampled=True)
    independent = nearest_lookup(profile, mask)
    agree = (got == independent).mean()
    assert agree >= 0.999, f"{agree:.5f} of pixels agree with the independent nearest-neighbour lookup"
    interior = away_from_edges(labels) & (independent != IGNORE)
    assert interior.mean() > 0.5
    truth_agree = (got[interior] == labels[interior]).mean()
    assert truth_agree >= 0.99, f"{truth_agree:.5f} of pixels away from class edges keep their class"
    assert set(np.unique(got)) <= set(range(len(CLASSES))) | {IGNORE}


# ---------------------------------------------------------------------------------------- nodata and outside extent
def test_nodata_and_pixels_outside_the_mask_are_no_label(truth, tmp_path):
    labels, profile = truth
    full = reprojected(truth, tmp_path / "full.tif", nodata=200)
    with rasterio.open(full) as ds:
        data, prof = ds.read(1), ds.profile
    data = data[: data.shape[0] * 2 // 3, : data.shape[1] // 2].copy()  # the mask covers part of the scene only
    data[40:90, 60:120] = 200  # a nodata hole inside it
    prof.update(height=data.shape[0], width=data.shape[1])
    part = write(tmp_path / "part.tif", data, **{k: prof[k] for k in ("crs", "transform", "nodata")})
    got = scene_labels(entry(part))
    independent = nearest_lookup(profile, part)
    assert (got == independent).mean() >= 0.999
    outside = independent == IGNORE
    assert 0.3 < outside.mean() < 0.9
    assert (got[outside] == IGNORE).mean() >= 0.999  # nodata hole and the scene beyond the mask: no label
    assert not (got == 200).any()
    inside = ~outside & away_from_edges(labels)
    assert (got[inside] == labels[inside]).mean() >= 0.99

    same = labels.copy()
    same[100:150, 50:200] = 9  # nodata on the scene's grid, read directly
    direct = write(tmp_path / "same.tif", same, crs=profile["crs"], transform=profile["transform"], nodata=9)
    assert np.array_equal(scene_labels(entry(direct)), np.where(same == 9, IGNORE, labels))


def test_internal_mask_band_zeros_are_no_label(truth, tmp_path):
    labels, profile = truth
    valid = np.full(labels.shape, 255, dtype=np.uint8)
    valid[:50] = 0
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1, dtype="uint8",
        crs=profile["crs"], transform=profile["transform"]) as ds:
        ds.write(labels, 1)
        ds.write_mask(valid)
    assert np.array_equal(scene_labels(entry(path)), np.where(valid == 0, IGNORE, labels))


# ------------------------------------------------------------------------------------------------------ bad inputs
def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_bad_masks_fail_in_one_line_naming_the_file(truth, tmp_path):
    labels, profile = truth
    geo = dict(crs=profile["crs"], transform=profile["transform"])
    missing = tmp_path / "missing.tif"
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(missing))
    _one_line(err, str(missing), "label mask not found")

    out_of_range = labels.copy()
    out_of_range[10, 10], out_of_range[20, 20] = 9, 77
    bad = write(tmp_path / "range.tif", out_of_range, **geo)
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(bad))
    _one_line(err, str(bad), "[9, 77]", "0..5", "mask_values")

    rgb = write(tmp_path / "rgb.tif", np.stack([labels] * 3), **geo)
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(rgb))
    _one_line(err, str(rgb), "3 bands")

    floats = write(tmp_path / "float.tif", labels.astype(np.float32), **geo)
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(floats))
    _one_line(err, str(floats), "float32")

    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        bare = write(tmp_path / "bare_small.tif", labels[:100, :100])  # no CRS, another shape: cannot be placed
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(bare))
    _one_line(err, str(bare), "no CRS", NB_RASTER.name)
    shifted = write(tmp_path / "no_crs.tif", labels, transform=from_origin(0, 1000, 0.5, 0.5))  # no CRS, other transform
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(shifted))
    _one_line(err, str(shifted), "no CRS")

    far = write(tmp_path / "far.tif", labels, crs=profile["crs"], transform=from_origin(0, 1000, 0.5, 0.5))
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(far))
    _one_line(err, str(far), "does not overlap")

    not_a_raster = tmp_path / "text.tif"
    not_a_raster.write_text("not a raster")
    with pytest.raises(EqsegError) as err:
        scene_labels(entry(not_a_raster))
    _one_line(err, str(not_a_raster))


@pytest.mark.parametrize("scene, needle", [
    ({"raster": "a.tif", "labels": "a.gpkg", "mask": "a_mask.tif"}, "a.tif: give exactly one of labels (vector) or mask"),
    ({"raster": "a.tif"}, "a.tif: give exactly one of labels (vector) or mask"),
])
def test_scene_takes_exactly_one_of_labels_and_mask(scene, needle):
    raw = entry(Path("x.tif"))
    raw["scenes"] = [scene]
    with pytest.raises(EqsegError) as err:
        params_for(raw)
    _one_line(err, needle)


def test_mask_values_must_be_class_ids():
    with pytest.raises(EqsegError) as err:
        params_for(entry(Path("x.tif"), mask_values={0: 0, 1: 6, 2: 255}))
    _one_line(err, "mask_values: class ids [6] are not 0..5")


# ------------------------------------------------------------------------------------------- SpaceNet, end to end
def test_spacenet_solaris_mask_tiles_as_its_vector_footprints(tmp_path):
    """The SpaceNet scene tiled twice by the store builder: from its GeoJSON footprints and from the building mask
    solaris rasterised from them (0/255, no georeferencing, the scene's shape)."""
    import geopandas as gpd

    scene = {"raster": str(SPACENET / "sample_geotiff.tif")}
    split = {"by": "block", "block_size": 256, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}
    stores = {}
    for name, labels in (("vector", {"labels": str(SPACENET / "geotiff_labels.geojson")}),
                         ("mask", {"mask": str(SPACENET / "sample_fp_mask_from_geojson.tif")})):
        e = {"kind": "geotiff", "scenes": [scene | labels], "classes": ["background", "building"], "split": split}
        if name == "mask":
            e["mask_values"] = {0: 0, 255: 1}
        params = params_for(e)
        build_tile_store("scenes", params.dataset("scenes"), params.tile, tmp_path / name)
        stores[name] = (gpd.read_parquet(tmp_path / name / "index.parquet"), np.load(tmp_path / name / "masks.npy"))
    (iv, mv), (im, mm) = stores["vector"], stores["mask"]
    assert iv[["row", "col", "split"]].equals(im[["row", "col", "split"]])
    labelled = mv != IGNORE
    assert (mm == mv).mean() >= 0.99 and (mm[labelled] == 1).sum() > 0.9 * (mv[labelled] == 1).sum()
