"""Bad input gets one clear line, a non-zero exit, and no half-written output."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from shapely.affinity import translate

DATA = Path(__file__).resolve().parents[1] / "data" / "spacenet_atlanta"


def write_params(path: Path, raster: Path, labels: Path, **dataset) -> Path:
    p = yaml.safe_load((Path(__file__).parent / "smoke" / "params.yaml").read_text())
    p.pop("slides")
    p["datasets"] = {"scene": {"kind": "geotiff", "classes": ["background", "building"],
                               "scenes": [{"raster": str(raster), "labels": str(labels)}],
                               "split": {"by": "block", "block_size": 256}, **dataset}}
    p["grid"]["datasets"] = ["scene"]
    path.write_text(yaml.safe_dump(p))
    return path


def expect_error(eqseg_cli, tmp_path: Path, params: Path, *needles: str) -> str:
    out = tmp_path / "out"
    proc = eqseg_cli(["tile", "scene", "--params", str(params), "--out", str(out)], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("eqseg tile: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


def test_missing_raster(eqseg_cli, tmp_path):
    params = write_params(tmp_path / "p.yaml", tmp_path / "nope.tif", DATA / "geotiff_labels.geojson")
    expect_error(eqseg_cli, tmp_path, params, "nope.tif", "not found")


def test_corrupt_tiff(eqseg_cli, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 5000)
    params = write_params(tmp_path / "p.yaml", bad, DATA / "geotiff_labels.geojson")
    expect_error(eqseg_cli, tmp_path, params, "bad.tif", "cannot")


def test_truncated_tiff(eqseg_cli, tmp_path):
    cut = tmp_path / "cut.tif"
    cut.write_bytes((DATA / "sample_geotiff.tif").read_bytes()[:800_000])
    params = write_params(tmp_path / "p.yaml", cut, DATA / "geotiff_labels.geojson")
    expect_error(eqseg_cli, tmp_path, params, "cut.tif", "truncated")


def test_labels_without_crs(eqseg_cli, tmp_path):
    gdf = gpd.read_file(DATA / "geotiff_labels.geojson")
    shp = tmp_path / "labels.shp"
    gdf.to_file(shp)
    shp.with_suffix(".prj").unlink()
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", shp)
    expect_error(eqseg_cli, tmp_path, params, "labels.shp", "no CRS")


def test_labels_outside_raster(eqseg_cli, tmp_path):
    gdf = gpd.read_file(DATA / "geotiff_labels.geojson")
    gdf["geometry"] = gdf.geometry.apply(lambda g: translate(g, xoff=50_000))
    far = tmp_path / "far.gpkg"
    gdf.to_file(far)
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", far)
    expect_error(eqseg_cli, tmp_path, params, "far.gpkg", "do not overlap")


def test_unknown_class_field(eqseg_cli, tmp_path):
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", DATA / "geotiff_labels.geojson", class_field="kind")
    expect_error(eqseg_cli, tmp_path, params, "unknown class field 'kind'")


@pytest.mark.parametrize(
    "section, key, value, needles",
    [
        ("train", "epochs", -1, ["train.epochs", "greater than 0"]),
        ("train", "epoch", 3, ["train.epoch", "unknown key"]),
        ("train", "augment", "rot", ["train.augment", "'none' or 'd4'", "'rot'"]),
        ("tile", "overlap", 64, ["tile", "overlap (64) must be smaller than size (64)"]),
        ("grid", "models", ["resnet"], ["grid.models", "'resnet'"]),
    ],
)
def test_invalid_params_name_the_key(eqseg_cli, tmp_path, section, key, value, needles):
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", DATA / "geotiff_labels.geojson")
    p = yaml.safe_load(params.read_text())
    p[section][key] = value
    params.write_text(yaml.safe_dump(p))
    expect_error(eqseg_cli, tmp_path, params, "p.yaml", *needles)


def test_missing_params_file(eqseg_cli, tmp_path):
    expect_error(eqseg_cli, tmp_path, tmp_path / "absent.yaml", "absent.yaml", "not found")


def test_failed_retile_keeps_the_previous_store(eqseg_cli, tmp_path):
    good = write_params(tmp_path / "good.yaml", DATA / "sample_geotiff.tif", DATA / "geotiff_labels.geojson")
    out = tmp_path / "tiles"
    assert eqseg_cli(["tile", "scene", "--params", str(good), "--out", str(out)], cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in out.iterdir())
    shutil.copy(DATA / "sample_geotiff.tif", tmp_path / "cut.tif")
    (tmp_path / "cut.tif").write_bytes((DATA / "sample_geotiff.tif").read_bytes()[:800_000])
    bad = write_params(tmp_path / "bad.yaml", tmp_path / "cut.tif", DATA / "geotiff_labels.geojson")
    assert eqseg_cli(["tile", "scene", "--params", str(bad), "--out", str(out)], cwd=tmp_path).returncode == 2
    assert sorted(p.name for p in out.iterdir()) == before
