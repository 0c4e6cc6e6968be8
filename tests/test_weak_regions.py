"""Points and scribbles for land cover (`regions: all_classes`): every 8-connected region of every class, class 0
included, gets `per_object` clicks or strokes, checked against regions found by a brute-force flood fill on real
land cover (the New Brunswick clip's classes); fragments under `min_region_pixels` get none and cost nothing. The
default (`objects`) gives the very bytes it gave before the option existed (hashes saved from that code).
"""

from __future__ import annotations

import hashlib
from collections import deque
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
from PIL import Image

from eqseg.errors import EqsegError
from eqseg.weak import generate
from eqseg.weak.generators import points, scribbles
from eqseg.weak.store import make_weak_labels

DATA = Path(__file__).resolve().parents[1] / "data"
NB_IDS = {"Vegetation": 1, "Hydro": 2, "Road": 3, "Building": 4, "Train": 5}
IGNORE = 255


@pytest.fixture(scope="module")
def land_cover() -> list[np.ndarray]:
    """128x128 crops of the New Brunswick clip's land-cover classes (0 = ground under no polygon), the last one cut
    by the clip's edge and padded with 255 as the tile store pads it."""
    raster = DATA / "new_brunswick" / "23322E759967N_clipped_1m_2of2.tif"
    gdf = pyogrio.read_dataframe(DATA / "new_brunswick" / "BakerLake_2017_clipped.gpkg")
    with rasterio.open(raster) as ds:
        full = rasterio.features.rasterize(list(zip(gdf.geometry, (NB_IDS[n] for n in gdf["Niveau_2"]))),
                                           out_shape=ds.shape, transform=ds.transform, fill=0, dtype=np.uint8)
    crops = [full[r : r + 128, c : c + 128] for r, c in ((0, 0), (192, 0), (256, 192), (384, 256))]
    last = crops[-1]
    crops[-1] = np.pad(last, ((0, 128 - last.shape[0]), (0, 128 - last.shape[1])), constant_values=IGNORE)
    assert all(len(set(np.unique(m)) - {IGNORE}) >= 3 for m in crops) and (crops[-1] == IGNORE).any()
    return crops


