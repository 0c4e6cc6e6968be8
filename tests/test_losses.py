"""Losses: Lovász-softmax against a brute-force Lovász extension, the partial-label losses, MIL, consistency."""

from __future__ import annotations

import itertools
from fractions import Fraction

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


def brute_force_lovasz(logits: np.ndarray, target: np.ndarray, extension, per_image: bool = False, classes: str = "present") -> float:
    if per_image:  # the mean over the images that have a labelled pixel (0 when none has)
        losses = [brute_force_lovasz(logits[i : i + 1], target[i : i + 1], extension, classes=classes)
                  for i in range(len(target)) if (target[i] != IGNORE).any()]
        return float(np.mean(losses)) if losses else 0.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = np.moveaxis(e / e.sum(axis=1, keepdims=True), 1, -1).reshape(-1, logits.shape[1])
    t = target.reshape(-1)
    probs, t = probs[t != IGNORE], t[t != IGNORE]
    losses = []
    for c in np.unique(t) if classes == "present" else range(logits.shape[1]):
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
    assert per_image == pytest.approx(brute_force_lovasz(logits, target, extension_by_sorting, per_image=True), abs=1e-12)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_per_image_lovasz_is_not_diluted_by_tiles_without_labels(classes):
    """With sparse labels a tile without any is common: per image, the loss is the mean over the labelled images,
    so adding unlabelled tiles to a batch changes nothing (counted as 0 they halved it); none labelled: 0."""
    logits, target = random_case(7, max_labelled=6)
    one = lovasz_softmax(torch.tensor(logits[:1]), torch.tensor(target[:1]), classes=classes, per_image=True)
    empty = np.full_like(target[:1], IGNORE)
    batch = (np.concatenate([logits[:1], logits[:1] * 0.5, logits[:1] - 1.0]), np.concatenate([target[:1], empty, empty]))
    padded = lovasz_softmax(torch.tensor(batch[0]), torch.tensor(batch[1]), classes=classes, per_image=True)
    ref = brute_force_lovasz(logits[:1], target[:1], extension_by_permutations, classes=classes)
    assert one.item() == pytest.approx(ref, abs=1e-12) and padded.item() == pytest.approx(ref, abs=1e-12)
    x = torch.tensor(batch[0], requires_grad=True)
    none = lovasz_softmax(x, torch.tensor(np.full_like(batch[1], IGNORE)), classes=classes, per_image=True)
    none.backward()
    assert none.item() == 0.0 and not x.grad.any()


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_lovasz_sort_order_matches_torch_sort_with_ties(dtype):
    """descending_order (numpy's argsort on the CPU) against torch.sort: the same sorted values per class row, each
    row a permutation, ties (many zero errors, as unlabelled pixels give) included."""
    from eqseg.losses.lovasz import descending_order

    g = torch.Generator().manual_seed(0)
    errors = torch.randint(0, 5, (3, 1000), generator=g).to(dtype) / 4  # 5 values: ties everywhere
    errors[:, :200] = torch.rand(3, 200, generator=g).to(dtype)
    order = descending_order(errors)
    assert order.shape == errors.shape and order.dtype == torch.int64
    assert torch.equal(order.sort(dim=1).values, torch.arange(1000).expand(3, 1000))
    assert torch.equal(errors.gather(1, order), torch.sort(errors, dim=1, descending=True).values)


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_all_classes_matches_the_enumerated_extension(seed):
    """classes='all' also averages the classes absent from the labels: Δ_J = 1 on any nonempty M when F = ∅, so
    such a class costs its largest probability on a labelled pixel."""
    logits, target = random_case(200 + seed, max_labelled=5)
    logits[:, -1] += 1.5  # the last class: often predicted, rarely labelled
    target[target == logits.shape[1] - 1] = 0  # ... never labelled: absent from every image
    x, t = torch.tensor(logits), torch.tensor(target)
    for per_image in (False, True):
        ours = lovasz_softmax(x, t, classes="all", per_image=per_image).item()
        assert ours == pytest.approx(
            brute_force_lovasz(logits, target, extension_by_permutations, per_image=per_image, classes="all"), abs=1e-12
        )
    # absent class alone: its term is the max over labelled pixels of its probability
    probs = torch.softmax(x, dim=1).movedim(1, -1)[t != IGNORE]
    k = logits.shape[1]
    present = np.unique(target[target != IGNORE])
    both = lovasz_softmax(x, t, classes="all").item() * k
    assert both - lovasz_softmax(x, t).item() * len(present) == pytest.approx(
        sum(probs[:, c].max().item() for c in range(k) if c not in present), abs=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_of_half_precision_logits_are_computed_in_float32(dtype):
    """Autocast hands the losses half-precision logits: every loss upcasts them before its softmax or pooling."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 3, 6, 6)).to(dtype)
    target = torch.randint(0, 3, (2, 6, 6))
    target[:, :2] = IGNORE
    tags = torch.tensor([[1, 0, 1], [0, 1, 1]])
    losses = [
        lambda z: lovasz_softmax(z, target), lambda z: lovasz_softmax(z, target, per_image=True),
        lambda z: partial_cross_entropy(z, target), lambda z: dice_loss(z, target),
        lambda z: mil_loss(z, tags), lambda z: mil_loss(z, tags, pool="topk"), lambda z: mil_loss(z, tags, pool="mean"),
    ]
    for loss in losses:
        value, reference = loss(logits), loss(logits.float())
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference.item(), abs=1e-6)


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


def test_partial_cross_entropy_averages_over_an_uneven_number_of_labelled_pixels():
    logits = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.5, 1.0, 3.0]]]], dtype=torch.float64)  # (1, 2, 1, 3)
    one = torch.tensor([[[IGNORE, 1, IGNORE]]], dtype=torch.uint8)  # a single labelled pixel, uint8 as stored
    assert partial_cross_entropy(logits, one).item() == pytest.approx(-np.log(np.exp(1.0) / (np.exp(0.0) + np.exp(1.0))), abs=1e-12)
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, :4] = IGNORE  # 30 labelled pixels, 20 not
    labelled = target != IGNORE
    expected = F.cross_entropy(logits.movedim(1, -1)[labelled], target[labelled]).item()
    assert partial_cross_entropy(logits, target).item() == pytest.approx(expected, abs=1e-12)
    assert partial_cross_entropy(logits, target.to(torch.uint8)).item() == pytest.approx(expected, abs=1e-12)


def reference_dice(logits: np.ndarray, target: np.ndarray, classes: str, smooth: float) -> float:
    """1 - mean over classes of (2 Σ p y + s) / (Σ p + Σ y + s), sums over the batch's labelled pixels, by loops."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    terms = []
    for c in range(logits.shape[1]):
        inter = p_sum = y_sum = 0.0
        for b, i, j in itertools.product(*map(range, target.shape)):
            if target[b, i, j] == IGNORE:
                continue
            y = float(target[b, i, j] == c)
            inter, p_sum, y_sum = inter + probs[b, c, i, j] * y, p_sum + probs[b, c, i, j], y_sum + y
        if classes == "all" or y_sum > 0:
            terms.append(1 - (2 * inter + smooth) / (p_sum + y_sum + smooth))
    return float(np.mean(terms))


@pytest.mark.parametrize("classes, smooth", [("present", 1.0), ("all", 1.0), ("present", 0.5), ("all", 0.5), ("all", 0.0)])
def test_dice_matches_the_definition_pooled_over_the_batch(classes, smooth):
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(2, 4, 4, 5))
    logits[:, 3] -= 9.0  # class 3: never labelled, almost never predicted (Σ p + s < 1 when s = 0.5)
    target = rng.integers(0, 3, size=(2, 4, 5))
    target[0, :, :2] = IGNORE
    target[1, 0] = IGNORE
    target[1, target[1] == 2] = 1  # class 2 labelled in the first image only
    ours = dice_loss(torch.tensor(logits), torch.tensor(target), classes=classes, smooth=smooth).item()
    assert ours == pytest.approx(reference_dice(logits, target, classes, smooth), abs=1e-12)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("smooth", [0.0, 0.5, 1.0])
