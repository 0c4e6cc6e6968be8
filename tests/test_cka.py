"""Linear CKA (one batch and debiased minibatch) and invariance profiles of unet vs p4m_unet."""

import numpy as np
import pytest
import torch

from eqseg import models
from eqseg.compare.cka import (
    MinibatchCKA, cka_matrix, default_layers, invariance_profile, linear_cka,
)
from eqseg.errors import EqsegError


def _feature_cka(x, y):
    """Kornblith et al.'s feature-space form of biased linear CKA: ‖YcᵀXc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def _unbiased_hsic_loops(k, l):
    """Song et al. (2012) eq. 5 written with explicit sums."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    t1 = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    t2 = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    t3 = 2 / (n - 2) * sum(kt[i, j] * lt[j, m] for i in range(n) for j in range(n) for m in range(n))
    return (t1 + t2 - t3) / (n * (n - 3))


def test_biased_cka_matches_feature_space_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7))
    y = x @ rng.normal(size=(7, 4)) + 0.5 * rng.normal(size=(50, 4))
    assert linear_cka(x, y) == pytest.approx(_feature_cka(x, y), rel=1e-10)


def test_debiased_cka_matches_explicit_unbiased_hsic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 3)), rng.normal(size=(9, 5))
    k, l = x @ x.T, y @ y.T
    want = _unbiased_hsic_loops(k, l) / np.sqrt(_unbiased_hsic_loops(k, k) * _unbiased_hsic_loops(l, l))
    assert linear_cka(x, y, debiased=True) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_self_one_and_invariances(debiased):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 30))
    y = np.tanh(x @ rng.normal(size=(30, 20))) + 0.3 * rng.normal(size=(200, 20))
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    ref = linear_cka(x, y, debiased)
    assert 0.05 < ref < 0.99
    assert linear_cka(x @ q, y, debiased) == pytest.approx(ref, abs=1e-10)  # orthogonal transform
    assert linear_cka(3.7 * x, 0.01 * y, debiased) == pytest.approx(ref, abs=1e-10)  # isotropic scaling
    assert abs(linear_cka(x @ np.diag(np.linspace(0.1, 5, 30)), y, debiased) - ref) > 1e-3  # not any linear map


def test_minibatch_debiased_near_zero_for_independent_features():
    rng = np.random.default_rng(3)
    unbiased, biased = MinibatchCKA(1, 2), MinibatchCKA(1, 1, debiased=False)
    for _ in range(20):  # 20 batches of 200 examples = 4000
        x = torch.as_tensor(rng.normal(size=(200, 64)))
        y = torch.as_tensor(rng.normal(size=(200, 64)))
        unbiased.update([x], [y, x])
        biased.update([x], [y])
    out = unbiased.compute()
    assert unbiased.examples == 4000
    assert abs(out[0, 0]) < 0.02 and out[0, 1] == pytest.approx(1.0)
    assert biased.compute()[0, 0] > 0.15  # the biased estimator does not go to 0 at this n/p
    with pytest.raises(EqsegError, match="at least 4"):
        MinibatchCKA(1, 1).update([x[:3]], [y[:3]])


def test_cka_matrix_of_models():
    torch.manual_seed(0)
    a = models.build("unet", 3, 2, depth=2, width=8).double()
    b = models.build("p4m_unet", 3, 2, depth=2, width=8).double()
    batches = [torch.randn(6, 3, 16, 16, dtype=torch.float64) for _ in range(2)]
    same = cka_matrix(a, a, batches)
    assert same["layers_a"] == default_layers(a) == ["down.0", "down.1", "down.2", "up.0", "up.1", "head"]
    assert same["examples"] == 12
    assert np.allclose(np.diag(same["cka"]), 1.0)
    cross = cka_matrix(a, b, batches, layers_b=["down.0", "head"], spatial=4)
    assert cross["cka"].shape == (6, 2) and np.isfinite(cross["cka"]).all()
    pairs = [(x, torch.zeros(6, 16, 16)) for x in batches]  # (x, y) batches of a DataLoader
    assert np.allclose(cka_matrix(a, b, pairs, layers_b=["down.0", "head"], spatial=4)["cka"], cross["cka"])
    with pytest.raises(EqsegError, match="nope"):
        cka_matrix(a, b, batches, layers_a=["nope"])


def test_invariance_profile_p4m_unet_zero_unet_not():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    p4m = models.build("p4m_unet", 3, 2, depth=2, width=8).double()
    prof = invariance_profile(p4m, x)
    assert set(prof) == set(default_layers(p4m))
    assert list(prof["head"]) == ["e", "r1", "r2", "r3", "m", "mr1", "mr2", "mr3"]
    assert max(max(v.values()) for v in prof.values()) < 1e-10  # every layer, pooled over the group
    unet = models.build("unet", 3, 2, depth=2, width=8).double()
    prof_u = invariance_profile(unet, x)
    assert prof_u["head"]["e"] < 1e-12
    assert min(v for k, v in prof_u["head"].items() if k != "e") > 1e-2
    p4 = models.build("p4_unet", 3, 2, depth=2, width=8).double()
    prof_p4 = invariance_profile(p4, x, layers=["head"], pool="mean")["head"]
    assert max(prof_p4[k] for k in ("r1", "r2", "r3")) < 1e-10 and prof_p4["m"] > 1e-4  # p4 has no mirrors
