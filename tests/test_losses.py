"""Losses: Lovász-softmax against a brute-force Lovász extension, the partial-label losses, MIL, consistency."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eqseg.errors import EqsegError
from eqseg.losses import (
    build_loss, consistency_loss, d4_apply, d4_inverse, dice_loss, image_scores, lovasz_softmax, mil_loss,
    partial_cross_entropy,
)

IGNORE = 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: on a shared 2-core machine extra torch threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ brute-force Lovász extension
def jaccard_set_loss(mispredicted: frozenset, fg: frozenset) -> float:
    """Δ_J(M) = |M| / |F ∪ M|, straight from the definition of the Jaccard loss as a set function."""
    union = fg | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def extension_by_sorting(m: np.ndarray, fg: frozenset) -> float:
    """Σ_i m_πi (Δ({π1..πi}) - Δ({π1..πi-1})) for π sorting m decreasingly, Δ evaluated on explicit sets."""
    order = np.argsort(-m, kind="stable")
    total, previous = 0.0, 0.0
    for i in range(len(order)):
        current = jaccard_set_loss(frozenset(order[: i + 1].tolist()), fg)
        total += m[order[i]] * (current - previous)
        previous = current
    return total


def extension_by_permutations(m: np.ndarray, fg: frozenset) -> float:
    """Max over every ordering of the greedy sum: the Lovász extension of a submodular Δ (Jaccard is one)."""
    best = -np.inf
    for perm in itertools.permutations(range(len(m))):
        steps = [jaccard_set_loss(frozenset(perm[:i]), fg) for i in range(len(m) + 1)]
        best = max(best, sum(m[perm[i]] * (steps[i + 1] - steps[i]) for i in range(len(m))))
    return best


def brute_force_lovasz(logits: np.ndarray, target: np.ndarray, extension, per_image: bool = False) -> float:
    if per_image:
        return float(np.mean([brute_force_lovasz(logits[i : i + 1], target[i : i + 1], extension) for i in range(len(target))]))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = np.moveaxis(e / e.sum(axis=1, keepdims=True), 1, -1).reshape(-1, logits.shape[1])
    t = target.reshape(-1)
    probs, t = probs[t != IGNORE], t[t != IGNORE]
    losses = []
    for c in np.unique(t):
        is_c = (t == c).astype(float)
        losses.append(extension(np.abs(is_c - probs[:, c]), frozenset(np.flatnonzero(is_c).tolist())))
    return float(np.mean(losses))


def random_case(seed: int, max_labelled: int):
    rng = np.random.default_rng(seed)
    b, k, h, w = int(rng.integers(1, 3)), int(rng.integers(2, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    logits = rng.normal(scale=2.0, size=(b, k, h, w))
    target = rng.integers(0, k, size=(b, h, w))
    target[rng.random((b, h, w)) < 0.25] = IGNORE
    target.flat[np.flatnonzero(target != IGNORE)[max_labelled:]] = IGNORE
    if not (target != IGNORE).any():
        target.flat[0] = 0
    return logits, target


@pytest.mark.parametrize("seed", range(12))
def test_lovasz_value_matches_the_enumerated_extension(seed):
    logits, target = random_case(seed, max_labelled=6)
    ours = lovasz_softmax(torch.tensor(logits), torch.tensor(target)).item()
    assert ours == pytest.approx(brute_force_lovasz(logits, target, extension_by_permutations), abs=1e-12)
    assert ours == pytest.approx(brute_force_lovasz(logits, target, extension_by_sorting), abs=1e-12)
    per_image = lovasz_softmax(torch.tensor(logits), torch.tensor(target), per_image=True).item()
    if all((target[i] != IGNORE).any() for i in range(len(target))):
        assert per_image == pytest.approx(brute_force_lovasz(logits, target, extension_by_sorting, per_image=True), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_lovasz_gradient_matches_finite_differences_of_the_brute_force(seed):
    logits, target = random_case(100 + seed, max_labelled=18)
    x = torch.tensor(logits, requires_grad=True)
    lovasz_softmax(x, torch.tensor(target)).backward()
    eps, numeric = 1e-6, np.zeros_like(logits)
    for i in range(logits.size):
        plus, minus = logits.copy(), logits.copy()
        plus.flat[i] += eps
        minus.flat[i] -= eps
        numeric.flat[i] = (
            brute_force_lovasz(plus, target, extension_by_sorting) - brute_force_lovasz(minus, target, extension_by_sorting)
        ) / (2 * eps)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(x.grad.numpy(), numeric, atol=1e-7)


def test_lovasz_on_hard_predictions_is_one_minus_iou():
    """The extension agrees with Δ_J on 0/1 errors: with saturated softmax, the loss is 1 - mean IoU."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, size=(2, 16, 16))
    pred = np.where(rng.random(target.shape) < 0.3, rng.integers(0, 3, target.shape), target)
    target[:, :4] = IGNORE
    logits = torch.tensor(60.0 * np.moveaxis(np.eye(3)[pred], -1, 1))
    keep = target != IGNORE
    iou = [((pred == c) & (target == c) & keep).sum() / (((pred == c) | (target == c)) & keep).sum() for c in range(3)]
    assert lovasz_softmax(logits, torch.tensor(target)).item() == pytest.approx(1 - np.mean(iou), abs=1e-9)


