"""The bundled aerial clips of New Brunswick (5 land-cover classes) and Massachusetts (buildings), tiled as
datasets: the classes and pixel counts they give, labels equal to an independent rasterisation (also when the
labels come in another CRS and must be reprojected), and splits that never share a tile or a pixel.

The dataset entries are built here (the same ones proposed for params.yaml), from tests/smoke/params.yaml with
128-pixel tiles.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
import yaml

from eqseg.config import parse_params
from eqseg.errors import EqsegError
from eqseg.tiling.store import build_tile_store

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "data" / "new_brunswick"
NB_RASTERS = [NB / f"23322E759967N_clipped_1m_{k}of2.tif" for k in (1, 2)]
NB_LABELS = NB / "BakerLake_2017_clipped.gpkg"
MA = ROOT / "data" / "massachusetts"
MA_RASTER = MA / "22978945_15_uint8_clipped.tif"
MA_LABELS = MA / "22978945_15.gpkg"
SPACENET = ROOT / "data" / "spacenet_atlanta"

# Niveau_2 names to the ids the source itself gives them (its numeric field Cinqclasses); 0: covered by no polygon
NB_IDS = {"Vegetation": 1, "Hydro": 2, "Road": 3, "Building": 4, "Train": 5}
NB_CLASSES = ["background", "vegetation", "hydro", "road", "building", "railway"]  # not "train": a split's name
TILE = 128
IGNORE = 255

# Pixel counts per class over both clips (unlabelled: padding of the edge tiles). Polygons are burned in file order,
# later ones over earlier ones, as rasterio does (79 building pixels lie under a later vegetation polygon).
NB_PIXELS = {"background": 91449, "vegetation": 98879, "hydro": 46366, "road": 5949, "building": 5461, "railway": 4508}
NB_SPLITS = {"train": 10, "val": 8, "test": 3}  # 21 tiles: one 128-px block each (3x3 + 4x3 blocks)
# The two clips overlap on the ground (a 94 x 22 m strip, 2080 m2, the same orthophoto in both): the tiler makes the
# blocks holding it (the bottom row of clip 1, the first two blocks of clip 2) one split unit, 17 units in all.
# Before, seed 0 put 1815 m2 of that ground into two splits (and the test used seed 159 to dodge it).
NB_OVERLAP_M2 = 2080.1
NB_SHARED_UNIT = {("1of2", 256, 0), ("1of2", 256, 128), ("1of2", 256, 256), ("2of2", 0, 0), ("2of2", 0, 128)}
# 92x169 px: two 128-px tiles, padded across (92 < 128), the second shifted up inside the clip (rows 41..168), so
# rows 41..127 count twice
MA_PIXELS = {"background": 20823, "building": 2729}


def nb_entry(labels: Path = NB_LABELS, block_size: int = TILE, seed: int = 0) -> dict:
    return {"kind": "geotiff", "scenes": [{"raster": str(r), "labels": str(labels)} for r in NB_RASTERS],
            "class_field": "Niveau_2", "class_values": NB_IDS, "classes": NB_CLASSES,
            "split": {"by": "block", "block_size": block_size, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": seed}}


def ma_entry(labels: Path = MA_LABELS) -> dict:
    # one clip narrower than a tile, a test-only dataset: an external test set for building models
    return {"kind": "geotiff", "scenes": [{"raster": str(MA_RASTER), "labels": str(labels)}],
            "class_field": None, "classes": ["background", "building"],
            "split": {"by": "source", "fractions": {"test": 1.0}, "seed": 0}}


def make_params(**datasets):
    p = yaml.safe_load((ROOT / "tests" / "smoke" / "params.yaml").read_text())
    p.pop("slides")
    p["grid"]["test_on"], p["compare"] = [], []  # smoke extras that name its datasets
    p["datasets"] = datasets
    p["grid"]["datasets"] = list(datasets)
    p["tile"] = {"size": TILE, "overlap": 0, "min_valid_fraction": 0.05}
    return parse_params(p, "test params")


def tile(name: str, entry: dict, out: Path) -> tuple[dict, gpd.GeoDataFrame, np.ndarray]:
    params = make_params(**{name: entry})
    meta = build_tile_store(name, params.dataset(name), params.tile, out)
    return meta, gpd.read_parquet(out / "index.parquet"), np.load(out / "masks.npy", mmap_mode="r")


def reference(raster: Path, labels: Path, ids) -> np.ndarray:
    """Labels of a whole clip rasterised here, straight from the bundled file in the raster's own CRS (file order,
    pixel centres, 0 where no polygon)."""
    gdf = pyogrio.read_dataframe(labels)
    with rasterio.open(raster) as ds:
        assert gdf.crs == ds.crs  # the bundled labels share the raster's CRS: no reprojection in the reference
        shapes = list(zip(gdf.geometry, (int(i) for i in ids(gdf))))
        return rasterio.features.rasterize(shapes, out_shape=ds.shape, transform=ds.transform, fill=0, dtype=np.uint8)


def nb_ids(gdf) -> list[int]:
    return [NB_IDS[name] for name in gdf["Niveau_2"]]


def ma_ids(gdf) -> list[int]:
    return [1] * len(gdf)


def assert_tiles_equal_reference(index, masks, refs: dict[str, np.ndarray], once: bool = True) -> None:
    """Every tile's mask is the reference cut at its place, padded with 255 past the clip (or block) edge; the tiles
    cover every pixel, exactly once unless a last tile was shifted back inside its clip (`once=False`)."""
    for t in index.itertuples():
        ref = refs[t.source]
        part = ref[t.row : t.row + TILE, t.col : t.col + TILE]
        h, w = part.shape
        m = masks[t.tile_id]
        assert np.array_equal(m[:h, :w], part), f"{t.source} tile at ({t.row}, {t.col}): {(m[:h, :w] != part).sum()} pixels differ"
        assert (m[h:] == IGNORE).all() and (m[:, w:] == IGNORE).all()
    covered = {s: np.zeros(r.shape, dtype=int) for s, r in refs.items()}
    for t in index.itertuples():
        covered[t.source][t.row : t.row + TILE, t.col : t.col + TILE] += 1
    assert all((c >= 1).all() for c in covered.values()), "tiles must cover every pixel of each clip"
    if once:
        assert all((c == 1).all() for c in covered.values()), "tiles must cover every pixel of each clip exactly once"


def test_new_brunswick_labels_are_as_documented():
    """Five classes in Niveau_2, one-to-one with the source's own numbers in Cinqclasses (the ids used here);
    labels and clips in EPSG:2953 at 0.5 m."""
    gdf = pyogrio.read_dataframe(NB_LABELS)
    assert len(gdf) == 43 and gdf.crs.to_epsg() == 2953
    assert gdf["Niveau_2"].value_counts().to_dict() == {"Building": 28, "Vegetation": 7, "Road": 4, "Hydro": 3, "Train": 1}
    pairs = set(zip(gdf["Niveau_2"], gdf["Cinqclasses"].astype(int)))
    assert pairs == set(NB_IDS.items())
    shapes = []
    for raster in NB_RASTERS:
        with rasterio.open(raster) as ds:
            assert ds.crs.to_epsg() == 2953 and ds.res == (0.5, 0.5) and ds.count == 3 and ds.dtypes[0] == "uint8"
            shapes.append((ds.width, ds.height))
    assert shapes == [(280, 341), (326, 482)]


def test_new_brunswick_tiles_classes_counts_and_labels(tmp_path):
    meta, index, masks = tile("new_brunswick", nb_entry(), tmp_path / "nb")
    assert meta.classes == NB_CLASSES and meta.bands == 3 and meta.dtype == "uint8"
    assert meta.splits == NB_SPLITS
    counts = {c: int(index[f"px_{c}"].sum()) for c in NB_CLASSES}
    assert counts == NB_PIXELS
    assert int(index["px_unlabelled"].sum()) == 21 * TILE * TILE - (280 * 341 + 326 * 482)  # padding only
    per_split = index.groupby("split")[[f"px_{c}" for c in NB_CLASSES]].sum()
    # every class in every split with 128-px blocks, but for the one railway polygon (in 3 blocks), not in test
    absent = {(s, c[3:]) for s, row in per_split.iterrows() for c, v in row.items() if v == 0}
    assert absent == {("test", "railway")}, per_split
    refs = {r.stem: reference(r, NB_LABELS, nb_ids) for r in NB_RASTERS}
    assert_tiles_equal_reference(index, masks, refs)


def test_new_brunswick_unlabelled_ignore_marks_ground_under_no_polygon_unknown(tmp_path):
    """`unlabelled: ignore`: ground under no polygon (66 % of clip 1) is unknown (255), not background; tiles, splits
    and band statistics (over image pixels, labelled or not) stay those of `unlabelled: background`."""
    meta_bg, index_bg, _ = tile("new_brunswick", nb_entry(), tmp_path / "bg")
    meta, index, masks = tile("new_brunswick", nb_entry() | {"unlabelled": "ignore"}, tmp_path / "ignore")
    refs = {r.stem: reference(r, NB_LABELS, nb_ids) for r in NB_RASTERS}
    assert float((refs[NB_RASTERS[0].stem] == 0).mean()) == pytest.approx(0.664, abs=0.001)
    assert_tiles_equal_reference(index, masks, {k: np.where(v == 0, IGNORE, v) for k, v in refs.items()})
    assert int(index["px_background"].sum()) == 0
    assert int(index["px_unlabelled"].sum()) == int(index_bg["px_unlabelled"].sum()) + NB_PIXELS["background"]
    assert {c: int(index[f"px_{c}"].sum()) for c in NB_CLASSES[1:]} == {c: NB_PIXELS[c] for c in NB_CLASSES[1:]}
    assert meta.splits == meta_bg.splits and index.valid_fraction.tolist() == index_bg.valid_fraction.tolist()
    assert (meta.band_mean, meta.band_std) == (meta_bg.band_mean, meta_bg.band_std)


def test_new_brunswick_larger_blocks_starve_the_test_split(tmp_path):
    """Why the block is one tile: with 256-px blocks there are 8 blocks for 3 splits and (seed 0) the test split gets
    2 tiles with neither a road nor a building."""
    meta, index, _ = tile("new_brunswick", nb_entry(block_size=256, seed=0), tmp_path / "nb")
    assert meta.splits == {"train": 15, "val": 4, "test": 2}
    test = index[index.split == "test"]
    assert test["px_road"].sum() == 0 and test["px_building"].sum() == 0


def test_new_brunswick_split_by_source_is_refused(tmp_path):
    entry = nb_entry() | {"split": {"by": "source", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}}
    with pytest.raises(EqsegError, match="split.by=source needs a source for each split"):
        tile("new_brunswick", entry, tmp_path / "nb")


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32619"])
def test_reprojected_labels_match_rasterisation_in_raster_crs(tmp_path, crs):
    """Labels written in another CRS (WGS84; UTM 19N) are reprojected by the tiler to each clip's CRS and give the
    very pixels rasterised here from the original labels in that CRS."""
    nb_labels, ma_labels = tmp_path / "nb.gpkg", tmp_path / "ma.gpkg"
    pyogrio.write_dataframe(pyogrio.read_dataframe(NB_LABELS).to_crs(crs), nb_labels)
    pyogrio.write_dataframe(pyogrio.read_dataframe(MA_LABELS).to_crs(crs), ma_labels)
    _, index, masks = tile("new_brunswick", nb_entry(nb_labels), tmp_path / "nb")
    assert_tiles_equal_reference(index, masks, {r.stem: reference(r, NB_LABELS, nb_ids) for r in NB_RASTERS})
    _, index, masks = tile("massachusetts", ma_entry(ma_labels), tmp_path / "ma")
    assert_tiles_equal_reference(index, masks, {MA_RASTER.stem: reference(MA_RASTER, MA_LABELS, ma_ids)}, once=False)


def split_overlaps(index) -> dict[tuple[str, str], float]:
    """Ground area (m2) seen by tiles of two different splits, per pair of splits, from the tiles' footprints."""
    union = {s: index[index.split == s].union_all() for s in ("train", "val", "test")}
    return {(a, b): union[a].intersection(union[b]).area for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}