def brute_force_regions(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, flat pixel indices) of every 8-connected region of every class, by a plain flood fill."""
    h, w = mask.shape
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for r0 in range(h):
        for c0 in range(w):
            if seen[r0, c0] or mask[r0, c0] == IGNORE:
                continue
            cls, todo, pixels = mask[r0, c0], deque([(r0, c0)]), []
            seen[r0, c0] = True
            while todo:
                r, c = todo.popleft()
                pixels.append(r * w + c)
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < h and 0 <= cc < w and not seen[rr, cc] and mask[rr, cc] == cls:
                            seen[rr, cc] = True
                            todo.append((rr, cc))
            regions.append((int(cls), np.array(pixels)))
    return regions


@pytest.mark.parametrize("per_object, min_pixels", [(1, 1), (3, 1), (2, 25)])
def test_all_classes_points_click_every_region_of_every_class(land_cover, per_object, min_pixels):
    for seed, mask in enumerate(land_cover):
        ann = points(mask, np.random.default_rng(seed), per_object=per_object, regions="all_classes",
                     min_region_pixels=min_pixels)
        clicked = ann.labels.ravel() != IGNORE
        assert (ann.labels.ravel()[clicked] == mask.ravel()[clicked]).all()  # every click's label is the mask's
        regions = brute_force_regions(mask)
        total = 0
        for cls, pixels in regions:
            n = int(clicked[pixels].sum())
            want = min(per_object, pixels.size) if pixels.size >= min_pixels else 0
            assert n == want, f"a class-{cls} region of {pixels.size} px got {n} clicks, not {want}"
            total += want
        assert clicked.sum() == total == ann.effort
        assert any(cls == 0 and clicked[p].any() for cls, p in regions)  # class 0 is a region class too
        if min_pixels > 1:
            assert any(p.size < min_pixels for _, p in regions)  # the skipped fragments exist


@pytest.mark.parametrize("per_object, min_pixels, width", [(1, 1, 1), (2, 1, 3), (1, 30, 1)])
def test_all_classes_scribbles_stroke_every_region_of_every_class(land_cover, per_object, min_pixels, width):
    for seed, mask in enumerate(land_cover):
        ann = scribbles(mask, np.random.default_rng(seed), per_object=per_object, width=width, regions="all_classes",
                        min_region_pixels=min_pixels)
        labelled = ann.labels.ravel() != IGNORE
        assert (ann.labels.ravel()[labelled] == mask.ravel()[labelled]).all()
        regions = brute_force_regions(mask)
        kept = [p for _, p in regions if p.size >= min_pixels]
        assert all(labelled[p].any() for p in kept)  # every region big enough is stroked
        assert not any(labelled[p].any() for _, p in regions if p.size < min_pixels)
        if per_object == 1:
            assert ann.effort == len(kept)  # one stroke per region
        else:
            assert len(kept) < ann.effort <= per_object * len(kept)
        assert labelled.mean() < 0.2  # strokes, not fills


def test_objects_default_has_one_background_region(land_cover):
    """The default sees class 0 as one background: its components share `background` clicks."""
    mask = land_cover[0]
    ann = points(mask, np.random.default_rng(0), per_object=1)
    regions = brute_force_regions(mask)
    objects = [p for c, p in regions if c != 0]
    assert ann.effort == 2 * len(objects)  # one per object, as many on the background
    assert all((ann.labels.ravel()[p] != IGNORE).sum() == 1 for p in objects)


# Saved from the generators before `regions` existed (same masks, seed 7): the default must not move a pixel.
BEFORE = {
    "binary/points/0": ("5664ea21ee61dbb39c869f3257b12326b6b44af5dc794a8f78c12ee67b4ee65c", 412),
    "binary/points/1": ("8b71146a635c15bcc034d676d81d9d61d855d3562acbc10b6814a4c912df582a", 415),
    "binary/scribbles/2": ("2b8b0d05bc20e6795b4a1105159604d0737600d917959476820a9d46ba480a20", 412),
    "binary/scribbles/3": ("df26509d1225bd6ec587a2d27c79e7434b45b1a11e833eab8e477946476858ef", 410),
    "multi/points/0": ("4986b27c364dad5a6ddf2e855c7e683ecf474828b132286801fdbabf67e053d4", 482),
    "multi/points/1": ("81a1a98d3d5a6352b7dedf737be119a83289f296a255bfed9deb0a33a7c3100d", 485),
    "multi/scribbles/2": ("b1bc0be8ae4d53782028d557f37fda70ed86de2fab568a99e95501103788952f", 482),
    "multi/scribbles/3": ("9ed32b0333d08ad9b218bda99eb2c223098ad0e9eeffa2e6359a085c1adaea41", 480),
    "padded/points/0": ("a06512189271637a4e44c84208c4b24bd5791d8b670aa305e4cbdb1fda74828b", 38),
    "padded/points/1": ("76ddea80238e4013508b5dae24b16454bea8e05ba9b95957305c293caf502300", 41),
    "padded/scribbles/2": ("c71383f0a383d6e687f85e31e9418bf70134112605710492dfa962066aee0d33", 38),
    "padded/scribbles/3": ("4a70eabd8998e4c9b0d14be353e4fcbd20fe8c1296d1a4be8bd15fa495936acf", 34),
}
CASES = [("points", {}), ("points", {"per_object": 2, "background": 3, "focus": 0.0}),
         ("scribbles", {}), ("scribbles", {"per_object": 2, "background": 0, "width": 3, "erosion": 1, "length": 20})]


@pytest.mark.parametrize("explicit", [False, True])
def test_default_regions_give_the_bytes_they_gave_before(explicit):
    inst = np.asarray(Image.open(DATA / "cpm15" / "masks" / "image03_mask.png"))  # CPM-15 nuclei, 587 x 751
    binary = (inst > 0).astype(np.uint8)
    masks = {"binary": binary, "multi": np.where(inst > 0, 1 + (inst % 2), 0).astype(np.uint8),
             "padded": np.pad(binary[:200, :230], ((0, 56), (0, 26)), constant_values=IGNORE)}
    extra = {"regions": "objects", "min_region_pixels": 1} if explicit else {}
    for name, mask in masks.items():
        for i, (kind, opts) in enumerate(CASES):
            ann = {"points": points, "scribbles": scribbles}[kind](mask, np.random.default_rng(7), **opts, **extra)
            assert (hashlib.sha256(ann.labels.tobytes()).hexdigest(), ann.effort) == BEFORE[f"{name}/{kind}/{i}"], (name, kind, i)


def test_options_reach_the_generators_through_generate_and_the_store(land_cover):
    mask = land_cover[1]
    a = generate(mask, "points", seed=1, regions="all_classes", min_region_pixels=10)
    b = generate(mask, "points", seed=1)
    assert (a != IGNORE).sum() > (b != IGNORE).sum()
    stack = np.stack(land_cover)
    out, record = make_weak_labels(None, stack, np.arange(len(stack)), "scribbles", 0, {"regions": "all_classes"})[:2]
    assert out.shape == stack.shape and record["options"] == {"regions": "all_classes"}


@pytest.mark.parametrize("call, message", [
    (lambda m: generate(m, "points", regions="all"), "weak.points: regions must be one of objects, all_classes (got 'all')"),
    (lambda m: generate(m, "scribbles", regions="all_classes", background=2), "weak.scribbles: background applies to regions: objects only"),
    (lambda m: generate(m, "points", min_region_pixels=0), "weak.points: min_region_pixels must be an integer >= 1 (got 0)"),
])
def test_bad_region_options_fail_with_one_line(call, message):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 4:9] = 1
    with pytest.raises(EqsegError) as err:
        call(mask)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_region_options_are_checked_at_load():
    import yaml

    from eqseg.config import parse_params

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "tests" / "smoke" / "params.yaml").read_text())
    raw["weak"] = {"options": {"points": {"regions": "all_classes", "min_region_pixels": 4}}}
    assert parse_params(raw).weak.options["points"]["regions"] == "all_classes"
    raw["weak"] = {"options": {"scribbles": {"regions": "all_classes", "background": 1}}}
    with pytest.raises(EqsegError) as err:
        parse_params(raw)
    assert "weak.options.scribbles" in str(err.value) and "background applies to regions: objects only" in str(err.value)
    assert "\n" not in str(err.value)
