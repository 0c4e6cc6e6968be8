"""Whole equivariant U-Nets: exact equivariance, export, width matching, errors, and use through the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqseg.errors import EqsegError
from eqseg.models import available, build, count_macs, count_parameters
from eqseg.models.gconv import GModule, GroupConv, GroupMeanMaxPool, InvariantConv1x1
from eqseg.models.groups import P4, P4M, equivariance_errors
from eqseg.models.gunet import GUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")

DEPTH, TILE = 3, 16  # a multiple of 2**DEPTH
TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}


def warmed(model, dtype):
    """Model in `dtype` after a few train-mode passes, so that eval-mode batch norm uses non-trivial statistics."""
    model = model.to(dtype)
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, TILE, TILE, dtype=dtype) * 2 + 1)
    return model


@pytest.mark.parametrize("name", ["p4_unet", "p4m_unet"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_model_is_exactly_equivariant(name, dtype, mode):
    model = warmed(build(name, 3, 2, depth=DEPTH, width=16), dtype).train(mode == "train")
    x = torch.randn(2, 3, TILE, TILE, dtype=dtype)
    errors = model.check_equivariance(x, atol=TOLERANCE[dtype])
    assert len(errors) == (8 if name == "p4m_unet" else 4)


def test_baseline_unet_fails_the_same_test():
    model = build("unet", 3, 2, depth=DEPTH, width=16).double()
    errors = equivariance_errors(model, torch.randn(2, 3, TILE, TILE, dtype=torch.float64), P4M)
    assert errors["e"] == 0.0
    assert min(v for k, v in errors.items() if k != "e") > 1e-2


@pytest.mark.parametrize("name", ["unet", "p4_unet", "p4m_unet"])
def test_tile_not_multiple_of_two_to_the_depth(name):
    model = build(name, 3, 2, depth=DEPTH, width=16)
    with pytest.raises(EqsegError, match=r"20x16 is not a multiple of 2\*\*depth = 8"):
        model(torch.zeros(1, 3, 20, 16))


@pytest.mark.parametrize("name", ["p4_unet", "p4m_unet"])
@pytest.mark.parametrize("match", ["channels", "params"])
def test_export_is_plain_and_equal(name, match):
    model = warmed(build(name, 3, 2, depth=DEPTH, width=16, match=match), torch.float32).eval()
    plain = model.export()
    assert not any(isinstance(m, GModule) for m in plain.modules())
    assert not plain.training
    assert {type(m) for m in plain.modules() if isinstance(m, nn.modules.conv._ConvNd)} == {nn.Conv2d}
    x = torch.randn(2, 3, TILE, TILE)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)


def test_width_matching():
    unet = count_parameters(build("unet", 3, 2, width=32))
    for name, order in [("p4_unet", 4), ("p4m_unet", 8)]:
        same = build(name, 3, 2, width=32, match="channels")
        assert same.fields * order == 32
        matched = build(name, 3, 2, width=32, match="params")
        n = count_parameters(matched)
        assert abs(n - unet) / unet < 0.25
        for neighbour in (matched.fields - 1, matched.fields + 1):  # no other field count is closer
            other = type(matched)(matched.group, 3, 2, matched.depth, neighbour)
            assert abs(count_parameters(other) - unet) >= abs(n - unet)


def test_equal_channels_costs_the_same_macs_with_fewer_parameters():
    unet, p4m = build("unet", 3, 2, width=16), build("p4m_unet", 3, 2, width=16)
    macs_unet, macs_p4m = count_macs(unet, 3, 32), count_macs(p4m, 3, 32)
    # same raw convs in the body; the head adds a 1x1 group conv 16 -> 16 fields x 8 raw channels (for the group
    # max), one 16 -> 16 linear map with the group-averaged filters (the group mean, gconv.invariant_head), and its
    # classifier reads 2 x 16 invariants (mean and max) instead of the unet's 16 channels: 6 % more in all
    head = 16 * 16 * 8 + 16 * 16 + 2 * 16 * 2 - 16 * 2
    assert macs_p4m - macs_unet == head * 32 * 32
    assert (macs_p4m - macs_unet) / macs_unet < 0.06
    assert count_parameters(p4m) < count_parameters(unet) / 6  # weight sharing over 8 elements


@pytest.mark.parametrize(
    "options, message",
    [
        ({"width": 12}, "width 12 is not a multiple of |p4m| = 8"),
        ({"match": "flops"}, "match must be 'channels' or 'params'"),
        ({"depth": 0}, "depth and width must be >= 1"),
        ({"colour": 1}, "bad option"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(EqsegError, match=message.replace("|", r"\|").replace("*", r"\*")):
        build("p4m_unet", 3, 2, **options)


def test_registered_and_trainable():
    assert {"p4_unet", "p4m_unet", "gridnet"} <= set(available())
    model = build("p4m_unet", 3, 4, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, TILE, TILE), torch.randint(0, 4, (2, TILE, TILE))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    opt.step()
    assert nn.functional.cross_entropy(model(x), y) < loss


def test_head_is_linear_before_group_pooling():
    """Pooling straight after a ReLU gives only non-negative invariants (a model collapsed to background)."""
    head = build("p4m_unet", 3, 2).head
    assert isinstance(head[0], GroupConv) and isinstance(head[1], GroupMeanMaxPool)
    x = torch.relu(torch.randn(1, 16, 4, 4))  # what the last block hands over
    torch.testing.assert_close(head[0](-x), -head[0](x))  # linear: its outputs take either sign


@pytest.mark.parametrize("name, order", [("p4_unet", 4), ("p4m_unet", 8)])
def test_head_gives_the_classifier_width_invariants_at_any_field_count(name, order):
    """At the channel-matched width 16, p4m has 2 fields at full resolution: pooled as they were, the classifier
    saw 2 invariants and the model stayed at all background (bench/README.md). The head widens to `width` fields
    (mean and max of each) whatever the group, for a few percent of the MACs."""
    for width in (16, 32):
        model = build(name, 3, 2, width=width)
        assert model.fields * order == width  # raw width of the body unchanged: width still counts raw channels
        assert model.head[0].out_fields == width
        classifier = model.head[-1]
        assert isinstance(classifier, InvariantConv1x1) and classifier.in_channels == 2 * width


@pytest.mark.parametrize("options", [dict(min_fields=4), dict(pool="max", head_fields=2)], ids=str)
def test_measurement_variants_stay_equivariant_and_exportable(options):
    """The constructor knobs bench/probe_group_unets.py compares (more fields at full resolution; the old head)."""
    model = GUNet(P4M, 3, 2, DEPTH, fields=2, **options)
    model = warmed(model, torch.float64).eval()
    model.check_equivariance(torch.randn(2, 3, TILE, TILE, dtype=torch.float64), atol=1e-5)
    x = torch.randn(2, 3, TILE, TILE, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.export()(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(EqsegError, match="pool must be 'max' or 'meanmax'"):
        GUNet(P4M, 3, 2, DEPTH, fields=2, pool="mean")


@pytest.mark.parametrize("group", [P4, P4M], ids=lambda g: g.name)
def test_group_mean_max_pool(group):
    x = torch.randn(2, 3 * group.order, 6, 6, dtype=torch.float64)
    pool = GroupMeanMaxPool(group, 3)
    y = pool(x)
    fields = x.view(2, 3, group.order, 6, 6)
    torch.testing.assert_close(y, torch.cat([fields.mean(2), fields.amax(2)], dim=1))
    assert pool.raw_out_channels() == 6
    errors = pool.check_equivariance(x, atol=1e-12)  # invariant over the group axis, equivariant in space
    assert set(errors) == {group.element_name(g) for g in range(group.order)}
    plain = pool.export()
    assert not isinstance(plain, GModule)
    torch.testing.assert_close(plain(x), y)


@pytest.mark.parametrize("group", [P4, P4M], ids=lambda g: g.name)
def test_group_mean_max_pool_gradient_is_that_of_mean_and_amax(group):
    """The pooling takes `max(dim)` when training, for speed: without ties its gradient is exactly amax's."""
    x = torch.randn(2, 3 * group.order, 6, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, 6, 6, dtype=torch.float64)
    pool = GroupMeanMaxPool(group, 3)
    y = pool(x)  # training path: max(dim); inference path: amax, the same values
    with torch.no_grad():
        torch.testing.assert_close(pool(x), y, rtol=0, atol=0)
    (y * weights).sum().backward()
    fast = x.grad.clone()
    x.grad = None
    fields = x.view(2, 3, group.order, 6, 6)
    (torch.cat([fields.mean(2), fields.amax(2)], dim=1) * weights).sum().backward()
    torch.testing.assert_close(fast, x.grad, rtol=0, atol=1e-15)


def test_autocast_without_dtype_assumptions():
    model = build("p4m_unet", 3, 2, width=16).eval()
    x = torch.randn(1, 3, TILE, TILE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    with torch.no_grad():
        torch.testing.assert_close(y.float(), model(x), atol=0.1, rtol=0.1)


def test_p4_is_not_flip_equivariant_but_rotation_equivariant():
    model = build("p4_unet", 3, 2, width=16).double()
    errors = equivariance_errors(model, torch.randn(1, 3, TILE, TILE, dtype=torch.float64), P4M)
    assert max(errors[k] for k in ("r1", "r2", "r3")) < 1e-10
    assert min(errors[k] for k in ("m", "mr1", "mr2", "mr3")) > 1e-2
