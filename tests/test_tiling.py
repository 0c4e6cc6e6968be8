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
from eqseg.tiling.geotiff import GeoSource
from eqseg.tiling.store import TileStore, build_tile_store
from eqseg.tiling.vector import load_vector_labels

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
    assert np.array_equal(ours == 1, ref), int(((ours == 1) != ref).sum())  # measured: every pixel agrees
    assert 0.02 < ref.mean() < 0.5  # the reference really has buildings


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_labels_in_another_crs_land_on_the_same_pixels(tmp_path, crs):
    gdf = gpd.read_file(SPACENET / "geotiff_labels.geojson")
    moved = tmp_path / "labels.gpkg"
    gdf.to_crs(crs).to_file(moved)
    a = full_mask(geo_source(SPACENET / "geotiff_labels.geojson"))
    b = full_mask(geo_source(moved))
    assert np.array_equal(a, b), int((a != b).sum())  # measured: exactly the same pixels


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
    assert store.images.shape == (meta.n_tiles, 1, 128, 128) and store.images.dtype == np.uint16
    assert store.masks.shape == (meta.n_tiles, 128, 128) and store.masks.dtype == np.uint8
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
    # every block of the 900 px scene is at least a tile wide (256, 256, 256, 132): the last tile of each row and
    # column is shifted back inside its block, so no tile crosses a block edge or the scene edge, none is padded
    for rc in (index.row.to_numpy(), index.col.to_numpy()):
        assert (rc + 128 <= 900).all() and (rc // 256 == (rc + 127) // 256).all()
        assert set(rc % 256) == {0, 96, 128} | {4}  # 0, 96, 128 in full blocks (stride 96); 768 + 4 in the last
    assert (index.px_unlabelled == 0).all() and (index.valid_fraction == 1).all()
    assert meta.band_mean[0] > 0 and meta.band_std[0] > 0
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
    assert meta.bands == 3  # the constant alpha band is dropped
    store = TileStore(tmp_path / "tiles")
    assert set(np.unique(store.masks)) <= {0, 1, 255} and (store.masks == 1).any()
    # image06 is 459 wide: its last column of tiles is shifted back inside the image (col 331, not 384 padded);
    # every image is larger than a tile, so no tile is padded at all
    from eqseg.tiling.pairs import read_image_file

    assert sorted(set(index[index.source == "image06"].col)) == [0, 128, 256, 459 - 128]
    t = index[(index.source == "image06") & (index.col == 459 - 128) & (index.row == 0)].tile_id.item()
    assert np.array_equal(store.images[t], read_image_file(images / "image06.png")[:3, :128, 459 - 128:])
    assert (index.px_unlabelled == 0).all() and (index.valid_fraction == 1).all()


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
    assert meta.n_tiles == 8 and (index.col >= 128).all()  # the 8 nodata-only tiles are gone
    assert meta.bands == 4 and meta.dtype == "uint16"
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
    from eqseg.tiling.protocol import Source
    from eqseg.tiling.registry import open_source, open_sources, source_names

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
    from eqseg.tiling.registry import open_sources

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
    valid = np.ones((5, 128, 128), dtype=bool)
    valid[1, 40:] = False  # partly padding or nodata
    valid[2] = False  # no valid pixel at all
    valid[3, ::2] = False  # invalid on exactly the sampled rows
    got = batch_sums(images, valid)
    want = np.stack([tile_sums(i, v) for i, v in zip(images, valid)])
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert got[2].sum() == 0 and got[0, 0, 0] == 64 * 64


# Digests of the stores of the bundled datasets (arrays and index content): the store must not change by a bit when
# the tiling code is made faster; deliberate changes update these values. Last deliberate change: the last tile of a
# row or column is shifted back inside its block or source instead of padded (cpm15: 440 -> 453 tiles, none padded
# any more, 134 were; spacenet_atlanta: 49 -> 64 tiles, the 4-px strip past 896 px is now seen, by tiles at 772;
# cpm15_slides: unchanged, its 1024-px blocks hold whole tiles). Before: cpm15 b692a86a9b0f91ae, spacenet_atlanta
# aeffca1a532c320c.
BUNDLED_STORE_DIGESTS = {"cpm15": "fb75ee0c8c46d1b4", "spacenet_atlanta": "8565c706cda243c2"}
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


# --------------------------------------------------------------------------------------------- test-only datasets
def _scene(tmp_path: Path, name: str, crs: str, x0: float, y0: float, size: int = 256, seed: int = 0) -> Scene:
    raster, labels = tmp_path / f"{name}.tif", tmp_path / f"{name}.geojson"
    data = np.random.default_rng(seed).integers(1, 250, (3, size, size), dtype=np.uint8)
    with rasterio.open(raster, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=from_origin(x0, y0, 1.0, 1.0)) as ds:
        ds.write(data)
    gpd.GeoDataFrame({"cls": [1]}, geometry=[box(x0 + 10, y0 - 60, x0 + 60, y0 - 10)], crs=crs).to_file(labels)
    return Scene(raster=str(raster), labels=str(labels))


@pytest.mark.parametrize("by", ["source", "block"])
def test_test_only_dataset_has_every_tile_in_test_and_statistics_of_all(tmp_path, by):
    split = SplitConfig(by=by, block_size=128, fractions={"test": 1.0})
    assert split.fractions == {"test": 1.0}
    cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "thing"], scenes=[_scene(tmp_path, "a", "EPSG:32633", 500000, 4000000)],
                         split=split)
    meta = build_tile_store("external", cfg, TileConfig(size=64), tmp_path / "t")
    store = TileStore(tmp_path / "t")
    assert meta.splits == {"train": 0, "val": 0, "test": 16} and set(store.index.split) == {"test"}
    assert meta.stats_from == "all"
    x = np.asarray(store.images)[:, :, ::2, ::2].transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    assert meta.band_mean == pytest.approx(x.mean(axis=1).tolist(), rel=1e-12)
    assert meta.band_std == pytest.approx((x.std(axis=1) + 1e-6).tolist(), rel=1e-9)
    # with a train split, its statistics alone (and it says so)
    cfg = cfg.model_copy(update={"split": SplitConfig(by="block", block_size=128, fractions={"train": 0.5, "test": 0.5})})
    meta = build_tile_store("mixed", cfg, TileConfig(size=64), tmp_path / "m")
    assert meta.stats_from == "train" and meta.splits["train"] == 8
    ids = TileStore(tmp_path / "m").ids("train")
    x = np.asarray(TileStore(tmp_path / "m").images)[ids][:, :, ::2, ::2].transpose(1, 0, 2, 3).reshape(3, -1)
    assert meta.band_mean == pytest.approx(x.astype(np.float64).mean(axis=1).tolist(), rel=1e-12)


