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
