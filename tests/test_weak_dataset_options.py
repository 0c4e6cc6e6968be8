"""Weak-label options per dataset (weak.dataset_options): land cover and nuclei in one study need other options
for the same kind (points per region of every class vs per nucleus)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from eqseg.config import parse_params
from eqseg.errors import EqsegError


def _raw(root):
    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw["weak"] = {"seed": 0, "options": {"points": {"per_object": 2, "focus": 0.0}}, "expansion_options": {}}
    return raw


def test_dataset_options_override_the_kinds_options_for_that_dataset_only(root):
    raw = _raw(root)
    raw["weak"]["dataset_options"] = {"cpm15": {"points": {"per_object": 3}, "scribbles": {"regions": "all_classes"}}}
    params = parse_params(raw)
    assert params.weak_options("cpm15", "points") == {"per_object": 3, "focus": 0.0}  # merged over weak.options
    assert params.weak_options("spacenet_atlanta", "points") == {"per_object": 2, "focus": 0.0}
    assert params.weak_options("cpm15", "scribbles") == {"regions": "all_classes"}
    assert params.weak_options("cpm15", "boxes") == {}


@pytest.mark.parametrize("override, message", [
    ({"nowhere": {"points": {}}}, r"weak\.dataset_options: unknown dataset 'nowhere'"),
    ({"cpm15": {"clicks": {}}}, r"weak\.dataset_options\.cpm15: unknown kind 'clicks'"),
    ({"cpm15": {"points": {"per_objet": 1}}}, r"weak\.dataset_options\.cpm15\.points.*per_objet"),
    ({"cpm15": {"points": {"regions": "everything"}}}, r"weak\.dataset_options\.cpm15\.points.*regions"),
])
def test_bad_dataset_options_are_refused_in_one_line(root, override, message):
    raw = _raw(root)
    raw["weak"]["dataset_options"] = override
    with pytest.raises(EqsegError, match=message) as err:
        parse_params(raw)
    assert "\n" not in str(err.value)


def test_the_weak_stage_uses_the_datasets_options(small_setup, tmp_path):
    """The same clicks as the kind's options set globally to the override's values, other clicks than without it."""
    from eqseg.weak.stage import make_weak_stage

    tmp = small_setup
    base = yaml.safe_load((tmp / "params.yaml").read_text())
    runs = {}
    for name, weak in {"override": {"options": {"points": {"per_object": 1}}, "dataset_options": {"cpm15": {"points": {"per_object": 3}}}},
                       "global": {"options": {"points": {"per_object": 3}}},
                       "plain": {"options": {"points": {"per_object": 1}}}}.items():
        raw = copy.deepcopy(base)
        raw["weak"] = {"seed": 0, "expansion_options": {}, **weak}
        params = parse_params(raw)
        quality = make_weak_stage(params, "cpm15", params.supervision("points"), tmp / "tiles", tmp_path / name)
        runs[name] = (np.load(tmp_path / name / "labels.npy"), quality["effort"]["total"])
    assert np.array_equal(runs["override"][0], runs["global"][0]) and runs["override"][1] == runs["global"][1]
    assert runs["override"][1] > runs["plain"][1]