def test_no_tile_straddles_splits(tmp_path):
    """Each tile lies inside one 128-px block and its footprint (EPSG:2953) is its pixel window through the clip's
    transform; no ground is seen by two splits, although the two clips overlap: the blocks of both clips holding the
    shared strip are one split unit."""
    meta, index, _ = tile("new_brunswick", nb_entry(), tmp_path / "nb")
    assert index.crs.to_epsg() == 2953
    clips = {}
    for r in NB_RASTERS:
        with rasterio.open(r) as ds:
            clips[r.stem] = (ds.transform, ds.height, ds.width, shapely.box(*ds.bounds))
    a, b = clips.values()
    assert a[3].intersection(b[3]).area == pytest.approx(NB_OVERLAP_M2, abs=0.1)
    for t in index.itertuples():
        assert t.row % TILE == 0 and t.col % TILE == 0  # block origin = tile origin: nothing crosses a block edge
        tr, height, width, _ = clips[t.source]
        h, w = min(TILE, height - t.row), min(TILE, width - t.col)
        x0, y0 = tr * (t.col, t.row)
        x1, y1 = tr * (t.col + w, t.row + h)
        assert t.geometry.equals_exact(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), 1e-6)
    assert meta.splits == NB_SPLITS
    assert split_overlaps(index) == {("train", "val"): 0, ("train", "test"): 0, ("val", "test"): 0}
    # the tiles of the two clips that see the same ground: all in one split (val with seed 0)
    one, two = (index[index.source == r.stem] for r in NB_RASTERS)
    shared = {(t.source[-4:], t.row, t.col) for a, b in ((one, two), (two, one)) for t in a.itertuples()
              if b.geometry.intersection(t.geometry).area.max() > 0}
    assert shared == NB_SHARED_UNIT
    assert set(index[[(s[-4:], r, c) in NB_SHARED_UNIT for s, r, c in zip(index.source, index.row, index.col)]].split) == {"val"}
    # every seed: never any ground in two splits
    for seed in (1, 2, 3):
        _, other, _ = tile("new_brunswick", nb_entry(seed=seed), tmp_path / f"nb_seed{seed}")
        assert sum(split_overlaps(other).values()) == 0, seed


