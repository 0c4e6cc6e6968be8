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
    p["grid"]["test_on"], p["compare"] = [], []  # smoke extras that name its datasets
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
        ("train", "augment", "d4", ["train.augment", "moved", "grid.variants"]),
        ("train", "amp", True, ["train.amp", "replaced by train.precision"]),
        ("train", "precision", "half", ["train.precision", "'auto', 'fp32', 'bf16' or 'fp16'", "'half'"]),
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


def _rename_key(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


# Every name from params that becomes a path or a command-line word, set to something that would leave its folder
# (or a shell's word): (what to change, the key path the one line must name).
NAME_PATHS = [
    (lambda p, v: p["slides"]["cpm15_slides"]["slides"].update({v: {"mpp": 0.5}}), "slides.cpm15_slides.slides"),
    (lambda p, v: p["slides"]["cpm15_slides"].update(mask_suffix=v), "slides.cpm15_slides.mask_suffix"),
    (lambda p, v: p["datasets"]["cpm15"].update(mask_suffix=v), "datasets.cpm15.mask_suffix"),
    (lambda p, v: _rename_key(p["datasets"], "cpm15", v), "datasets"),
    (lambda p, v: _rename_key(p["slides"], "cpm15_slides", v), "slides"),
    (lambda p, v: p["compare"][0].update(name=v), "compare.0.name"),
    (lambda p, v: p["mlflow"].update(experiment=v), "mlflow.experiment"),
]


@pytest.mark.parametrize("bad", ["../escaped", "a/b", "/abs", "..", "x y", "$(touch pwned)", "a;b"])
@pytest.mark.parametrize("change, key", NAME_PATHS, ids=[k for _, k in NAME_PATHS])
def test_names_that_become_paths_are_checked(change, key, bad):
    """A name from params that leaves its folder ('../escaped' made `make-slides` write beside --out) or is more than
    one shell word is one line naming the key, before anything runs."""
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError

    p = yaml.safe_load((ROOT / "tests/smoke/params.yaml").read_text())
    parse_params(p, "p.yaml")  # the smoke params themselves are fine
    change(p, bad)
    with pytest.raises(EqsegError) as err:
        parse_params(p, "p.yaml")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"p.yaml: {key}: "), line
    assert repr(bad) in line and ("not a valid name" in line or "letters, digits, _ . - only" in line), line


def test_a_slide_name_cannot_take_the_file_of_another_slides_mask():
    from eqseg.config import parse_params
    from eqseg.errors import EqsegError

    p = yaml.safe_load((ROOT / "tests/smoke/params.yaml").read_text())
    p["slides"]["cpm15_slides"]["slides"]["cpm15_20x.mask"] = {"mpp": 0.5}  # cpm15_20x.mask.ome.tif twice
    with pytest.raises(EqsegError, match=r"^p\.yaml: slides\.cpm15_slides\.slides: 'cpm15_20x' and 'cpm15_20x\.mask'"):
        parse_params(p, "p.yaml")


@pytest.mark.parametrize("good", ["_mask", "", "-gt.v2"])
def test_ordinary_mask_suffixes_are_accepted(good):
    from eqseg.config import parse_params

    p = yaml.safe_load((ROOT / "tests/smoke/params.yaml").read_text())
    p["slides"]["cpm15_slides"]["mask_suffix"] = p["datasets"]["cpm15"]["mask_suffix"] = good
    parse_params(p, "p.yaml")


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


# --------------------------------------------------------------------------------------------- every command
# Each bad input below runs the real `eqseg` entry point (in this process, for speed: no interpreter and torch start
# per case) and must end as one stderr line `eqseg <cmd>: error: ...`, exit status 2, and leave the workspace as it
# was: no output, no temporary, nothing replaced. docs/errors.md lists the same inputs with the lines they print.
ROOT = Path(__file__).resolve().parents[1]


def absolute_params(dest: Path) -> Path:
    """The smoke params with every data path absolute and the MLflow store inside dest."""
    p = yaml.safe_load((ROOT / "tests/smoke/params.yaml").read_text())
    for d in p["datasets"].values():
        for key in ("images", "masks"):
            if key in d:
                d[key] = str(ROOT / d[key])
        for s in d.get("scenes", []):
            s.update(raster=str(ROOT / s["raster"]), labels=str(ROOT / s["labels"]))
    for g in p["slides"].values():
        g.update(images=str(ROOT / g["images"]), masks=str(ROOT / g["masks"]))
    p["mlflow"]["tracking_uri"] = f"sqlite:///{dest / 'mlflow.db'}"
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest / "params.yaml"


