"""Tiling on real bundled data: rasterisation against an independent reference, CRSs, padding, nodata, splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from eqseg.config import GeoTiffDataset, PairsDataset, Scene, SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling.sources import GeoSource, load_vector_labels
from eqseg.tiling.store import TileStore, build_tile_store

SPACENET = Path(__file__).resolve().parents[1] / "data" / "spacenet_atlanta"


def geo_source(labels: Path, raster: Path = SPACENET / "sample_geotiff.tif") -> GeoSource:
    with rasterio.open(raster) as ds:
        crs, bounds = ds.crs, ds.bounds
    return GeoSource(raster, load_vector_labels(labels, raster, crs, bounds, None, None, 2))


def full_mask(src: GeoSource) -> np.ndarray:
    return src.read_tile(0, 0, max(src.height, src.width), src.height, src.width).mask[: src.height, : src.width]


def test_rasterised_labels_match_independent_reference():
    ours = full_mask(geo_source(SPACENET / "geotiff_labels.geojson"))
    with rasterio.open(SPACENET / "sample_fp_mask_from_geojson.tif") as ds:
        ref = ds.read(1) > 0
    agreement = float(((ours == 1) == ref).mean())
    assert agreement >= 0.999, agreement
    assert 0.02 < ref.mean() < 0.5  # the reference really has buildings


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_labels_in_another_crs_land_on_the_same_pixels(tmp_path, crs):
    gdf = gpd.read_file(SPACENET / "geotiff_labels.geojson")
    moved = tmp_path / "labels.gpkg"
    gdf.to_crs(crs).to_file(moved)
    a = full_mask(geo_source(SPACENET / "geotiff_labels.geojson"))
    b = full_mask(geo_source(moved))
    assert float((a == b).mean()) >= 0.999


def _spacenet_cfg(block_size: int = 256) -> GeoTiffDataset:
    return GeoTiffDataset(
        kind="geotiff", classes=["background", "building"],
        scenes=[Scene(raster=str(SPACENET / "sample_geotiff.tif"), labels=str(SPACENET / "geotiff_labels.geojson"))],
        split=SplitConfig(by="block", block_size=block_size),
    )


def test_geotiff_store_layout_index_and_leak_free_blocks(tmp_path):
    out = tmp_path / "tiles"
    meta = build_tile_store("spacenet", _spacenet_cfg(), TileConfig(size=128, overlap=32), out)
    store = TileStore(out)
    assert store.images.shape == (meta["n_tiles"], 1, 128, 128) and store.images.dtype == np.uint16
    assert store.masks.shape == (meta["n_tiles"], 128, 128) and store.masks.dtype == np.uint8
    index = gpd.read_parquet(out / "index.parquet")
    assert index.crs.to_epsg() == 32616
    assert set(index.split) == {"train", "val", "test"}
    assert (index.tile_id.to_numpy() == np.arange(len(index))).all()
    # class counts in the index are the counts in the arrays
    counts = np.array([np.bincount(store.masks[i].ravel(), minlength=256)[[0, 1, 255]] for i in range(len(index))])
    assert (counts == index[["px_background", "px_building", "px_unlabelled"]].to_numpy()).all()
    # tiles of different splits never share a pixel (overlap stays inside a block)
    for a, b in [("train", "test"), ("train", "val"), ("val", "test")]:
        ua = index[index.split == a].geometry.union_all()
        ub = index[index.split == b].geometry.union_all()
        assert ua.intersection(ub).area == pytest.approx(0.0, abs=1e-6)
    # padding beyond the 900 px scene (and beyond each block) is marked unlabelled
    edge = index[(index.col + 128 > 900)]
    assert len(edge) and all((store.masks[i][:, 900 - c:] == 255).all() for i, c in zip(edge.tile_id, edge.col))
    assert meta["band_mean"][0] > 0 and meta["band_std"][0] > 0
    assert json.loads((out / "meta.json").read_text())["classes"] == ["background", "building"]


def test_block_smaller_than_tile_plus_overlap_is_refused(tmp_path):
    from eqseg.errors import EqsegError

    with pytest.raises(EqsegError, match="block_size"):
        build_tile_store("s", _spacenet_cfg(block_size=128), TileConfig(size=128, overlap=32), tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_pairs_store_splits_by_source_and_pads(tmp_path, root):
    images, masks = tmp_path / "im", tmp_path / "mk"
    images.mkdir(), masks.mkdir()
    for n in ("01", "06", "07", "14"):
        shutil.copy(root / f"data/cpm15/images/image{n}.png", images)
        shutil.copy(root / f"data/cpm15/masks/image{n}_mask.png", masks)
    cfg = PairsDataset(kind="pairs", images=str(images), masks=str(masks), mask_suffix="_mask", mask_mode="instances",
                       classes=["background", "nucleus"], split=SplitConfig(by="source", fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
    meta = build_tile_store("cpm", cfg, TileConfig(size=128), tmp_path / "tiles")
    index = gpd.read_parquet(tmp_path / "tiles" / "index.parquet")
    per_source = index.groupby("source").split.nunique()
    assert (per_source == 1).all() and index.crs is None
    assert meta["bands"] == 3  # the constant alpha band is dropped
    store = TileStore(tmp_path / "tiles")
    assert set(np.unique(store.masks)) <= {0, 1, 255} and (store.masks == 1).any()
    # image06 is 459 x 392: its last column of tiles is padded and unlabelled there
    t = index[(index.source == "image06") & (index.col == 384) & (index.row == 0)].tile_id.item()
    assert (store.masks[t][:, 459 - 384:] == 255).all() and (store.images[t][:, :, 459 - 384:] == 0).all()


def test_nodata_tiles_are_dropped_and_nodata_pixels_unlabelled(tmp_path):
    raster, labels = tmp_path / "scene.tif", tmp_path / "labels.geojson"
    transform = from_origin(500000, 4000000, 1.0, 1.0)
    data = np.random.default_rng(0).integers(1, 4000, (4, 256, 256), dtype=np.uint16)
    data[:, :, :128] = 0  # left half is nodata
    with rasterio.open(raster, "w", driver="GTiff", width=256, height=256, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=transform, nodata=0, tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(data)
    gpd.GeoDataFrame({"cls": [1]}, geometry=[box(500100, 3999900, 500200, 3999800)], crs="EPSG:32633").to_file(labels)
    cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "thing"], scenes=[Scene(raster=str(raster), labels=str(labels))],
                         split=SplitConfig(by="block", block_size=128, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
    meta = build_tile_store("nd", cfg, TileConfig(size=64, min_valid_fraction=0.0), tmp_path / "tiles")
    index = gpd.read_parquet(tmp_path / "tiles" / "index.parquet")
    assert meta["n_tiles"] == 8 and (index.col >= 128).all()  # the 8 nodata-only tiles are gone
    assert meta["bands"] == 4 and meta["dtype"] == "uint16"
    store = TileStore(tmp_path / "tiles")
    assert (store.masks == 1).any()


# --------------------------------------------------------------------------------------------- one Source interface
def _bundled_cfgs(root: Path):
    from eqseg.config import load_params

    params = load_params(root / "params.yaml")
    return params, {name: params.dataset(name) for name in ("cpm15", "spacenet_atlanta")}


def test_every_source_kind_has_the_whole_interface(root, tmp_path):
    """Pairs and scenes from the dataset configurations, a slide built from real tiles: each is a Source with every
    capability set explicitly, and names, order and single-source opening agree with open_sources."""
    from eqseg.config import Slide, SlideDataset
    from eqseg.slides.make import make_slide
    from eqseg.tiling.source import Source, open_source, open_sources, source_names

    make_slide(root / "data/cpm15/images", root / "data/cpm15/masks", tmp_path / "s.ome.tif", tmp_path / "s.mask.ome.tif",
               0.5, mask_suffix="_mask", include=("image01.png",))
    _, cfgs = _bundled_cfgs(root)
    cfgs["slides"] = SlideDataset(kind="slide", classes=["bg", "nucleus"], mask_mode="instances",
                                  slides=[Slide(image=str(tmp_path / "s.ome.tif"), mask=str(tmp_path / "s.mask.ome.tif"))])
    expect = {"cpm15": (False, 0, None, 1.0, None), "spacenet_atlanta": (False, 0, None, 1.0, None),
              "slides": (True, 0, 0.5, 1.0, 0)}
    for name, cfg in cfgs.items():
        sources = open_sources(cfg, root)
        try:
            assert [s.name for s in sources] == source_names(cfg, root) and len(sources) >= 1
            for s in sources:
                assert isinstance(s, Source), (name, type(s))
                assert (s.is_slide, s.level, s.mpp, s.downsample, s.background) == pytest.approx(expect[name]), name
                assert s.path.is_file() and s.empty_reason
            one = open_source(cfg, sources[-1].name, root)
            assert one.name == sources[-1].name and one.path == sources[-1].path
            a = one.read_tile(0, 0, 64, one.height, one.width)
            b = sources[-1].read_tile(0, 0, 64, sources[-1].height, sources[-1].width)
            assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
            one.close()
        finally:
            for s in sources:
                s.close()
    with pytest.raises(EqsegError, match=r"no source 'nope' in the dataset \(sources: \['image01'"):
        open_source(cfgs["cpm15"], "nope", root)


def test_footprints_of_arrays_equal_footprints_one_by_one(root):
    from eqseg.tiling.source import open_sources

    _, cfgs = _bundled_cfgs(root)
    for cfg in cfgs.values():
        src = open_sources(cfg, root)[0]
        rows, cols = np.array([0, 128, 256]), np.array([384, 0, 100])
        hs, ws = np.array([128, 128, 64]), np.array([128, 32, 128])
        many = src.footprint(rows, cols, hs, ws)
        one = [src.footprint(int(r), int(c), int(h), int(w)) for r, c, h, w in zip(rows, cols, hs, ws)]
        assert [g.wkb for g in many] == [g.wkb for g in one]
        src.close()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int8])
def test_batch_band_sums_equal_tile_sums_to_the_last_bit(dtype):
    from eqseg.tiling.store import batch_sums, tile_sums

    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    images = rng.integers(info.min, info.max, (5, 3, 128, 128), endpoint=True).astype(dtype)
    masks = rng.integers(0, 3, (5, 128, 128)).astype(np.uint8)
    masks[1, 40:] = 255  # partly unlabelled
    masks[2] = 255  # not labelled at all
    masks[3, ::2] = 255  # unlabelled on exactly the sampled rows
    got = batch_sums(images, masks)
    want = np.stack([tile_sums(i, m) for i, m in zip(images, masks)])
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert got[2].sum() == 0 and got[0, 0, 0] == 64 * 64


# Digests of the stores of the bundled datasets (arrays and index content), taken with the code before tiles were
# written by a background thread in batches, statistics summed per batch and the index built by columns: the
# store must not change by a bit when the tiling code is made faster (deliberate changes update these values).
BUNDLED_STORE_DIGESTS = {"cpm15": "b692a86a9b0f91ae", "spacenet_atlanta": "aeffca1a532c320c"}
BUNDLED_SLIDES_STORE_DIGEST = "0251c91dea071738"  # cpm15_slides, in test_slides.py


def store_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in ("images.npy", "masks.npy"):
        a = np.load(path / f, mmap_mode="r")
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(np.ascontiguousarray(a).data)
    index = gpd.read_parquet(path / "index.parquet")
    h.update(f"{list(index.columns)} {index.crs}".encode())
    for c in index.columns:
        v = index[c]
        if c == "geometry":
            h.update(b"".join(g.wkb for g in v))
        elif getattr(v.dtype, "kind", "O") in "iufb":
            h.update(f"{v.dtype}".encode() + v.to_numpy().tobytes())
        else:
            h.update("\x00".join(map(str, v)).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BUNDLED_STORE_DIGESTS))
def test_bundled_stores_are_unchanged_to_the_byte(root, tmp_path, name):
    params, cfgs = _bundled_cfgs(root)
    build_tile_store(name, cfgs[name], TileConfig(size=128, overlap=0, min_valid_fraction=0.05), tmp_path / "t", root)
    assert store_digest(tmp_path / "t") == BUNDLED_STORE_DIGESTS[name]