def test_massachusetts_clip_labels_and_clipping(tmp_path):
    """441 building polygons, 7 of them reaching the 92x169 clip: only those are burned (the rest clipped away),
    in two 128-px tiles padded across, the second shifted up inside the clip; a test-only dataset: both in test, band
    statistics over all its tiles."""
    gdf = pyogrio.read_dataframe(MA_LABELS)
    with rasterio.open(MA_RASTER) as ds:
        assert (ds.width, ds.height, ds.count, ds.crs.to_epsg()) == (92, 169, 3, 26986)
        assert ds.res == pytest.approx((0.99728, 0.99771), abs=1e-5)  # "1 m": not quite, and not square
        inside = gdf.intersects(shapely.box(*ds.bounds))
    assert len(gdf) == 441 and gdf.crs.to_epsg() == 26986 and int(inside.sum()) == 7
    meta, index, masks = tile("massachusetts", ma_entry(), tmp_path / "ma")
    assert meta.n_tiles == 2 and meta.splits == {"train": 0, "val": 0, "test": 2} and meta.stats_from == "all"
    assert index[["row", "col"]].values.tolist() == [[0, 0], [169 - TILE, 0]]
    assert {c: int(index[f"px_{c}"].sum()) for c in MA_PIXELS} == MA_PIXELS
    assert int(index["px_unlabelled"].sum()) == 2 * TILE * (TILE - 92)
    assert_tiles_equal_reference(index, masks, {MA_RASTER.stem: reference(MA_RASTER, MA_LABELS, ma_ids)}, once=False)
    # the statistics of all tiles, each pixel once: tiles at rows 0 and 41 overlap on rows 41-127, cut at the middle
    # (window centres 64 and 105: rows 0-84 belong to the first, row 84's centre 84.5 lying as far from both and
    # going to the lower tile, rows 85-168 to the second), on every other row and column of each tile (local rows
    # 0, 2, ..., 84 of the first; 44, 46, ..., 126 of the second)
    with rasterio.open(MA_RASTER) as ds:
        scene = ds.read()
    rows = list(range(0, 85, 2)) + [169 - TILE + r for r in range(44, TILE, 2)]
    x = scene[:, rows, ::2].reshape(3, -1).astype(np.float64)
    assert meta.band_mean == pytest.approx(x.mean(axis=1).tolist(), rel=1e-12)
    # only the polygons inside the clip matter: the same store from those 7 alone
    only_inside = tmp_path / "inside.gpkg"
    pyogrio.write_dataframe(gdf[inside], only_inside)
    _, _, masks_inside = tile("massachusetts", ma_entry(only_inside), tmp_path / "ma_inside")
    assert np.array_equal(masks, masks_inside)
    # and the polygons outside it alone label nothing there: refused with one line naming the file
    outside = tmp_path / "outside.gpkg"
    pyogrio.write_dataframe(gdf[~inside], outside)
    with pytest.raises(EqsegError, match="outside.gpkg: labels do not overlap the raster"):
        tile("massachusetts", ma_entry(outside), tmp_path / "ma_outside")