def test_dice_of_a_batch_without_labels_is_zero(classes, smooth):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = dice_loss(x, torch.full((2, 4, 4), IGNORE), classes=classes, smooth=smooth)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    with pytest.raises(EqsegError, match=r"loss.dice: smooth must be a number in \[0.0, inf\) \(got -1.0\)"):
        dice_loss(x, torch.zeros(2, 4, 4, dtype=torch.long), smooth=-1.0)


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


def reference_pool(z: np.ndarray, pool: str = "lse", sharpness: float = 5.0, top: float = 0.1) -> np.ndarray:
    """Image scores by the formulas of the docstring, in numpy, per (image, class)."""
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    if pool == "lse":
        return np.log(np.mean(np.exp(sharpness * flat), axis=2)) / sharpness
    if pool == "topk":
        n = int(np.ceil(float(Fraction(str(top)) * flat.shape[2])))  # exact ceiling of top·HW, at least 1 for top > 0
        return np.sort(flat, axis=2)[:, :, ::-1][:, :, :n].mean(axis=2)
    return flat.max(axis=2) if pool == "max" else flat.mean(axis=2)


def reference_bce(scores: np.ndarray, tags: np.ndarray) -> float:
    """Mean of -log σ(s) for tag 1 and -log(1 - σ(s)) for tag 0, as log(1 + e^∓s) (exact for large |s| too)."""
    return float(np.mean(np.where(tags == 1, np.logaddexp(0.0, -scores), np.logaddexp(0.0, scores))))