def test_split_fractions_still_refuse_bad_values():
    from pydantic import ValidationError

    for bad in ({"test": 0.5}, {"train": -0.2, "test": 1.2}):
        with pytest.raises(ValidationError, match="must be non-negative and sum to 1"):
            SplitConfig(fractions=bad)


# --------------------------------------------------------------------------------------------- shared ground
def test_overlap_groups_join_boxes_of_different_owners_transitively():
    from eqseg.tiling.grid import overlap_groups

    boxes = [(0, 0, 10, 10), (10, 0, 20, 10), (5, 5, 15, 15), (14, 14, 30, 30), (40, 40, 50, 50), (0, 0, 10, 10)]
    # 0 and 1 (one owner) only touch; 2 (owner 1) overlaps both; 3 (owner 2) overlaps 2; 5 (owner 0) is never joined
    # to 0 (same owner) but is to 2
    assert overlap_groups(boxes, [0, 0, 1, 2, 2, 0]) == [0, 0, 0, 0, 1, 0]
    assert overlap_groups(boxes[:2] + boxes[4:5], [0, 1, 2]) == [0, 1, 2]  # touching edges share no ground
    assert overlap_groups(boxes, [0] * 6) == list(range(6))


def test_overlapping_scenes_in_different_crss_never_split_the_same_ground(tmp_path):
    """Two scenes, the second in the neighbouring UTM zone over the lower right of the first: blocks of both that
    cover the same ground are one unit, whatever the seed; scenes apart stay independent."""
    from pyproj import Transformer

    from eqseg.tiling.registry import open_sources
    from eqseg.tiling.store import split_units

    x, y = Transformer.from_crs("EPSG:32633", "EPSG:32632", always_xy=True).transform(500100, 3999900)
    scenes = [_scene(tmp_path, "a", "EPSG:32633", 500000, 4000000), _scene(tmp_path, "b", "EPSG:32632", x, y, seed=1),
              _scene(tmp_path, "far", "EPSG:32633", 510000, 4000000, seed=2)]
    cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "thing"], scenes=scenes,
                         split=SplitConfig(by="block", block_size=64, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
    sources = open_sources(cfg)
    try:
        blocks, units = split_units(sources, cfg.split)
        foot = gpd.GeoSeries([sources[i].footprint(r, c, h, w) for i, r, c, h, w in blocks], crs=None)
        crs = [sources[i].crs for i, *_ in blocks]
    finally:
        for s in sources:
            s.close()
    a = [k for k, b in enumerate(blocks) if b[0] == 0]
    b = [k for k, blk in enumerate(blocks) if blk[0] == 1]
    fb = gpd.GeoSeries(foot.iloc[b].to_numpy(), crs=crs[b[0]]).to_crs(crs[a[0]])
    pairs = [(i, j) for j, g in zip(b, fb) for i in a if g.intersection(foot.iloc[i]).area > 1e-6]
    assert len(pairs) >= 9 and all(units[i] == units[j] for i, j in pairs)
    assert len(set(units)) < len(blocks)  # blocks were joined
    assert len({units[k] for k, blk in enumerate(blocks) if blk[0] == 2}) == 16  # the far scene: its own 16 blocks
    for seed in range(4):
        c = cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": seed})})
        build_tile_store("two", c, TileConfig(size=64), tmp_path / f"s{seed}")
        index = gpd.read_parquet(tmp_path / f"s{seed}" / "index.parquet")
        index = gpd.GeoDataFrame(index, geometry=[g if s != "b" else gpd.GeoSeries([g], crs="EPSG:32632").to_crs("EPSG:32633").iloc[0]
                                                  for g, s in zip(index.geometry, index.source)], crs="EPSG:32633")
        union = {s: index[index.split == s].union_all() for s in ("train", "val", "test")}
        assert all(union[p].intersection(union[q]).area < 1e-6 for p, q in (("train", "val"), ("train", "test"), ("val", "test"))), seed


def test_overlapping_sources_split_by_source_are_one_unit_and_predict_agrees(tmp_path, root):
    """Split by source: scenes sharing ground go to one split together; `source_splits` (what predict-dataset uses
    to pick test scenes) says what the store did, for scenes and for pairs."""
    from pyproj import Transformer

    from eqseg.tiling.store import source_splits

    x, y = Transformer.from_crs("EPSG:32633", "EPSG:32632", always_xy=True).transform(500100, 3999900)
    scenes = [_scene(tmp_path, "a", "EPSG:32633", 500000, 4000000), _scene(tmp_path, "far", "EPSG:32633", 510000, 4000000, seed=2),
              _scene(tmp_path, "b", "EPSG:32632", x, y, seed=1)]
    for seed in range(6):
        cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "thing"], scenes=scenes,
                             split=SplitConfig(by="source", fractions={"train": 0.5, "test": 0.5}, seed=seed))
        build_tile_store("s", cfg, TileConfig(size=64), tmp_path / f"t{seed}")
        index = gpd.read_parquet(tmp_path / f"t{seed}" / "index.parquet")
        stored = index.groupby("source").split.agg(set).to_dict()
        assert all(len(v) == 1 for v in stored.values()) and stored["a"] == stored["b"] != stored["far"]
        assert source_splits(cfg) == {k: v.pop() for k, v in stored.items()}
    three = cfg.model_copy(update={"split": SplitConfig(by="source")})
    with pytest.raises(EqsegError, match=r"needs a source for each split with a share \(dataset has 3, 2 once sources "
                                         r"covering the same ground count as one\)"):
        build_tile_store("s", three, TileConfig(size=64), tmp_path / "three")
    _, cfgs = _bundled_cfgs(root)
    build_tile_store("cpm15", cfgs["cpm15"], TileConfig(size=256), tmp_path / "cpm", root)
    index = gpd.read_parquet(tmp_path / "cpm" / "index.parquet")
    assert source_splits(cfgs["cpm15"], root) == index.groupby("source").split.first().to_dict()
