"""Colour-coded masks (mask_mode colours, palette PNGs included) and pairs datasets across scene folders (one `*`
for the group folder, split.by: group), on the bundled Dubai aerial scenes and on small synthetic folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from eqseg.config import PairsDataset, SplitConfig, TileConfig, parse_params
from eqseg.errors import EqsegError
from eqseg.labels import IGNORE
from eqseg.tiling.pairs import PairSource, colours_to_classes, read_colour_mask, read_image_file

DUBAI = Path(__file__).resolve().parents[1] / "data" / "dubai_aerial"

# the measured colours of the Dubai masks (data/NOTICE.md), as the dataset entry maps them: grey "Unlabeled" and
# black are no label
DUBAI_YAML = """
kind: pairs
images: data/dubai_aerial/*/images
masks: data/dubai_aerial/*/masks
mask_mode: colours
mask_colours:
  "#8429F6": 0        # land (unpaved)
  "#6EC1E4": 1        # road
  "#3C1098": 2        # building
  "#FEDD3A": 3        # vegetation
  "#E2A929": 4        # water
  "#9B9B9B": ignore   # "Unlabeled"
  "#000000": ignore   # no label
classes: [land, road, building, vegetation, water]
split: {by: group, fractions: {train: 0.57, val: 0.14, test: 0.29}, seed: 3}
"""


def dubai_cfg(root: str = "data/dubai_aerial", **split) -> PairsDataset:
    raw = yaml.safe_load(DUBAI_YAML) | {"images": f"{root}/*/images", "masks": f"{root}/*/masks"}
    raw["split"] |= split
    return PairsDataset.model_validate(raw)


def params_with(dataset: dict) -> dict:
    return {"datasets": {"d": dataset}, "models": {"unet": {}}, "grid": {"datasets": ["d"], "models": ["unet"]}}


TABLE = {(255, 0, 0): 0, (0, 255, 0): 1, (0, 0, 255): 2, (0, 0, 0): IGNORE}
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]


def _indices() -> np.ndarray:
    return np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 2, 2]], dtype=np.uint8)


def _rgb() -> np.ndarray:
    return np.array(PALETTE, dtype=np.uint8)[_indices()]


# ----------------------------------------------------------------------------------------------- the colour table
def test_colour_table_maps_every_pixel_to_the_hand_built_classes(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(_rgb(), "RGB").save(path)
    expected = np.array([[0, 1, 2, 255], [255, 2, 1, 0], [0, 0, 2, 2]], dtype=np.uint8)
    out = colours_to_classes(read_colour_mask(path), TABLE, path)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    # the same table written in params: hex or "r,g,b" keys, ignore for no label
    cfg = PairsDataset(kind="pairs", images="i", masks="m", mask_mode="colours", classes=["a", "b", "c"],
                       mask_colours={"#FF0000": 0, "0,255,0": 1, "[0, 0, 255]": 2, "#000000": "ignore"})
    assert cfg.colour_table() == TABLE


def test_palette_png_gives_the_classes_of_its_rgb_twin(tmp_path):
    """A palette PNG is read by its colours, not its indices (read_image_file alone returns the indices)."""
    Image.fromarray(_rgb(), "RGB").save(tmp_path / "rgb.png")
    pal = Image.fromarray(3 - _indices(), "P")  # the palette reversed: index 0 is black here
    pal.putpalette([v for c in reversed(PALETTE) for v in c])
    pal.save(tmp_path / "pal.png")
    rgba = np.dstack([_rgb(), np.full(_indices().shape, 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with Image.open(tmp_path / "pal.png") as im:
        assert im.mode == "P"
    assert not np.array_equal(read_image_file(tmp_path / "pal.png")[0], _indices())  # indices, reversed palette
    want = colours_to_classes(read_colour_mask(tmp_path / "rgb.png"), TABLE, tmp_path / "rgb.png")
    for name in ("pal.png", "rgba.png"):
        assert np.array_equal(colours_to_classes(read_colour_mask(tmp_path / name), TABLE, tmp_path / name), want), name
    # through the source, as tiling reads it
    Image.fromarray(np.zeros((*_indices().shape, 3), np.uint8)).save(tmp_path / "img.png")
    src = PairSource(tmp_path / "img.png", tmp_path / "pal.png", "colours", None, 3, colours=TABLE)
    assert np.array_equal(src.read_tile(0, 0, 4, 3, 4).mask[:3], want)


def test_real_palette_mask_gives_the_classes_of_its_rgb_copy(tmp_path):
    """Tiles 2 and 4 of the Dubai set ship palette PNGs: the same classes as the mask re-saved as RGB."""
    path = DUBAI / "tile2" / "masks" / "image_part_001.png"
    with Image.open(path) as im:
        assert im.mode == "P"
        im.convert("RGB").save(tmp_path / "rgb.png")
    table = dubai_cfg().colour_table()
    a = colours_to_classes(read_colour_mask(path), table, path)
    b = colours_to_classes(read_colour_mask(tmp_path / "rgb.png"), table, tmp_path / "rgb.png")
    assert np.array_equal(a, b) and set(np.unique(a)) <= {0, 1, 2, 3, 4, IGNORE} and len(np.unique(a)) >= 3


def test_unknown_colour_is_refused_naming_file_colour_and_pixels(tmp_path):
    rgb = _rgb()
    rgb[0, :3] = (12, 34, 56)
    rgb[1, 0] = (1, 2, 3)
    path = tmp_path / "odd.png"
    Image.fromarray(rgb, "RGB").save(path)
    with pytest.raises(EqsegError) as err:
        colours_to_classes(read_colour_mask(path), TABLE, path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "#0C2238 (12, 34, 56) on 3 pixels" in msg and "1 more unknown colours, 1 pixels" in msg, msg
    # a transparent pixel has no colour to map
    rgba = np.dstack([_rgb(), np.full(_indices().shape, 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    with pytest.raises(EqsegError, match=r"t\.png: 1 pixels are not opaque"):
        read_colour_mask(tmp_path / "t.png")


def test_colour_mapping_of_a_large_mask_is_vectorised():
    """A 2000 x 2000 mask maps in about 0.1 s (one sorted search over packed colours); the bound is loose, for a
    loaded machine, and catches only a per-pixel Python loop."""
    import time

    rgb = np.array(PALETTE, dtype=np.uint8)[np.random.default_rng(0).integers(0, 4, (2000, 2000))]
    t = time.perf_counter()
    out = colours_to_classes(rgb, TABLE, Path("big.png"))
    assert time.perf_counter() - t < 5.0 and out.shape == (2000, 2000)


@pytest.mark.parametrize("change, needle", [
    ({"mask_colours": {"#8429F6": 5}}, "datasets.d: mask_colours: '#8429F6' maps to 5, not a class id 0..4"),
    ({"mask_colours": {"#8429F6": 255}}, "maps to 255, not a class id 0..4 (ignore: no label)"),
    ({"mask_colours": {"#8429F6": 0, "132, 41, 246": 1}}, "datasets.d.mask_colours: '#8429F6' and '132, 41, 246' are the same colour"),
    ({"mask_colours": {"#8429F": 0}}, "datasets.d.mask_colours: '#8429F' is not a colour"),
    ({"mask_colours": {"300,0,0": 0}}, "'300,0,0' is not a colour"),
    ({"mask_colours": {"#8429F6": "none"}}, "datasets.d.mask_colours: '#8429F6' maps to 'none': give a class id, or ignore"),
    ({"mask_colours": {}}, "datasets.d.mask_colours: is empty"),
    ({"mask_colours": None}, "mask_mode colours needs mask_colours"),
    ({"mask_mode": "classes"}, "mask_colours: give it with mask_mode colours, and only then"),
    ({"mask_values": {1: 0}}, "mask_values: not used with mask_mode colours"),
    ({"images": "data/dubai_aerial/tile1/images", "masks": "data/dubai_aerial/tile1/masks"},
     "split.by: group needs groups: put one * for the group folder in images and masks"),
    ({"images": "data/*/*/images"}, "datasets.d.images: at most one *"),
    ({"masks": "data/dubai_aerial/tile*/masks"}, "datasets.d.masks: at most one *, standing for a whole folder name"),
    ({"masks": "data/dubai_aerial/tile1/masks"}, "put the group folder's * in both or in neither"),
    ({"split": {"by": "groups"}}, "datasets.d.split.by"),
])
def test_bad_colour_tables_and_group_patterns_are_refused_at_load(change, needle):
    raw = yaml.safe_load(DUBAI_YAML) | change
    with pytest.raises(EqsegError) as err:
        parse_params(params_with(raw))
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_dubai_entry_loads_with_its_measured_colours():
    p = parse_params(params_with(yaml.safe_load(DUBAI_YAML)))
    table = p.dataset("d").colour_table()
    assert table[(132, 41, 246)] == 0 and table[(60, 16, 152)] == 2 and table[(226, 169, 41)] == 4
    assert table[(155, 155, 155)] == table[(0, 0, 0)] == IGNORE and len(table) == 7


# ------------------------------------------------------------------------------------ groups and the split by group
def _synthetic_groups(folder: Path, groups: list[str], parts: int = 3, size: int = 40) -> None:
    rng = np.random.default_rng(0)
    for g in groups:
        (folder / g / "images").mkdir(parents=True)
        (folder / g / "masks").mkdir(parents=True)
        for k in range(parts):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / g / "images" / f"part_{k}.png")
            idx = rng.integers(0, 4, (size, size))
            Image.fromarray(np.array(PALETTE, np.uint8)[idx]).save(folder / g / "masks" / f"part_{k}.png")


def _split_of_each_group(index) -> dict[str, set[str]]:
    groups = index.source.str.rsplit("_part_", n=1).str[0]  # source names are <group>_part_<k>
    return {g: set(index.split[groups == g]) for g in sorted(set(groups))}


def test_split_by_group_puts_each_group_wholly_in_one_split_drawn_with_the_seed(tmp_path):
    from eqseg.tiling.registry import source_groups, source_names
    from eqseg.tiling.store import TileStore, build_tile_store, source_splits

    groups = [f"scene{k}" for k in range(6)]
    _synthetic_groups(tmp_path / "data", groups)
    (tmp_path / "data" / "notes").mkdir()  # a folder without images/ is not a group
    (tmp_path / "data" / "readme.txt").write_text("not a group")
    drawn = set()
    for seed in (0, 1, 2):
        cfg = PairsDataset(kind="pairs", images=str(tmp_path / "data/*/images"), masks=str(tmp_path / "data/*/masks"),
                           mask_mode="colours", mask_colours={"#FF0000": 0, "#00FF00": 1, "#0000FF": 2, "#000000": "ignore"},
                           classes=["a", "b", "c"], split=SplitConfig(by="group", seed=seed,
                                                                        fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
        names = source_names(cfg)
        assert names[:3] == ["scene0_part_0", "scene0_part_1", "scene0_part_2"] and len(names) == 18
        assert source_groups(cfg) == [g for g in groups for _ in range(3)]
        build_tile_store("g", cfg, TileConfig(size=32), tmp_path / f"tiles{seed}")
        index = TileStore(tmp_path / f"tiles{seed}").index
        per_group = _split_of_each_group(index)
        assert all(len(s) == 1 for s in per_group.values()), per_group  # a whole group in one split
        by_split = {s: {g for g, ss in per_group.items() if s in ss} for s in ("train", "val", "test")}
        assert all(by_split.values()) and sum(map(len, by_split.values())) == len(groups)  # disjoint, all used
        assert source_splits(cfg) == dict(zip(index.source, index.split))  # as predict-dataset reads them
        drawn.add(tuple(sorted(by_split["test"])))
    assert len(drawn) > 1  # the seed draws the groups


def test_real_dubai_scenes_build_a_store_split_by_scene(tmp_path, root):
    """Three real scenes (linked from data/dubai_aerial), tiled at 256 px: every part named by its scene, each
    scene wholly in one split, and every tile's mask the colour mask mapped by the table."""
    from eqseg.tiling.store import TileStore, build_tile_store

    for scene in ("tile1", "tile2", "tile3"):
        (tmp_path / "dubai" / scene).parent.mkdir(exist_ok=True)
        (tmp_path / "dubai" / scene).symlink_to(DUBAI / scene, target_is_directory=True)
    cfg = dubai_cfg(str(tmp_path / "dubai"), fractions={"train": 0.34, "val": 0.33, "test": 0.33}, seed=0)
    meta = build_tile_store("dubai", cfg, TileConfig(size=256), tmp_path / "tiles")
    store = TileStore(tmp_path / "tiles")
    index = store.index
    assert meta.bands == 3 and meta.dtype == "uint8" and len(meta.sources) == 27
    assert set(index.source) == {f"tile{t}_image_part_00{k}" for t in (1, 2, 3) for k in range(1, 10)}
    scene = index.source.str.split("_").str[0]
    per_scene = index.groupby(scene).split.unique()
    assert all(len(s) == 1 for s in per_scene) and sorted(s[0] for s in per_scene) == ["test", "train", "val"]
    # one tile against the mask mapped by hand
    t = index[(index.source == "tile2_image_part_005") & (index.row == 0) & (index.col == 0)].tile_id.item()
    rgb = np.asarray(Image.open(DUBAI / "tile2/masks/image_part_005.png").convert("RGB"))[:256, :256]
    want = np.full((256, 256), IGNORE, np.uint8)
    for colour, cls in cfg.colour_table().items():
        want[(rgb == colour).all(axis=2)] = cls
    assert np.array_equal(store.masks[t], want) and set(np.unique(store.masks)) <= {0, 1, 2, 3, 4, IGNORE}
    assert (index[[f"px_{c}" for c in cfg.classes]].sum() > 0).all()


