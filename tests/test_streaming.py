"""Streaming tiling of scenes: tiles cut from block-aligned strips equal direct window reads; 16-bit many-band imagery,
nodata, NaN, tiny rasters, all-nodata scenes, and two real scenes in different CRSs in one dataset."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from eqseg.config import GeoTiffDataset, Scene, SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling import geotiff
from eqseg.tiling.geotiff import GeoSource
from eqseg.tiling.store import TileStore, build_tile_store
from eqseg.tiling.vector import load_vector_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CRS = "EPSG:32633"


def write_scene(path: Path, data: np.ndarray, nodata=None, block: int = 128, crs=CRS) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=from_origin(500000, 4000000, 1.0, 1.0), nodata=nodata,
                       tiled=True, blockxsize=block, blockysize=block, compress="deflate") as ds:
        ds.write(data)
    return path


def write_labels(path: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(500000, 500900, n), rng.uniform(3999300, 4000000, n)
    geoms = [box(a, b, a + rng.uniform(10, 80), b + rng.uniform(10, 80)) for a, b in zip(x, y)]
    gpd.GeoDataFrame({"cls": rng.integers(1, 3, n)}, geometry=geoms, crs=CRS).to_file(path)
    return path


def dataset(raster: Path, labels: Path, block: int = 256, field: str | None = "cls", classes: int = 3) -> GeoTiffDataset:
    return GeoTiffDataset(kind="geotiff", classes=[f"c{i}" for i in range(classes)], class_field=field,
                          scenes=[Scene(raster=str(raster), labels=str(labels))],
                          split=SplitConfig(by="block", block_size=block, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))


@pytest.fixture(scope="module")
def uint16_scene(tmp_path_factory):
    """6 bands of 16-bit values, a nodata (0) corner, 128-px blocks; 700 x 900 so that edges are padded."""
    d = tmp_path_factory.mktemp("u16")
    data = np.random.default_rng(1).integers(1, 60000, (6, 700, 900), dtype=np.uint16)
    data[:, :300, :200] = 0
    return write_scene(d / "u16.tif", data, nodata=0), write_labels(d / "labels.gpkg")


@pytest.mark.parametrize("size, overlap", [(96, 0), (128, 32)])
def test_tiles_from_strips_equal_direct_window_reads(uint16_scene, tmp_path, monkeypatch, size, overlap):
    raster, labels = uint16_scene
    monkeypatch.setattr(geotiff, "STRIP_BYTES", 2 * 2**20)  # force column chunks too
    meta = build_tile_store("u16", dataset(raster, labels), TileConfig(size=size, overlap=overlap, min_valid_fraction=0), tmp_path / "t")
    store = TileStore(tmp_path / "t")
    gdf = gpd.read_file(labels)
    with rasterio.open(raster) as ds:
        for t in store.index.itertuples():
            block_r, block_c = t.row // 256 * 256, t.col // 256 * 256
            h = min(size, block_r + 256 - t.row, ds.height - t.row)
            w = min(size, block_c + 256 - t.col, ds.width - t.col)
            win = Window(t.col, t.row, w, h)
            image, stored = ds.read(window=win), store.images[t.tile_id]
            assert np.array_equal(stored[:, :h, :w], image) and not stored[:, h:].any() and not stored[:, :, w:].any()
            valid = ds.dataset_mask(window=win) > 0
            ref = rasterio.features.rasterize(zip(gdf.geometry, gdf.cls), out_shape=(h, w), transform=ds.window_transform(win), dtype=np.uint8)
            ref[~valid] = 255
            assert np.array_equal(store.masks[t.tile_id][:h, :w], ref)
            assert (store.masks[t.tile_id][h:] == 255).all() and (store.masks[t.tile_id][:, w:] == 255).all()
    assert meta.dtype == "uint16" and meta.bands == 6
    assert (store.index.row >= 0).all() and not ((store.index.row + size <= 300) & (store.index.col + size <= 200)).any()
    # band statistics are those of the valid pixels of the train tiles, each pixel once (every other row and column)
    train = np.sort(store.ids("train"))
    images = store.images[train][:, :, ::2, ::2]
    keep = (np.asarray(store.valid[train]) & np.asarray(store.owned[train]))[:, ::2, ::2]
    x = np.asarray(images, dtype=np.float64).transpose(1, 0, 2, 3)[:, keep]
    assert meta.band_mean == pytest.approx(x.mean(axis=1).tolist(), rel=1e-9)
    assert meta.band_std == pytest.approx(x.std(axis=1).tolist(), rel=1e-6)


def test_nan_pixels_of_a_float_raster_are_nodata(tmp_path):
    data = np.random.default_rng(2).random((2, 256, 256)).astype(np.float32)
    data[:, 10:50, 20:60] = np.nan
    data[0, 100, 100] = np.nan  # one band NaN is enough
    raster = write_scene(tmp_path / "f.tif", data)
    src = GeoSource(raster, [])
    read = src.read_tile(0, 0, 256, 256, 256)
    assert (read.mask[10:50, 20:60] == 255).all() and read.mask[100, 100] == 255 and read.mask[0, 0] == 0
    assert not np.isnan(read.image).any() and read.valid_fraction == pytest.approx(1 - (40 * 40 + 1) / 256**2)
    src.close()


def test_raster_smaller_than_a_tile_is_padded(tmp_path):
    raster = write_scene(tmp_path / "small.tif", np.full((3, 50, 70), 7, np.uint8), block=16)
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame({"cls": [1]}, geometry=[box(500010, 3999960, 500030, 3999990)], crs=CRS).to_file(labels)
    cfg = dataset(raster, labels).model_copy(update={"split": SplitConfig(by="source", fractions={"train": 1.0})})
    meta = build_tile_store("s", cfg, TileConfig(size=128), tmp_path / "t")
    store = TileStore(tmp_path / "t")
    assert meta.n_tiles == 1 and (store.masks[0][50:] == 255).all() and (store.masks[0][:, 70:] == 255).all()
    assert (store.masks[0][10:40, 10:30] == 1).all() and (store.images[0][:, :50, :70] == 7).all()


def test_scene_of_nodata_only_is_an_error_naming_it(tmp_path):
    raster = write_scene(tmp_path / "empty.tif", np.zeros((1, 300, 300), np.uint8), nodata=0)
    labels = write_labels(tmp_path / "l.gpkg")
    with pytest.raises(EqsegError, match=r"empty.tif: no tile has valid pixels \(every pixel is nodata\)"):
        build_tile_store("e", dataset(raster, labels), TileConfig(size=128), tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_raster_without_crs_given_vector_labels(tmp_path):
    raster = write_scene(tmp_path / "nocrs.tif", np.ones((1, 64, 64), np.uint8), crs=None)
    labels = write_labels(tmp_path / "l.gpkg")
    with rasterio.open(raster) as ds:
        crs, bounds = ds.crs, ds.bounds
    with pytest.raises(EqsegError, match="nocrs.tif: GeoTIFF without a CRS"):
        load_vector_labels(labels, raster, crs, bounds, "cls", None, 3)


@pytest.mark.skipif(not (SHARED / "new_brunswick").is_dir() or not (SHARED / "massachusetts").is_dir(), reason="../shared/data absent")
def test_two_real_scenes_in_different_crss_in_one_dataset(tmp_path):
    """New Brunswick (EPSG:2953, 5 classes in Cinqclasses) and Massachusetts (EPSG:26986, buildings, labels moved to
    EPSG:4326): each scene's labels land where an independent rasterisation in its own CRS puts them."""
    nb, ma = SHARED / "new_brunswick", SHARED / "massachusetts"
    ma_labels = gpd.read_file(ma / "22978945_15.gpkg").assign(Cinqclasses=1).to_crs("EPSG:4326")
    ma_labels[["Cinqclasses", "geometry"]].to_file(tmp_path / "ma.gpkg")
    scenes = [(nb / "23322E759967N_clipped_1m_1of2.tif", nb / "BakerLake_2017_clipped.gpkg"),
              (ma / "22978945_15_uint8_clipped.tif", tmp_path / "ma.gpkg")]
    cfg = GeoTiffDataset(kind="geotiff", classes=["other", "building", "hydro", "road", "train", "vegetation"], class_field="Cinqclasses",
                         scenes=[Scene(raster=str(r), labels=str(v)) for r, v in scenes],
                         split=SplitConfig(by="block", block_size=128, fractions={"train": 0.6, "val": 0.2, "test": 0.2}))
    meta = build_tile_store("two", cfg, TileConfig(size=64, min_valid_fraction=0.0), tmp_path / "t")
    store = TileStore(tmp_path / "t")
    assert store.index.crs is None  # mixed CRSs: each row carries its own
    assert {s.crs for s in meta.sources} == {"EPSG:2953", "EPSG:26986"}
    for raster, vectors in scenes:
        name = raster.stem
        rows = store.index[store.index.source == name]
        assert len(rows) and set(rows["crs"]) == {next(s.crs for s in meta.sources if s.name == name)}
        with rasterio.open(raster) as ds:
            gdf = gpd.read_file(vectors).to_crs(ds.crs)
            ref = rasterio.features.rasterize(zip(gdf.geometry, gdf.Cinqclasses.astype(int)), out_shape=ds.shape, transform=ds.transform, dtype=np.uint8)
            ref[ds.dataset_mask() == 0] = 255
        assert (ref != 255).any() and (ref % 255 > 0).any()
        for t in rows.itertuples():
            h, w = min(64, ref.shape[0] - t.row, (t.row // 128 + 1) * 128 - t.row), min(64, ref.shape[1] - t.col, (t.col // 128 + 1) * 128 - t.col)
            assert np.array_equal(store.masks[t.tile_id][:h, :w], ref[t.row : t.row + h, t.col : t.col + w])