def test_massachusetts_matches_new_brunswick_buildings(tmp_path):
    """What Massachusetts can score: a building model trained on New Brunswick with its classes merged into
    building / not building (same classes, 3 uint8 bands; 0.5 m against about 1 m)."""
    merged = {name: int(name == "Building") for name in NB_IDS}
    nb_meta, nb_index, _ = tile("nb_buildings", nb_entry() | {"class_values": merged, "classes": ["background", "building"]}, tmp_path / "nb")
    ma_meta, _, _ = tile("massachusetts", ma_entry(), tmp_path / "ma")
    assert (nb_meta.classes, nb_meta.bands, nb_meta.dtype) == (ma_meta.classes, ma_meta.bands, ma_meta.dtype)
    assert int(nb_index["px_building"].sum()) == NB_PIXELS["building"] and nb_meta.stats_from == "train"
    assert int(nb_index["px_background"].sum()) == sum(NB_PIXELS.values()) - NB_PIXELS["building"]


def test_massachusetts_rgb_cannot_join_panchromatic_spacenet(tmp_path):
    """RGB Massachusetts and 1-band SpaceNet in one dataset are refused: a SpaceNet model cannot be scored on it."""
    entry = ma_entry() | {"scenes": [{"raster": str(SPACENET / "sample_geotiff.tif"), "labels": str(SPACENET / "geotiff_labels.geojson")},
                                     {"raster": str(MA_RASTER), "labels": str(MA_LABELS)}]}
    with pytest.raises(EqsegError, match=r"different band counts \[1, 3\]"):
        tile("buildings", entry, tmp_path / "b")