def test_by_group_is_refused_for_sources_without_groups(root, tmp_path):
    from eqseg.config import load_params
    from eqseg.tiling.store import build_tile_store

    cfg = load_params(root / "params.yaml").dataset("spacenet_atlanta")
    cfg = cfg.model_copy(update={"split": SplitConfig(by="group")})  # past the pairs-only check at load
    with pytest.raises(EqsegError, match=r"sample_geotiff\.tif: split\.by=group needs sources in groups") as err:
        build_tile_store("s", cfg, TileConfig(size=128), tmp_path / "t")
    assert "\n" not in str(err.value) and not (tmp_path / "t").exists()


def test_fewer_groups_than_splits_is_one_line(tmp_path):
    from eqseg.tiling.store import source_splits

    _synthetic_groups(tmp_path, ["a", "b"], parts=1)
    cfg = PairsDataset(kind="pairs", images=str(tmp_path / "*/images"), masks=str(tmp_path / "*/masks"),
                       classes=["a", "b"], split=SplitConfig(by="group"))
    with pytest.raises(EqsegError, match=r"split\.by=group needs a group for each split with a share \(dataset has 2\)"):
        source_splits(cfg)


def test_source_name_collisions_and_unsafe_group_names_are_one_line_errors(tmp_path):
    from eqseg.tiling.pairs import dataset_pairs

    rgb = _rgb()
    for group, stem in (("a_b", "c"), ("a", "b_c")):  # both would be a_b_c
        for sub in ("images", "masks"):
            (tmp_path / "x" / group / sub).mkdir(parents=True)
            Image.fromarray(rgb).save(tmp_path / "x" / group / sub / f"{stem}.png")
    with pytest.raises(EqsegError) as err:
        dataset_pairs(str(tmp_path / "x/*/images"), str(tmp_path / "x/*/masks"), "")
    msg = str(err.value)
    assert "\n" not in msg and "source name 'a_b_c' is also that of" in msg and "a_b/images/c.png" in msg, msg
    # one folder, two images of one stem
    for sub in ("images", "masks"):
        (tmp_path / "y" / sub).mkdir(parents=True)
    for ext in ("png", "tif"):
        Image.fromarray(rgb).save(tmp_path / "y" / "images" / f"p.{ext}")
    Image.fromarray(rgb).save(tmp_path / "y" / "masks" / "p.png")
    with pytest.raises(EqsegError, match=r"p\.tif: source name 'p' is also that of .*p\.png"):
        dataset_pairs(str(tmp_path / "y/images"), str(tmp_path / "y/masks"), "")
    # a group folder whose name cannot be part of file names; a group without its masks folder
    (tmp_path / "z" / "my scene" / "images").mkdir(parents=True)
    with pytest.raises(EqsegError, match=r"group folder name 'my scene' cannot be part of source names"):
        dataset_pairs(str(tmp_path / "z/*/images"), str(tmp_path / "z/*/masks"), "")
    (tmp_path / "w" / "s1" / "images").mkdir(parents=True)
    with pytest.raises(EqsegError, match=r"w/s1/masks: masks folder not found"):
        dataset_pairs(str(tmp_path / "w/*/images"), str(tmp_path / "w/*/masks"), "")
    with pytest.raises(EqsegError, match=r"no folder matches images"):
        dataset_pairs(str(tmp_path / "y/*/images"), str(tmp_path / "y/*/masks"), "")


