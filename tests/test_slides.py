"""Whole-slide reading on real pixels: a pyramidal TIFF built from CPM-15 tiles, read by level, tissue and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.geometry import box

from eqseg.config import Slide, SlideDataset, SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.slides.make import make_slide
from eqseg.slides.source import AnnotationLabels, MaskLabels, SlideSource
from eqseg.slides.tiff import PyramidTiff, level_for_mpp
from eqseg.tiling.store import TileStore, build_tile_store

MPP = 0.25


@pytest.fixture(scope="module")
def slide(tmp_path_factory, root):
    """Four real 40x tiles (image08, 09, 14, 15) on a 0.25 um/px slide, two to a row, 256 px blank margins."""
    d = tmp_path_factory.mktemp("slide")
    placed = make_slide(root / "data/cpm15/images", root / "data/cpm15/masks", d / "slide.tif", d / "mask.tif", MPP,
                        mask_suffix="_mask", include=("image0[89].png", "image1[45].png"), columns=2)
    return d / "slide.tif", d / "mask.tif", placed


def test_pyramid_levels_and_resolution_read_back(slide):
    path, _, _ = slide
    s = PyramidTiff(path)
    assert len(s.levels) >= 3 and s.bands == 3 and s.dtype == np.uint8
    assert [lv.mpp for lv in s.levels[:3]] == pytest.approx([0.25, 0.5, 1.0], rel=0.01)
    assert level_for_mpp([lv.mpp for lv in s.levels], 0.45) == 1 and level_for_mpp([0.25, 0.5, 1.0], 0.3) == 0


@pytest.mark.parametrize("mpp, level", [(0.25, 0), (0.5, 1), (1.0, 2)])
def test_tiles_at_a_level_match_pixels_read_with_tifffile(slide, mpp, level):
    path, mask, _ = slide
    src = SlideSource(path, MaskLabels(mask, "classes", None, 2), mpp=mpp)
    assert src.level == level
    direct = np.moveaxis(tifffile.imread(path, series=0, level=level), -1, 0)
    assert direct.shape[1:] == (src.height, src.width)
    for r, c in [(0, 0), (src.height // 3, src.width // 2), (src.height - 100, src.width - 50)]:
        read = src.read_tile(r, c, 128, src.height, src.width)
        h, w = min(128, src.height - r), min(128, src.width - c)
        if read.valid_fraction > 0:
            assert np.array_equal(read.image[:, :h, :w], direct[:, r : r + h, c : c + w])
        assert (read.mask[h:, :] == 255).all() and (read.mask[:, w:] == 255).all()


def test_tissue_detection_drops_the_blank_margin_tiles(slide, tmp_path):
    path, mask, placed = slide
    cfg = SlideDataset(kind="slide", classes=["background", "nucleus"], slides=[Slide(image=str(path), mask=str(mask))],
                       mpp=0.5, split=SplitConfig(by="block", block_size=256))
    meta = build_tile_store("slide", cfg, TileConfig(size=64, min_valid_fraction=0.0), tmp_path / "tiles")
    index = TileStore(tmp_path / "tiles").index
    assert meta.sources[0].level == 1 and (index.level == 1).all()
    tissue = [box(p.col, p.row, p.col + p.width, p.row + p.height) for p in placed]  # level-0 pixels
    touches = index.geometry.apply(lambda g: any(g.intersection(t).area > 0 for t in tissue))
    assert touches.all()  # no kept tile lies wholly in the blank margins
    s = meta.sources[0]
    n_all = -(-s.height // 64) * -(-s.width // 64)
    assert len(index) < 0.75 * n_all  # and many were dropped
    # every tile wholly inside a real tile was kept, with the nuclei of its mask
    inner = sum(1 for r in range(0, s.height, 64) for c in range(0, s.width, 64)
                if any(t.contains(box(2 * c, 2 * r, 2 * c + 128, 2 * r + 128)) for t in tissue))
    assert (index.valid_fraction > 0.9).sum() >= 0.9 * inner
    assert (TileStore(tmp_path / "tiles").masks == 1).any()


def test_mask_at_a_coarser_level_and_qupath_annotations(slide, tmp_path):
    path, mask, placed = slide
    p = placed[0]
    ann = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": box(p.col, p.row, p.col + 200, p.row + 100).__geo_interface__,
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}
    (tmp_path / "ann.geojson").write_text(json.dumps(ann))
    src = SlideSource(path, AnnotationLabels(tmp_path / "ann.geojson", {"Tumor": 1}, 2), level=1)
    m = src.read_tile(p.row // 2, p.col // 2, 128, src.height, src.width).mask
    assert (m[:50, :100] == 1).all() and (m[50:, :] == 0).all() and (m[:, 100:] == 0).all()
    # a mask stored only at half resolution labels the level-0 tiles like the full mask, but at nucleus borders
    tifffile.imwrite(tmp_path / "half.tif", tifffile.imread(mask, series=0, level=1), tile=(256, 256))
    full = SlideSource(path, MaskLabels(mask, "classes", None, 2), level=0)
    half = SlideSource(path, MaskLabels(tmp_path / "half.tif", "classes", None, 2), level=0)
    a, b = (s.read_tile(p.row, p.col, 256, s.height, s.width).mask for s in (full, half))
    assert (a == 1).any() and (a == b).mean() > 0.95


def test_unknown_annotation_class_and_truncated_slide(slide, tmp_path):
    path, mask, _ = slide
    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps([{"type": "Feature", "geometry": box(0, 0, 5, 5).__geo_interface__,
                                "properties": {"classification": {"name": "Stroma"}}}]))
    with pytest.raises(EqsegError, match="a.geojson.*Stroma"):
        SlideSource(path, AnnotationLabels(ann, {"Tumor": 1}, 2))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EqsegError, match="cut.tif.*truncated"):
        SlideSource(cut, MaskLabels(mask, "classes", None, 2))
    with pytest.raises(EqsegError, match="no pyramid level 9"):
        SlideSource(path, MaskLabels(mask, "classes", None, 2), level=9)


def test_blank_slide_is_an_error_naming_it(tmp_path):
    white = np.full((600, 700, 3), 255, np.uint8)
    tifffile.imwrite(tmp_path / "blank.tif", white, tile=(256, 256), photometric="rgb")
    tifffile.imwrite(tmp_path / "blank_mask.tif", np.zeros((600, 700), np.uint8), tile=(256, 256))
    cfg = SlideDataset(kind="slide", classes=["bg", "fg"], slides=[Slide(image=str(tmp_path / "blank.tif"), mask=str(tmp_path / "blank_mask.tif"))])
    with pytest.raises(EqsegError, match="blank.tif: no tile has valid pixels .no tissue"):
        build_tile_store("b", cfg, TileConfig(size=128), tmp_path / "tiles")
    assert not (tmp_path / "tiles").exists()
    with pytest.raises(EqsegError, match="blank.tif: no resolution"):
        SlideSource(tmp_path / "blank.tif", MaskLabels(tmp_path / "blank_mask.tif", "classes", None, 2), mpp=0.5)


# --------------------------------------------------------------------------------------------- the bundled slide group
@pytest.fixture(scope="module")
def bundled_slides(tmp_path_factory, root):
    """The `slides: cpm15_slides` group of params.yaml, built as the `slides` stage builds it."""
    from eqseg.config import load_params
    from eqseg.slides.make import make_slide_group

    params = load_params(root / "params.yaml")
    out = tmp_path_factory.mktemp("bundled") / "cpm15_slides"
    placed = make_slide_group(params.slides["cpm15_slides"], out, root)
    return params, out, placed


def test_bundled_slides_keep_real_pixels_and_read_at_20x(bundled_slides, root):
    from PIL import Image

    _, out, placed = bundled_slides
    assert sorted(placed) == ["cpm15_20x", "cpm15_40x"] and len(placed["cpm15_20x"]) == 7 and len(placed["cpm15_40x"]) == 8
    slide20, slide40 = PyramidTiff(out / "cpm15_20x.ome.tif"), PyramidTiff(out / "cpm15_40x.ome.tif")
    assert slide20.levels[0].mpp == pytest.approx(0.5) and slide40.levels[1].mpp == pytest.approx(0.5)
    for p in placed["cpm15_20x"][:3]:  # tiles at their own resolution: level 0 holds the PNG's pixels exactly
        png = np.moveaxis(np.asarray(Image.open(root / f"data/cpm15/images/{p.name}.png"))[..., :3], -1, 0)
        assert np.array_equal(slide20.read(0, p.row, p.col, p.height, p.width), png)
    for p in placed["cpm15_20x"] + placed["cpm15_40x"]:  # one tile per 512-um cell (1024 px at 20x, 2048 at 40x)
        cell = 1024 if p in placed["cpm15_20x"] else 2048
        assert p.row // cell == (p.row + p.height - 1) // cell and p.col // cell == (p.col + p.width - 1) // cell


def test_bundled_slide_dataset_puts_each_source_tile_in_one_split(bundled_slides, tmp_path):
    params, out, placed = bundled_slides
    cfg = params.dataset("cpm15_slides")
    cfg = cfg.model_copy(update={"slides": [Slide(image=str(out / Path(s.image).name), mask=str(out / Path(s.mask).name)) for s in cfg.slides]})
    meta = build_tile_store("cpm15_slides", cfg, params.tile, tmp_path / "tiles")
    index = TileStore(tmp_path / "tiles").index
    assert [s.level for s in meta.sources] == [0, 1]
    splits_of = {}
    for slide_name, tiles in placed.items():
        rows = index[index.source.str.startswith(slide_name)]
        for p in tiles:
            hit = rows[rows.intersects(box(p.col, p.row, p.col + p.width, p.row + p.height))]
            splits_of[p.name] = set(hit.split)
    assert len(splits_of) == 15 and all(len(s) == 1 for s in splits_of.values()), splits_of
    counts = {s: sum(v == {s} for v in splits_of.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 9, "val": 3, "test": 3}


def test_slide_group_errors(root, tmp_path, eqseg_cli):
    import yaml

    from eqseg.config import parse_params
    from eqseg.slides.make import make_slide_group

    raw = yaml.safe_load((root / "params.yaml").read_text())
    group = parse_params(raw).slides["cpm15_slides"].model_copy(update={"cell_um": 300})
    with pytest.raises(EqsegError, match="does not fit a 600-px cell"):
        make_slide_group(group, tmp_path / "built", root)
    assert not (tmp_path / "built").exists() and not list(tmp_path.iterdir())
    raw["grid"]["datasets"] = ["spacenet_atlanta"]
    del raw["datasets"]["cpm15_slides"]
    with pytest.raises(EqsegError, match="slides.cpm15_slides: no dataset 'cpm15_slides' of kind slide"):
        parse_params(raw)
    proc = eqseg_cli(["make-slides", "nope", "--params", str(root / "params.yaml"), "--out", str(tmp_path / "x")], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "eqseg make-slides: error: params: no slides group 'nope' (defined: ['cpm15_slides'])"]


def test_bundled_slide_store_is_unchanged_to_the_byte(bundled_slides, tmp_path):
    from test_tiling import BUNDLED_SLIDES_STORE_DIGEST, store_digest

    params, out, _ = bundled_slides
    cfg = params.dataset("cpm15_slides")
    cfg = cfg.model_copy(update={"slides": [Slide(image=str(out / Path(s.image).name), mask=str(out / Path(s.mask).name)) for s in cfg.slides]})
    build_tile_store("cpm15_slides", cfg, TileConfig(size=128, overlap=0, min_valid_fraction=0.05), tmp_path / "tiles")
    assert store_digest(tmp_path / "tiles") == BUNDLED_SLIDES_STORE_DIGEST


def test_building_slides_never_deletes_its_inputs(root, tmp_path):
    """Issue 11: `make-slides NAME` into data/NAME/ used to replace the folder that held its own images and masks."""
    import shutil

    import yaml

    from eqseg.config import parse_params
    from eqseg.slides.make import make_slide_group

    data = tmp_path / "data" / "g"
    for sub, pattern in (("images", "image01.png"), ("masks", "image01_mask.png")):
        (data / sub).mkdir(parents=True)
        shutil.copy(root / "data/cpm15" / sub / pattern, data / sub / pattern)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    group = parse_params(raw).slides["cpm15_slides"].model_copy(update={
        "images": str(data / "images"), "masks": str(data / "masks"),
        "slides": {"g": parse_params(raw).slides["cpm15_slides"].slides["cpm15_20x"].model_copy(update={"include": []})}})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (data, data / "images"):  # the folder holding the inputs, and an input folder itself
        with pytest.raises(EqsegError, match=r"holds the input images|is the input images") as err:
            make_slide_group(group, out)
        assert len(str(err.value).splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(EqsegError, match="not written by eqseg"):  # a folder eqseg did not write is not replaced
        make_slide_group(group, tmp_path / "mine")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before + [Path("mine"), Path("mine/notes.txt")]
    placed = make_slide_group(group, tmp_path / "built")  # a folder of its own: built, and rebuilt over itself
    assert make_slide_group(group, tmp_path / "built") == placed and (tmp_path / "built" / "g.ome.tif").is_file()
    assert (data / "images" / "image01.png").is_file() and (data / "masks" / "image01_mask.png").is_file()


def test_library_pyramid_and_speck_removal_equal_the_hand_written_ones():
    """make.halve is skimage's downscale_local_mean (2x2 means rounded half up, an odd edge row/column dropped) and
    tissue.drop_small is skimage's remove_small_objects; both give what the arithmetic they replaced gave."""
    from scipy import ndimage

    from eqseg.slides.make import halve
    from eqseg.slides.tissue import drop_small

    rng = np.random.default_rng(0)
    for a in (rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), rng.integers(0, 65536, (6, 5), dtype=np.uint16)):
        x = a[:8, :6].astype(np.float64) if a.ndim == 3 else a[:6, :4].astype(np.float64)
        want = np.floor((x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4 + 0.5).astype(a.dtype)
        assert np.array_equal(halve(a, nearest=False), want)
    m = np.array([[1, 0, 2, 255], [0, 0, 2, 2]], dtype=np.uint8)
    assert np.array_equal(halve(m, nearest=True), [[1, 2]])  # class ids are sampled, never averaged
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[10:12, 10:15] = True  # 10 pixels
    mask[15, 15] = mask[16, 16] = True  # two specks, diagonal: separate components (4-connectivity)
    kept = drop_small(mask, 9)
    assert kept[10:12, 10:15].all() and kept.sum() == 10
    for p in (0.4, 0.6):
        noisy = rng.random((200, 150)) < p
        labels, _ = ndimage.label(noisy)
        sizes = np.bincount(labels.ravel())
        want = (sizes > 5)[labels] & noisy
        assert np.array_equal(drop_small(noisy, 5), want)