def call_main(args: list[str], cwd: Path, capfd) -> tuple[int, str]:
    """Run eqseg.cli.main with these arguments in cwd; return (exit status, stderr)."""
    import os
    import sys

    from eqseg.cli import main

    argv, here = sys.argv, Path.cwd()
    sys.argv = ["eqseg", *args]
    os.chdir(cwd)
    capfd.readouterr()
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return status, capfd.readouterr().err


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("ws"))


def make_workspace(ws: Path) -> Path:
    """Fill the empty folder ws for CASES (docs/errors_table.py builds the same): absolute params, a real 1-band
    SpaceNet tile store, a 3-band and a 1-band model (untrained, saved the way `eqseg train` saves them), a folder of
    the user's own files, and a copy of the scene raster."""
    import torch

    from eqseg.config import load_params
    from eqseg.models import build
    from eqseg.models.checkpoint import ModelInfo, save_model
    from eqseg.tiling.store import build_tile_store

    params = absolute_params(ws)
    p = load_params(params)
    build_tile_store("spacenet_atlanta", p.dataset("spacenet_atlanta"), p.tile, ws / "tiles")
    torch.manual_seed(0)
    (ws / "rgb_model").mkdir()
    info = ModelInfo(model="unet", options=p.models["unet"], in_channels=3, num_classes=2, classes=["background", "nucleus"],
                     band_mean=[0.0] * 3, band_std=[1.0] * 3, tile_size=64, dataset="cpm15")
    save_model(ws / "rgb_model" / "model.pt", build("unet", 3, 2, **p.models["unet"]), info)
    (ws / "grey_model").mkdir()
    grey = info.model_copy(update=dict(in_channels=1, classes=["background", "building"], band_mean=[0.0], band_std=[1.0],
                                       dataset="spacenet_atlanta"))
    save_model(ws / "grey_model" / "model.pt", build("unet", 1, 2, **p.models["unet"]), grey)
    (ws / "mine").mkdir()
    (ws / "mine" / "thesis.tex").write_text("years of work")
    shutil.copy(DATA / "sample_geotiff.tif", ws / "scene.tif")
    (ws / "broken.yaml").write_text("grid: [1\n")
    typo = yaml.safe_load(params.read_text())
    typo["weak"]["options"] = {"points": {"per_objekt": 2}}
    (ws / "weak_typo.yaml").write_text(yaml.safe_dump(typo))
    escape = yaml.safe_load(params.read_text())  # a slide name that would be written outside make-slides' --out
    escape["slides"]["cpm15_slides"]["slides"] = {"../escaped": {"mpp": 0.5, "include": ["image01.png"]}}
    (ws / "escape.yaml").write_text(yaml.safe_dump(escape))
    (ws / "taken.json").mkdir()  # a folder where predict --out taken.tif would write its metrics taken.json
    (ws / "taken.json" / "notes.txt").write_text("mine too")
    return ws


