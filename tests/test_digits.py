"""Rotated digits on a small budget: the P4CNN is invariant to quarter turns, the plain CNN is not."""

from __future__ import annotations

import json

import pytest
import torch

from eqseg.digits import run
from eqseg.digits.data import load_digits, rotate_random, split
from eqseg.digits.nets import cnn, p4cnn
from eqseg.errors import EqsegError
from eqseg.models.groups import P4, equivariance_errors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGET = {"epochs": 2, "n_train": 1000, "seed": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return {m: (run(out / m, model=m, **BUDGET), out / m) for m in ("cnn", "p4cnn")}


def test_p4cnn_is_invariant_to_quarter_turns(results):
    m, _ = results["p4cnn"]
    assert m["acc_upright"] > 0.6  # it learned something
    assert m["acc_rot90"] == m["acc_rot180"] == m["acc_rot270"] == m["acc_upright"]


def test_cnn_drops_under_rotation(results):
    m, _ = results["cnn"]
    assert m["acc_upright"] > 0.6
    assert max(m["acc_rot90"], m["acc_rot270"]) < m["acc_upright"] - 0.2


def test_metrics_file_matches_return_value(results):
    for m, out in results.values():
        assert json.loads((out / "metrics.json").read_text()) == m
        assert {"acc_upright", "acc_rot90", "acc_rot180", "acc_rot270", "acc_random", "n_params"} <= set(m)


def test_deterministic_for_a_seed(tmp_path):
    small = {"model": "cnn", "epochs": 1, "n_train": 300, "device": "cpu"}
    first, again, other = (run(tmp_path / str(i), seed=s, **small) for i, s in enumerate((1, 1, 2)))
    assert first == again
    assert other != first


def test_logits_exactly_invariant():
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    body = p4cnn().double()[0]  # logits as (B, 10, 1, 1) maps, on which rotations act trivially
    assert max(body.check_equivariance(x).values()) < 1e-12
    assert max(equivariance_errors(cnn().double()[:-1], x, P4).values()) > 1e-2


def test_parameter_counts_close_as_in_the_paper():
    n_cnn, n_p4 = (sum(p.numel() for p in f().parameters()) for f in (cnn, p4cnn))
    assert abs(n_p4 - n_cnn) / n_cnn < 0.2


def test_data_and_split():
    images, labels = load_digits()
    assert images.shape == (5000, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.bincount(labels).tolist() == [500] * 10
    (tx, ty), (vx, vy) = split(images, labels, 100)
    assert len(ty) == 100 and len(vy) == 1000
    (_, ty2), (_, vy2) = split(images, labels, 4000)
    assert torch.equal(vy, vy2) and torch.equal(ty, ty2[:100])  # same test set, nested train sets
    rotated = rotate_random(vx[:4])
    assert rotated.shape == (4, 1, 28, 28) and not torch.equal(rotated, vx[:4])
    with pytest.raises(EqsegError, match="n_train must be in 1..4000"):
        split(images, labels, 4001)


def test_bad_arguments(tmp_path):
    with pytest.raises(EqsegError, match="unknown model"):
        run(tmp_path, model="resnet", epochs=1, seed=0, n_train=10)
    with pytest.raises(EqsegError, match="not found"):
        run(tmp_path, model="cnn", epochs=1, seed=0, n_train=10, data=tmp_path / "missing.csv.gz")
