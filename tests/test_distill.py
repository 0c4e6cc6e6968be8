"""Self-training by data distillation: the pure pseudo-label rule, the `eqseg distill` stage on real CPM-15 tiles,
the +distill supervision in params, and a student trained on the union."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqseg.config import load_params, parse_supervision
from eqseg.distill.pseudo import fill_confident
from eqseg.errors import EqsegError
from eqseg.labels import IGNORE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ pure rule
def test_fill_confident_keeps_given_labels_and_fills_confident_valid_pixels():
    given = np.array([[1, IGNORE, IGNORE], [IGNORE, IGNORE, 0]], np.uint8)
    p1 = np.array([[0.1, 0.95, 0.6], [0.99, 0.92, 0.99]])  # probability of class 1
    probs = np.stack([1 - p1, p1])
    valid = np.array([[True, True, True], [False, True, True]])
    out = fill_confident(given, probs, valid, threshold=0.9)
    # (0,0) given 1 although the teacher says 0 at 0.9; (0,1) filled 1; (0,2) not confident; (1,0) invalid;
    # (1,1) filled 1; (1,2) given 0 although the teacher says 1 at 0.99
    assert out.tolist() == [[1, 1, IGNORE], [IGNORE, 1, 0]]
    assert given.tolist() == [[1, IGNORE, IGNORE], [IGNORE, IGNORE, 0]]  # input untouched


def test_fill_confident_restricts_the_teacher_to_the_tiles_tags():
    probs = np.zeros((3, 1, 2))
    probs[:, 0, 0] = [0.05, 0.95, 0.0]  # class 1 is the teacher's choice, but the tile is tagged {0, 2}
    probs[:, 0, 1] = [0.92, 0.03, 0.05]
    given = np.full((1, 2), IGNORE, np.uint8)
    valid = np.ones((1, 2), bool)
    out = fill_confident(given, probs, valid, 0.9, allowed=np.array([True, False, True]))
    assert out.tolist() == [[IGNORE, 0]]  # pixel 0: best allowed class 0 at 0.05 < 0.9; pixel 1: class 0 at 0.92
    assert fill_confident(given, probs, valid, 0.9, allowed=np.zeros(3, bool)).tolist() == [[IGNORE, IGNORE]]


def test_fill_confident_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        fill_confident(np.zeros((2, 2), np.uint8), np.zeros((2, 3, 3)), np.ones((2, 2), bool), 0.9)


# ------------------------------------------------------------------------------------------------ params
def test_supervision_names_with_distill():
    s = parse_supervision("scribbles+superpixels+distill")
    assert (s.kind, s.expansion, s.distill, s.parent) == ("scribbles", "superpixels", True, "scribbles+superpixels")
    assert not s.is_full and parse_supervision("points").distill is False
    for bad, msg in [("full+distill", "dense labels"), ("points+distill+watershed", "goes last"), ("distill", "unknown")]:
        with pytest.raises(ValueError, match=msg):
            parse_supervision(bad)


def _params(root: Path, tmp: Path, **grid) -> Path:
    import yaml

    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    p["grid"].update(grid)
    f = tmp / "params.yaml"
    f.write_text(yaml.safe_dump(p))
    return f


def test_grid_distill_adds_student_cells_and_checks_its_parents(root, tmp_path):
    p = load_params(_params(root, tmp_path, supervision=["full", "points"], distill=["points"], test_on=[]))
    sups = {c["supervision"] for c in p.cells()}
    assert sups == {"full", "points", "points+distill"}
    assert len(p.cells()) == 3 * len(p.grid.datasets) * len(p.grid.models)
    for grid, msg in [
        (dict(supervision=["full"], distill=["points"]), "distill: 'points' is not in grid.supervision"),
        (dict(supervision=["full", "points+distill"]), "list distilled students as grid.distill"),
        (dict(supervision=["full"], distill=["full"]), "dense labels"),
    ]:
        with pytest.raises(EqsegError, match=msg):
            load_params(_params(root, tmp_path, **grid))


def test_student_loss_is_loss_for_distill_whatever_its_parent(root, tmp_path):
    p = load_params(_params(root, tmp_path))
    assert p.loss_spec("tags") == {"mil": 1.0}
    assert p.loss_spec("tags+distill") == dict(p.train.loss)  # pixel labels now: not the MIL loss
    p2 = p.model_copy(update={"train": p.train.model_copy(update={"loss_for": {"distill": {"ce": 1.0, "lovasz": 0.5}}})})
    assert p2.loss_spec("points+distill") == {"ce": 1.0, "lovasz": 0.5}


# ------------------------------------------------------------------------------------------------ the stage
def _teacher(setup: Path, supervision: str, budget: int) -> Path:
    """A teacher cell: an (untrained, seeded) unet saved as `eqseg train` saves it, with its config.json."""
    from eqseg.models import build
    from eqseg.models.checkpoint import ModelInfo, save_model
    from eqseg.tiling.store import TileStore

    meta = TileStore(setup / "tiles").meta
    torch.manual_seed(0)
    net = build("unet", 3, 2, depth=2, width=8)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.mul_(30)  # a confident teacher: probabilities spread over (0.5, 1), not all near 0.5
    info = ModelInfo(model="unet", options=dict(depth=2, width=8), in_channels=3, num_classes=2,
                     classes=list(meta.classes), band_mean=list(meta.band_mean), band_std=list(meta.band_std),
                     tile_size=64, dataset="cpm15", supervision=supervision, seed=0)
    out = setup / f"teacher-{supervision}-{budget}"
    out.mkdir(exist_ok=True)
    save_model(out / "model.pt", net, info)
    (out / "config.json").write_text(json.dumps(dict(dataset="cpm15", model="unet", supervision=supervision, seed=0,
                                                     budget=budget)))
    return out


@pytest.fixture(scope="module")
def distilled(small_setup):
    from eqseg.distill.stage import make_pseudo_stage
    from eqseg.weak.stage import make_weak_stage

    params = load_params(small_setup / "params.yaml")
    params = params.model_copy(update={"distill": params.distill.model_copy(update={"threshold": 0.55})})
    make_weak_stage(params, "cpm15", params.supervision("points"), small_setup / "tiles", small_setup / "points")
    teacher = _teacher(small_setup, "points", 50)
    outs = []
    for i in range(2):
        out = small_setup / f"pseudo{i}"
        outs.append((make_pseudo_stage(params, teacher, small_setup / "tiles", small_setup / "points", out), out))
    return params, small_setup, teacher, outs


def test_pseudo_labels_are_deterministic_and_never_overwrite_a_given_label(distilled):
    from eqseg.data.cells import select_train_ids
    from eqseg.tiling.store import TileStore

    params, setup, _, [(q0, a), (q1, b)] = distilled
    assert np.array_equal(np.load(a / "labels.npy"), np.load(b / "labels.npy"))
    assert np.array_equal(np.load(a / "ids.npy"), np.load(b / "ids.npy"))
    assert q0 == q1 | {"distill": q1["distill"] | {"teacher": q0["distill"]["teacher"]}}

    store = TileStore(setup / "tiles")
    labels, ids = np.load(a / "labels.npy"), np.load(a / "ids.npy")
    given, given_ids = np.load(setup / "points/labels.npy"), np.load(setup / "points/ids.npy")
    labelled = select_train_ids(store, params.train.max_train_tiles, 0, 50)
    assert set(labelled) < set(ids)  # the teacher's labelled tiles, plus unlabelled ones
    row = {int(t): r for r, t in enumerate(given_ids)}
    kept = 0
    for i, t in enumerate(ids):
        assert np.all(labels[i][~store.valid[t]] == IGNORE)  # padding and nodata never get a class
        if t in labelled:
            g = given[row[int(t)]]
            assert np.array_equal(labels[i][g != IGNORE], g[g != IGNORE])
            # quality records count each pixel once: the labels on pixels the tile owns (and that have truth)
            kept += int(np.count_nonzero((g != IGNORE) & (store.scored_masks([t])[0] != IGNORE)))
    d = q0["distill"]
    assert d["labelled_tiles"] == len(labelled) and d["unlabelled_tiles"] == len(ids) - len(labelled)
    assert d["given"]["labelled_pixels"] == kept
    assert 0 < d["kept_fraction"] <= 1 and d["pseudo_pixels"] > 0
    assert q0["labelled_pixels"] == kept + d["pseudo_pixels"]
    assert q0["supervision"] == "points+distill" and q0["parent"]["supervision"] == "points"


def test_a_higher_threshold_keeps_a_subset_of_the_pseudo_labels(distilled):
    from eqseg.distill.stage import make_pseudo_stage

    params, setup, teacher, [(q, a)] = distilled[0], distilled[1], distilled[2], distilled[3][:1]
    strict = params.model_copy(update={"distill": params.distill.model_copy(update={"threshold": 0.6})})
    q2 = make_pseudo_stage(strict, teacher, setup / "tiles", setup / "points", setup / "pseudo-strict")
    low, high = np.load(a / "labels.npy"), np.load(setup / "pseudo-strict/labels.npy")
    assert np.all((high == IGNORE) | (high == low))
    assert q2["distill"]["pseudo_pixels"] < q["distill"]["pseudo_pixels"]


def test_distill_refuses_labels_of_another_supervision_and_a_dense_teacher(distilled):
    from eqseg.distill.stage import make_pseudo_stage

    params, setup, teacher, _ = distilled
    with pytest.raises(EqsegError, match="labels are for supervision 'full', not 'points'"):
        make_pseudo_stage(params, teacher, setup / "tiles", setup / "labels", setup / "pseudo-bad")
    assert not (setup / "pseudo-bad").exists()
    dense = _teacher(setup, "full", 100)
    with pytest.raises(EqsegError, match="dense labels leave no pixel"):
        make_pseudo_stage(params, dense, setup / "tiles", setup / "labels", setup / "pseudo-bad")
    assert not (setup / "pseudo-bad").exists()


def test_tags_teacher_labels_only_the_tagged_classes(small_setup):
    from eqseg.distill.stage import make_pseudo_stage
    from eqseg.weak.stage import make_weak_stage

    params = load_params(small_setup / "params.yaml")
    params = params.model_copy(update={"distill": params.distill.model_copy(update={"threshold": 0.5})})
    make_weak_stage(params, "cpm15", params.supervision("tags"), small_setup / "tiles", small_setup / "tags")
    teacher = _teacher(small_setup, "tags", 100)
    make_pseudo_stage(params, teacher, small_setup / "tiles", small_setup / "tags", small_setup / "pseudo-tags")
    tags, tag_ids = np.load(small_setup / "tags/labels.npy"), np.load(small_setup / "tags/ids.npy")
    labels, ids = np.load(small_setup / "pseudo-tags/labels.npy"), np.load(small_setup / "pseudo-tags/ids.npy")
    row = {int(t): r for r, t in enumerate(tag_ids)}
    checked = 0
    for i, t in enumerate(ids):
        present = set(np.unique(labels[i])) - {IGNORE}
        assert present <= set(np.flatnonzero(tags[row[int(t)]]))
        checked += len(present) > 0
    assert checked > 0


def test_student_trains_on_the_union_and_refuses_its_parents_labels(distilled):
    from eqseg.train.loop import train

    params, setup, _, [(_, pseudo), _] = distilled
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 1, "num_workers": 0})})
    out = setup / "student"
    with pytest.raises(EqsegError, match="make them with `eqseg distill`"):
        train(params, "cpm15", "unet", "points+distill", 0, setup / "tiles", setup / "points", out, budget=50)
    train(params, "cpm15", "unet", "points+distill", 0, setup / "tiles", pseudo, out, budget=50)
    config = json.loads((out / "config.json").read_text())
    assert config["n_train_tiles"] == len(np.load(pseudo / "ids.npy"))
    assert config["distill"]["threshold"] == 0.55 and config["supervision"] == "points+distill"