P = ["--params", "params.yaml"]
CASES = {
    # command, arguments, what the one line must contain
    "check-missing-params": (["check", "--params", "absent.yaml"], ["absent.yaml", "not found"]),
    "check-broken-yaml": (["check", "--params", "broken.yaml"], ["broken.yaml", "not valid YAML"]),
    "check-unknown-weak-option": (["check", "--params", "weak_typo.yaml"], ["weak.options.points.per_objekt", "unknown option"]),
    "tile-missing-params": (["tile", "spacenet_atlanta", "--params", "absent.yaml"], ["absent.yaml", "not found"]),
    "tile-unknown-dataset": (["tile", "nodata", *P], ["unknown dataset 'nodata'"]),
    "tile-foreign-out": (["tile", "spacenet_atlanta", *P, "--out", "mine"], ["mine", "not written by eqseg", "another --out"]),
    "tile-usage": (["tile", *P], ["Missing argument 'DATASET'", "--help"]),
    "tile-unknown-option": (["tile", "spacenet_atlanta", *P, "--bogus"], ["No such option '--bogus'", "--help"]),
    "weak-unknown-dataset": (["weak", "nodata", "full", *P, "--out", "w"], ["unknown dataset 'nodata'"]),
    "weak-missing-tiles": (["weak", "spacenet_atlanta", "full", *P, "--tiles", "nowhere", "--out", "w"], ["nowhere", "not a tile store"]),
    "weak-unknown-supervision": (["weak", "spacenet_atlanta", "nonsense", *P, "--tiles", "tiles", "--out", "w"], ["'nonsense'"]),
    "weak-foreign-out": (["weak", "spacenet_atlanta", "full", *P, "--tiles", "tiles", "--out", "mine"], ["mine", "not written by eqseg"]),
    "train-missing-params": (["train", "--params", "absent.yaml", "--dataset", "spacenet_atlanta", "--model", "unet", "--out", "m"],
                             ["absent.yaml", "not found"]),
    "train-unknown-dataset": (["train", *P, "--dataset", "nodata", "--model", "unet", "--out", "m"], ["unknown dataset 'nodata'"]),
    "train-foreign-out": (["train", *P, "--dataset", "spacenet_atlanta", "--model", "unet", "--tiles", "tiles", "--labels", "nowhere",
                           "--out", "mine"], ["mine", "not written by eqseg"]),
    "train-unknown-model": (["train", *P, "--dataset", "spacenet_atlanta", "--model", "resnet", "--tiles", "tiles", "--out", "m"],
                            ["'resnet'"]),
    "train-missing-tiles": (["train", *P, "--dataset", "spacenet_atlanta", "--model", "unet", "--tiles", "nowhere",
                             "--labels", "nowhere", "--out", "m"], ["nowhere", "not a tile store"]),
    "train-usage": (["train", *P, "--dataset", "spacenet_atlanta", "--model", "unet"], ["Missing option '--out'"]),
    "evaluate-missing-model": (["evaluate", *P, "--model-dir", "nowhere", "--tiles", "tiles", "--out", "e"], ["nowhere/model.pt", "not found"]),
    "evaluate-missing-tiles": (["evaluate", *P, "--model-dir", "rgb_model", "--tiles", "nowhere", "--out", "e"], ["nowhere", "not a tile store"]),
    "evaluate-3-band-model-on-1-band-tiles": (["evaluate", *P, "--model-dir", "rgb_model", "--tiles", "tiles", "--out", "e"],
                                              ["tiles: 1 band", "unet", "3"]),
    # --out refused before any work: each of these inputs would fail later (3-band model on 1-band tiles, a cell
    # never evaluated), so the refusal line proves the folder was checked first
    "evaluate-foreign-out": (["evaluate", *P, "--model-dir", "rgb_model", "--tiles", "tiles", "--out", "mine"],
                             ["mine", "not written by eqseg", "another --out"]),
    "predict-missing-model": (["predict", *P, "--model-dir", "nowhere", "--raster", "scene.tif", "--out", "p.tif"], ["nowhere/model.pt", "not found"]),
    "predict-no-source": (["predict", *P, "--model-dir", "rgb_model", "--out", "p.tif"], ["--raster"]),
    "predict-over-its-input": (["predict", *P, "--model-dir", "grey_model", "--raster", "scene.tif", "--out", "scene.tif"],
                               ["scene.tif", "replace the input"]),
    "predict-out-is-a-folder": (["predict", *P, "--model-dir", "grey_model", "--raster", "scene.tif", "--out", "mine"],
                                ["'--out'", "mine", "is a directory"]),
    "predict-metrics-is-a-folder": (["predict", *P, "--model-dir", "grey_model", "--raster", "scene.tif", "--out", "p.tif",
                                     "--metrics", "mine"], ["'--metrics'", "mine", "is a directory"]),
    "predict-default-metrics-is-a-folder": (["predict", *P, "--model-dir", "grey_model", "--raster", "scene.tif",
                                             "--out", "taken.tif"], ["taken.json", "is a folder", "will not be replaced"]),
    "predict-dataset-unknown-dataset": (["predict-dataset", *P, "--model-dir", "rgb_model", "--dataset", "nodata", "--out", "pd"],
                                        ["unknown dataset 'nodata'"]),
    "predict-dataset-missing-model": (["predict-dataset", *P, "--model-dir", "nowhere", "--dataset", "spacenet_atlanta",
                                       "--tiles", "tiles", "--out", "pd"], ["nowhere/model.pt", "not found"]),
    "predict-dataset-foreign-out": (["predict-dataset", *P, "--model-dir", "rgb_model", "--dataset", "spacenet_atlanta",
                                     "--tiles", "tiles", "--out", "mine"], ["mine", "not written by eqseg", "another --out"]),
    "compare-foreign-out": (["compare", *P, "--model-a", "rgb_model", "--model-b", "rgb_model", "--tiles", "tiles",
                             "--out", "mine"], ["mine", "not written by eqseg", "another --out"]),
    "report-missing-metrics": (["report", *P, "--out", "rep"], ["metrics.json", "missing", "run evaluate"]),
    "report-missing-params": (["report", "--params", "absent.yaml", "--out", "rep"], ["absent.yaml", "not found"]),
    "report-foreign-out": (["report", *P, "--out", "mine"], ["mine", "not written by eqseg", "another --out"]),
    "make-slide-missing-images": (["make-slide", "--images", "nowhere", "--masks", "nowhere", "--mpp", "0.5", "--out", "s.ome.tif",
                                   "--mask-out", "m.ome.tif"], ["nowhere", "images folder not found"]),
    "make-slides-unknown-group": (["make-slides", "nogroup", *P, "--out", "sl"], ["no slides group 'nogroup'"]),
    "make-slides-foreign-out": (["make-slides", "cpm15_slides", *P, "--out", "mine"], ["mine", "not written by eqseg"]),
    "make-slides-escaping-slide-name": (["make-slides", "cpm15_slides", "--params", "escape.yaml", "--out", "sl"],
                                        ["escape.yaml", "slides.cpm15_slides.slides", "'../escaped'", "not a valid name"]),
    "weak-for-a-distilled-student": (["weak", "spacenet_atlanta", "points+distill", *P, "--tiles", "tiles", "--out", "w"],
                                     ["'points+distill'", "eqseg distill"]),
    "distill-missing-teacher": (["distill", *P, "--model-dir", "nowhere", "--tiles", "tiles", "--labels", "nowhere",
                                 "--out", "ps"], ["nowhere", "config.json"]),
    "distill-foreign-out": (["distill", *P, "--model-dir", "rgb_model", "--tiles", "tiles", "--labels", "nowhere",
                             "--out", "mine"], ["mine", "not written by eqseg"]),
    "distill-usage": (["distill", *P, "--model-dir", "rgb_model"], ["Missing option"]),
    "train-distill-without-pseudo-labels": (["train", *P, "--dataset", "spacenet_atlanta", "--model", "unet", "--supervision",
                                             "points+distill", "--tiles", "tiles", "--out", "m"],
                                            ["results/pseudo/spacenet_atlanta/unet/points/d4/b100/seed0", "eqseg distill"]),
    "digits-missing-params": (["digits", "--params", "absent.yaml", "--model", "cnn", "--out", "d"], ["absent.yaml", "not found"]),
    "digits-bad-model": (["digits", *P, "--model", "resnet", "--out", "d"], ["'--model'", "'resnet'"]),
    "digits-foreign-out": (["digits", *P, "--model", "cnn", "--out", "mine"], ["mine", "not written by eqseg"]),
    "tracking-init-missing-params": (["tracking-init", "--params", "absent.yaml"], ["absent.yaml", "not found"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_fails_in_one_line(ws, capfd, case):
    args, needles = CASES[case]
    before = snapshot(ws)
    status, err = call_main(args, ws, capfd)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"eqseg {args[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(ws) == before, "the failed command changed the workspace"


def test_tile_refuses_a_folder_of_user_files(eqseg_cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", DATA / "geotiff_labels.geojson")
    proc = eqseg_cli(["tile", "scene", "--params", str(params), "--out", str(mine)], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not written by eqseg" in proc.stderr, proc.stderr
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p.yaml"]


def test_retile_replaces_its_own_output_and_next_run_removes_a_killed_runs_leftover(eqseg_cli, tmp_path):
    import signal
    import subprocess
    import time

    from conftest import BIN, tool_env

    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", DATA / "geotiff_labels.geojson")
    out = tmp_path / "tiles"
    cmd = [str(BIN / "eqseg"), "tile", "scene", "--params", str(params), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".tiles.tmp-")] and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiles.")]
    assert left and f".{proc.pid}." in left[0], left  # killed while writing: its temporary folder is left
    assert eqseg_cli(cmd[1:], cwd=tmp_path).returncode == 0
    assert eqseg_cli(cmd[1:], cwd=tmp_path).returncode == 0  # its own output: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml", "tiles"]  # the leftover is gone
    assert (out / ".eqseg-output.json").is_file() and (out / "meta.json").is_file()


def test_empty_label_file(eqseg_cli, tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", empty)
    expect_error(eqseg_cli, tmp_path, params, "empty.geojson", "has no features")


def test_png_renamed_tif(eqseg_cli, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "pic.png")
    (tmp_path / "pic.png").rename(tmp_path / "pic.tif")
    params = write_params(tmp_path / "p.yaml", tmp_path / "pic.tif", DATA / "geotiff_labels.geojson")
    expect_error(eqseg_cli, tmp_path, params, "pic.tif", "not a GeoTIFF", "PNG", "no georeferencing")


def test_self_intersecting_polygon_is_repaired_and_said_once(eqseg_cli, tmp_path):
    from shapely.geometry import Polygon

    gdf = gpd.read_file(DATA / "geotiff_labels.geojson")
    c, d = gdf.geometry.iloc[0].centroid, 0.0002
    bowtie = Polygon([(c.x - d, c.y - d), (c.x + d, c.y + d), (c.x + d, c.y - d), (c.x - d, c.y + d)])
    gpd.GeoDataFrame(geometry=[bowtie, *gdf.geometry[1:]], crs=gdf.crs).to_file(tmp_path / "bow.geojson")
    params = write_params(tmp_path / "p.yaml", DATA / "sample_geotiff.tif", tmp_path / "bow.geojson")
    proc = eqseg_cli(["tile", "scene", "--params", str(params), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "bow.geojson: repaired 1 invalid geometry" in warnings[0], proc.stderr


def test_repaired_polygon_keeps_its_area(tmp_path):
    from shapely.geometry import Polygon

    from eqseg.tiling.vector import load_vector_labels

    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # two triangles of area 1 meeting at (1, 1)
    gpd.GeoDataFrame(geometry=[bowtie], crs="EPSG:32633").to_file(tmp_path / "bow.gpkg")
    [(geom, cls)] = load_vector_labels(tmp_path / "bow.gpkg", tmp_path / "r.tif", "EPSG:32633", (0, 0, 10, 10), None, None, 2)
    assert geom.is_valid and geom.geom_type == "MultiPolygon" and abs(geom.area - 2.0) < 1e-12 and cls == 1


def test_truncated_ome_tiff_is_one_line(eqseg_cli, tmp_path, root):
    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    group = p["slides"]["cpm15_slides"]
    made = eqseg_cli(["make-slide", "--images", str(root / group["images"]), "--masks", str(root / group["masks"]),
                      "--mask-suffix", "_mask", "--include", "image0[1-3].png", "--mpp", "0.5",
                      "--out", "s.ome.tif", "--mask-out", "s.mask.ome.tif"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    whole = (tmp_path / "s.ome.tif").read_bytes()
    (tmp_path / "cut.ome.tif").write_bytes(whole[: len(whole) // 2])
    d = p["datasets"]["cpm15_slides"] | {"slides": [{"image": "cut.ome.tif", "mask": "s.mask.ome.tif"}]}
    p.pop("slides")
    p["grid"]["test_on"], p["compare"] = [], []  # smoke extras that name its datasets
    p["datasets"], p["grid"]["datasets"] = {"sl": d}, ["sl"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    proc = eqseg_cli(["tile", "sl", "--params", "p.yaml", "--out", "out"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("eqseg tile: error: cut.ome.tif: truncated") and not (tmp_path / "out").exists(), lines


def test_docs_errors_table_shows_every_case():
    """docs/errors.md cannot silently go stale: each case of CASES has a row there (printed by
    `python docs/errors_table.py`) of its command, exit 2, whose line holds every needle the case checks above."""
    import re

    text = (ROOT / "docs" / "errors.md").read_text()
    rows = re.findall(r"^\| .+? \| `([\w-]+)` \| (\d+) \| (.+) \|$", text, re.MULTILINE)
    code = [(command, status, re.fullmatch(r"(`+) ?(.*?) ?\1", cell)) for command, status, cell in rows]
    lines = [(command, status, m.group(2).replace("\\|", "|")) for command, status, m in code if m]  # one code span
    missing = [case for case, (args, needles) in CASES.items()
               if not any(command == args[0] and status == "2" and line.startswith(f"eqseg {args[0]}: error: ")
                          and all(needle in line for needle in needles) for command, status, line in lines)]
    assert not missing, f"docs/errors.md has no row for {missing}: paste the rows of `python docs/errors_table.py`"
