"""The tile store's meta.json as a typed record: what the writer writes, read back the same to the byte."""

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

from eqseg.config import GeoTiffDataset, Scene, SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.tiling.meta import SourceMeta, StoreMeta
from eqseg.tiling.store import TileStore, build_tile_store
from eqseg.utils.atomic import write_json


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A small georeferenced store: one 256-px, 3-band scene, 64-px tiles, split by block."""
    tmp = tmp_path_factory.mktemp("meta")
    raster, labels = tmp / "a.tif", tmp / "a.geojson"
    with rasterio.open(raster, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 1.0, 1.0)) as ds:
        ds.write(np.random.default_rng(0).integers(1, 250, (3, 256, 256), dtype=np.uint8))
    gpd.GeoDataFrame({"cls": [1]}, geometry=[box(500010, 3999940, 500060, 3999990)], crs="EPSG:32633").to_file(labels)
    cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "thing"], scenes=[Scene(raster=str(raster), labels=str(labels))],
                         split=SplitConfig(by="block", block_size=128, fractions={"train": 0.5, "test": 0.5}))
    built = build_tile_store("tiny", cfg, TileConfig(size=64), tmp / "tiles")
    assert isinstance(built, StoreMeta)
    return tmp / "tiles"


def test_built_store_meta_is_typed_cached_and_round_trips_to_the_byte(store_dir, tmp_path):
    store = TileStore(store_dir)
    meta = store.meta
    assert isinstance(meta, StoreMeta) and store.meta is meta  # read once
    assert (meta.dataset, meta.classes, meta.num_classes, meta.bands, meta.dtype) == ("tiny", ["bg", "thing"], 2, 3, "uint8")
    assert (meta.tile_size, meta.overlap, meta.n_tiles, meta.stats_from) == (64, 0, 16, "train")
    assert meta.n_tiles == len(store.index) == sum(meta.splits.values()) and len(meta.band_mean) == len(meta.band_std) == 3
    src = meta.sources[0]
    assert isinstance(src, SourceMeta) and not src.is_slide
    assert (src.name, src.height, src.width, src.crs) == ("a", 256, 256, "EPSG:32633")
    assert src.transform == [1.0, 0.0, 500000.0, 0.0, -1.0, 4000000.0]
    written = (store_dir / "meta.json").read_text()
    assert meta.model_dump() == json.loads(written)
    write_json(tmp_path / "again.json", meta.model_dump())  # as the writer writes it
    assert (tmp_path / "again.json").read_text() == written
    assert StoreMeta.model_validate_json(meta.model_dump_json()) == meta


def test_slide_fields_appear_for_slides_only():
    geo = dict(name="a", height=10, width=20, crs=None, transform=None)
    slide = dict(name="s", height=10, width=20, crs=None, transform=None, level=1, mpp=None, downsample=2.0)
    assert SourceMeta.model_validate(geo).model_dump() == geo  # no level, mpp nor downsample keys
    assert SourceMeta.model_validate(slide).model_dump() == slide  # an unknown mpp stays, as null
    with pytest.raises(ValueError, match="mpp and downsample go with a slide's level"):
        SourceMeta.model_validate(geo | dict(mpp=0.5))


def _broken(store_dir: Path, tmp_path: Path, text: str | None) -> Path:
    out = tmp_path / "tiles"
    shutil.copytree(store_dir, out)
    if text is not None:
        (out / "meta.json").write_text(text)
    return out


def _edited(store_dir: Path, **change) -> str:
    record = json.loads((store_dir / "meta.json").read_text())
    for k, v in change.items():
        if v is None:
            del record[k]
        else:
            record[k] = v
    return json.dumps(record)


@pytest.mark.parametrize("case", ["not json", "empty", "missing key", "unknown key", "wrong type", "inconsistent",
                                  "bad source"])
def test_corrupt_meta_is_one_line_naming_the_file(store_dir, tmp_path, case):
    text = {
        "not json": lambda: '{"dataset": "tiny",',
        "empty": lambda: "",
        "missing key": lambda: _edited(store_dir, bands=None),
        "unknown key": lambda: _edited(store_dir, colour="red"),
        "wrong type": lambda: _edited(store_dir, band_mean="high"),
        "inconsistent": lambda: _edited(store_dir, num_classes=3),
        "bad source": lambda: _edited(store_dir, sources=[{"name": "a", "height": "tall"}]),
    }[case]()
    out = _broken(store_dir, tmp_path, text)
    store = TileStore(out)  # the arrays are still readable; the record is read when asked for
    with pytest.raises(EqsegError) as err:
        store.meta
    msg = str(err.value)
    assert msg.startswith(f"{out / 'meta.json'}: ") and "\n" not in msg, msg
    want = {"not json": "not valid JSON", "empty": "not valid JSON", "missing key": "bands: Field required",
            "unknown key": "colour: unknown key", "wrong type": "band_mean: Input should be a valid list",
            "inconsistent": "num_classes 3 but 2 classes", "bad source": "sources.0.height"}[case]
    assert want in msg, msg


def test_missing_meta_names_the_file(store_dir, tmp_path):
    out = _broken(store_dir, tmp_path, None)
    (out / "meta.json").unlink()
    with pytest.raises(EqsegError, match=r"tiles: not a tile store \(missing meta.json\)"):
        TileStore(out)
    with pytest.raises(EqsegError) as err:
        StoreMeta.load(out / "meta.json")
    assert str(err.value) == f"{out / 'meta.json'}: missing; run `eqseg tile` first"