@pytest.mark.parametrize(
    "options", [{}, {"pool": "lse", "sharpness": 0.5}, {"pool": "lse", "sharpness": 2.0}, {"pool": "topk"},
                {"pool": "topk", "top": 0.2}, {"pool": "topk", "top": 0.01}, {"pool": "max"}, {"pool": "mean"}],
)
def test_image_scores_and_mil_loss_match_the_formulas(options):
    """Defaults as documented (lse, sharpness 5, top 0.1); 5 x 8 pixels: top 0.1 -> 4 pixels, 0.2 -> 8, 0.01 -> 1."""
    rng = np.random.default_rng(4)
    z = rng.normal(scale=1.5, size=(2, 3, 5, 8))
    tags = np.array([[1, 0, 1], [0, 0, 1]])
    reference = reference_pool(z, **options)
    assert image_scores(torch.tensor(z), **options).numpy() == pytest.approx(reference, abs=1e-12)
    assert mil_loss(torch.tensor(z), torch.tensor(tags), **options).item() == pytest.approx(reference_bce(reference, tags), abs=1e-12)


def test_topk_takes_the_ceiling_of_the_fraction():
    z = torch.arange(12.0, dtype=torch.float64).view(1, 1, 3, 4)  # 0..11: the top n pixels average to 11 - (n-1)/2
    for top, n in [(0.2, 3), (0.25, 3), (0.26, 4), (0.01, 1), (1.0, 12)]:
        assert image_scores(z, "topk", top=top).item() == pytest.approx(11 - (n - 1) / 2, abs=1e-12)


def test_mil_loss_is_exact_for_saturated_scores():
    """Confidently wrong scores cost |s|, not a clamped log(0): the loss works on logits, not on probabilities."""
    logits = torch.full((1, 2, 2, 2), 200.0, dtype=torch.float64)
    logits[0, 1] = -200.0
    tags = torch.tensor([[0, 1]])
    assert mil_loss(logits, tags, pool="max").item() == pytest.approx(200.0, rel=1e-12)


@pytest.mark.parametrize(
    "options, message",
    [({"sharpness": 0.0}, "loss.mil: sharpness must be a number in (0.0, inf)"), ({"pool": "topk", "top": 0.0}, "loss.mil: top must be a number in (0.0, 1.0]"),
     ({"pool": "topk", "top": 1.5}, "loss.mil: top must be a number in (0.0, 1.0]")],
)
def test_mil_options_out_of_range_fail(options, message):
    with pytest.raises(EqsegError) as err:
        mil_loss(torch.zeros(1, 2, 2, 2), torch.ones(1, 2), **options)
    assert message in str(err.value)


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


class Recording(torch.nn.Module):
    """A fixed, non-equivariant conv that remembers every input, to read back which element was drawn."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return self.conv(x)


def drawn_element(x: torch.Tensor, turned: torch.Tensor) -> int:
    (g,) = [g for g in range(8) if torch.equal(d4_apply(x, g), turned)]
    return g


def test_consistency_draws_every_non_identity_element():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    seen = set()
    for seed in range(48):
        model = Recording()
        consistency_loss(model, x, torch.Generator().manual_seed(seed))
        assert len(model.inputs) == 2 and model.inputs[0] is x
        seen.add(drawn_element(x, model.inputs[1]))
    assert seen == set(range(1, 8))


@pytest.mark.parametrize("seed", range(4))
def test_consistency_value_and_gradients_follow_the_definition(seed):
    """|softmax(f(g·x)) - g·softmax(f(x))|² summed over classes, averaged over pixels; gradient through both branches,
    and through the `logits` passed in (one forward pass saved), checked against autograd of the formula."""
    torch.manual_seed(seed)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    for pass_logits in (False, True):
        model = Recording()
        logits = model(x).detach().requires_grad_() if pass_logits else None
        model.inputs.clear()
        loss = consistency_loss(model, x, torch.Generator().manual_seed(seed), logits=logits)
        loss.backward()
        assert len(model.inputs) == (1 if pass_logits else 2)
        g = drawn_element(x, model.inputs[-1])
        ours = [loss.item(), *(p.grad.clone() for p in model.parameters())] + ([logits.grad.clone()] if pass_logits else [])

        model.zero_grad()
        ref_logits = logits.detach().clone().requires_grad_() if pass_logits else model.conv(x)
        turned, straight = torch.softmax(model.conv(d4_apply(x, g)), 1), torch.softmax(ref_logits, 1)
        diff = turned - d4_apply(straight, g)
        reference = sum(diff[:, c] ** 2 for c in range(3)).sum() / (2 * 5 * 5)
        reference.backward()
        expected = [reference.item(), *(p.grad for p in model.parameters())] + ([ref_logits.grad] if pass_logits else [])
        assert ours[0] == pytest.approx(expected[0], abs=1e-14) and ours[0] > 1e-3
        for a, b in zip(ours[1:], expected[1:]):
            torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-10)


def test_consistency_is_zero_for_a_d4_symmetric_convolution():
    """A conv whose kernels are invariant under D4 commutes with every element (zero padding on a square tile), yet
    not with arbitrary pixel permutations: pairing g·x with g⁻¹ or another element would show."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(sum(d4_apply(conv.weight, g) for g in range(8)) / 8)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    swap = [1, 0, 2, 3, 4, 5]  # a permutation of columns outside D4: the conv does not commute with it
    assert not torch.allclose(conv(x[..., swap]), conv(x)[..., swap])
    assert max(consistency_loss(conv, x, torch.Generator().manual_seed(s)).item() for s in range(12)) < 1e-24


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