def test_eqseg_tile_refuses_an_unknown_colour_in_one_line(eqseg_cli, tmp_path):
    """Through the command: one line naming the file and the colour, exit 2, nothing written."""
    _synthetic_groups(tmp_path / "data", ["s1", "s2", "s3"], parts=1)
    odd = tmp_path / "data/s2/masks/part_0.png"
    rgb = np.asarray(Image.open(odd)).copy()
    rgb[5, 5] = (7, 8, 9)
    Image.fromarray(rgb).save(odd)
    p = yaml.safe_load((Path(__file__).parent / "smoke" / "params.yaml").read_text())
    p.pop("slides", None)
    p["grid"]["test_on"], p["compare"] = [], []
    p["datasets"] = {"scenes": {"kind": "pairs", "images": "data/*/images", "masks": "data/*/masks", "mask_mode": "colours",
                                "mask_colours": {"#FF0000": 0, "#00FF00": 1, "#0000FF": 2, "#000000": "ignore"},
                                "classes": ["a", "b", "c"], "split": {"by": "group"}}}
    p["grid"]["datasets"] = ["scenes"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    proc = eqseg_cli(["tile", "scenes", "--params", "p.yaml", "--out", "out"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "s2/masks/part_0.png: colour #070809 (7, 8, 9) on 1 pixels is not in mask_colours" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