def test_lovasz_float32_and_empty_targets():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGNORE)
    loss = lovasz_softmax(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    with pytest.raises(EqsegError, match="loss.lovasz: classes must be one of present, all"):
        lovasz_softmax(logits, target, classes="some")


# ------------------------------------------------------------------------------------------------ partial labels
def test_partial_cross_entropy_sees_labelled_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    target[:, :3] = IGNORE
    labelled = target != IGNORE
    expected = F.cross_entropy(logits.movedim(1, -1)[labelled], target[labelled])
    assert partial_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[:, :, :3] = 100.0  # unlabelled pixels do not matter
    assert partial_cross_entropy(changed, target).item() == pytest.approx(expected.item(), rel=1e-6)
    x = logits.clone().requires_grad_()
    loss = partial_cross_entropy(x, torch.full_like(target, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_dice_ignores_unlabelled_pixels_and_absent_classes():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    target[0, 6:] = IGNORE
    perfect = 50.0 * F.one_hot(torch.where(target == IGNORE, 2, target), 3).movedim(-1, 1).double()
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-9)  # class 2 only on unlabelled pixels
    stray = perfect.clone()
    stray[:, :, 0, :] = perfect[:, :, 6, :]  # class 2 predicted on a labelled background row
    assert dice_loss(stray, target, classes="all").item() > dice_loss(stray, target).item() + 0.25
    wrong = perfect.clone()
    wrong[:, :, 2:5, 2:5] = perfect[:, :, 0:3, 0:3]
    assert dice_loss(wrong, target).item() > 0.4


# -------------------------------------------------------------------------------------------------- image tags
def test_mil_pooling_sits_between_mean_and_max():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    mean, top = logits.flatten(2).mean(2), logits.flatten(2).amax(2)
    soft = image_scores(logits, "lse", sharpness=5.0)
    assert (soft > mean).all() and (soft < top).all()
    assert torch.allclose(image_scores(logits, "lse", sharpness=1e3), top, atol=0.02)
    assert torch.allclose(image_scores(logits, "topk", top=1 / 64), top)
    assert torch.allclose(image_scores(logits, "topk", top=1.0), mean, atol=1e-6)


def test_mil_loss_learns_the_tags():
    tags = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.uint8)
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    optimiser = torch.optim.SGD([logits], lr=50.0)
    start = mil_loss(logits, tags).item()
    for _ in range(30):
        optimiser.zero_grad()
        mil_loss(logits, tags, pool="topk", top=0.1).backward()
        optimiser.step()
    scores = image_scores(logits.detach(), "topk", top=0.1)
    assert mil_loss(logits, tags).item() < start
    assert ((scores > 0) == tags.bool()).all()
    with pytest.raises(EqsegError, match="loss.mil: pool must be one of lse, topk, max, mean"):
        mil_loss(logits, tags, pool="median")


# ----------------------------------------------------------------------------------------------- equivariance
def test_d4_inverse_undoes_every_element():
    x = torch.randn(2, 3, 5, 5)
    images = [d4_apply(x, g) for g in range(8)]
    assert all(torch.equal(d4_apply(images[g], d4_inverse(g)), x) for g in range(8))
    assert len({im.numpy().tobytes() for im in images}) == 8


def test_consistency_is_zero_for_an_equivariant_model_and_trains_a_plain_one():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    pointwise = torch.nn.Conv2d(3, 2, 1)  # acts on each pixel alone: equivariant to every permutation of pixels
    assert consistency_loss(pointwise, x, torch.Generator().manual_seed(0)).item() < 1e-12
    conv = torch.nn.Conv2d(3, 2, 5, padding=2)
    a = consistency_loss(conv, x, torch.Generator().manual_seed(1))
    b = consistency_loss(conv, x, torch.Generator().manual_seed(1))
    assert a.item() > 1e-4 and a.item() == b.item()
    optimiser = torch.optim.Adam(conv.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(2)
    for _ in range(40):
        optimiser.zero_grad()
        consistency_loss(conv, x, generator).backward()
        optimiser.step()
    after = np.mean([consistency_loss(conv, x, torch.Generator().manual_seed(s)).item() for s in range(8)])
    assert after < a.item() / 5


# --------------------------------------------------------------------------------------------------- weighted sums
def test_build_loss_sums_weighted_terms():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    target[:, :2] = IGNORE
    loss = build_loss({"ce": 1.0, "lovasz": 0.5, "dice": 0.0})
    expected = partial_cross_entropy(logits, target) + 0.5 * lovasz_softmax(logits, target)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(loss.terms(logits, target)) == {"ce", "lovasz"}
    tags = torch.tensor([[1, 0], [1, 1]])
    mil = build_loss({"mil": {"weight": 2.0, "pool": "max"}})
    assert mil(logits, tags=tags).item() == pytest.approx(2 * mil_loss(logits, tags, pool="max").item(), rel=1e-6)
    model = torch.nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(2, 2, 8, 8)
    combined = build_loss({"ce": 1.0, "consistency": 0.1})
    value = combined(model(x), target, model=model, x=x, generator=torch.Generator().manual_seed(0))
    value.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"focal": 1.0}, "loss: unknown term 'focal' (allowed: ce, lovasz, dice, mil, consistency)"),
        ({"ce": -1.0}, "loss.ce: weight must be a number in [0.0, inf) (got -1.0)"),
        ({"ce": "heavy"}, "loss.ce: weight must be a number"),
        ({"mil": {"weight": 1.0, "pooling": "max"}}, "loss.mil: unknown option 'pooling' (allowed: pool, sharpness, top)"),
        ({"ce": 0.0}, "loss: every term has weight 0"),
        ({}, "loss: spec must be a non-empty mapping"),
    ],
)
def test_bad_loss_specs_fail_with_one_line(spec, message):
    with pytest.raises(EqsegError) as err:
        build_loss(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_inputs_are_named():
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(EqsegError, match="loss: term 'mil' needs tags= when called"):
        build_loss({"mil": 1.0})(logits)
    with pytest.raises(EqsegError, match="loss: term 'consistency' needs model= when called"):
        build_loss({"consistency": 1.0})(logits)
    with pytest.raises(EqsegError, match="loss: unknown input 'image'"):
        build_loss({"ce": 1.0})(logits, torch.zeros(1, 4, 4, dtype=torch.long), image=logits)
