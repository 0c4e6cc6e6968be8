"""Group algebra and equivariant layers checked against the mathematics, not against themselves."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from eqseg.errors import EqsegError
from eqseg.models import gconv as G
from eqseg.models.gconv import _filter_index
from eqseg.models.groups import P4, P4M, get_group

pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")

GROUPS = [P4, P4M]


# --- group algebra ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_composition_table_is_a_group(group):
    n, e = group.order, 0
    for a, b in itertools.product(range(n), repeat=2):
        assert 0 <= group.compose(a, b) < n  # closure
    for a in range(n):
        assert group.compose(e, a) == group.compose(a, e) == a
        assert group.compose(a, group.inverse(a)) == group.compose(group.inverse(a), a) == e
        assert sorted(group.compose(a, b) for b in range(n)) == list(range(n))  # Latin square
    for a, b, c in itertools.product(range(n), repeat=3):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_composition_matches_the_action_on_images(group):
    x = torch.randn(2, 3, 5, 7)  # non-square, odd: any grid transform bug shows
    for a, b in itertools.product(range(group.order), repeat=2):
        assert torch.equal(group.transform(group.transform(x, b), a), group.transform(x, group.compose(a, b)))
    square = torch.randn(5, 5)
    assert len({tuple(group.transform(square, g).flatten().tolist()) for g in range(group.order)}) == group.order


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_regular_action_is_a_group_action(group):
    x = torch.randn(2, 3 * group.order, 6, 6)
    for a, b in itertools.product(range(group.order), repeat=2):
        lhs = group.act(group.act(x, b, "regular"), a, "regular")
        assert torch.equal(lhs, group.act(x, group.compose(a, b), "regular"))


def test_p4_is_the_rotation_subgroup_of_p4m():
    for a, b in itertools.product(range(4), repeat=2):
        assert P4.compose(a, b) == P4M.compose(a, b)
    assert [P4M.element_name(g) for g in range(8)] == ["e", "r1", "r2", "r3", "m", "mr1", "mr2", "mr3"]
    with pytest.raises(EqsegError, match="unknown group"):
        get_group("p6")


@pytest.mark.parametrize("group, in_order", [(P4, 1), (P4, 4), (P4M, 1), (P4M, 8)], ids=str)
def test_filter_index_rows_are_permutations(group, in_order):
    index = _filter_index(group, in_order, 3)
    for row in index:
        assert sorted(row.tolist()) == list(range(in_order * 9))


# --- convolutions against a slow reference ----------------------------------------------------------------------


def reference_group_conv(group, x, weight, lifting):
    """Definition, looping over output elements h: filter_h[o, c, h'] = T_h(W[o, c, h^-1 h']), spatially via rot90/flip."""
    out = []
    for h in range(group.order):
        if lifting:
            filt = group.transform(weight, h)
        else:
            h_inv = group.inverse(h)
            slices = [group.transform(weight[:, :, group.compose(h_inv, hp)], h) for hp in range(group.order)]
            filt = torch.stack(slices, dim=2).flatten(1, 2)
        out.append(F.conv2d(x, filt, padding=weight.shape[-1] // 2))
    o = out[0].shape[1]
    return torch.stack(out, dim=2).reshape(x.shape[0], o * group.order, *out[0].shape[-2:])


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_convs_match_the_reference(group, kernel_size):
    lift = G.LiftingConv(group, 3, 4, kernel_size=kernel_size).double()
    gconv = G.GroupConv(group, 4, 5, kernel_size=kernel_size).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    f = lift(x)
    w_lift = lift.weight.view(4, 3, kernel_size, kernel_size)
    torch.testing.assert_close(f, reference_group_conv(group, x, w_lift, lifting=True))
    w_g = gconv.weight.view(5, 4, group.order, kernel_size, kernel_size)
    torch.testing.assert_close(gconv(f), reference_group_conv(group, f, w_g, lifting=False))


@pytest.mark.parametrize("element, pixel", [(0, (3, 2)), (1, (2, 3))], ids=["e", "r1"])
def test_p4_group_conv_by_hand(element, pixel):
    """One field, a single filter tap above the centre on slice e, a delta at the centre on input element g.

    Output element h reads slice h^-1 g of the weight, so only h = g sees the tap, through filter T_g(W[e]).
    For g = e the tap stays above the centre and correlation moves the delta one row down; for g = r1 the
    counter-clockwise quarter turn puts the tap left of the centre and the delta moves one column right.
    """
    conv = G.GroupConv(P4, 1, 1, kernel_size=3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight.view(4, 3, 3)[0, 0, 1] = 1.0
    x = torch.zeros(1, 4, 5, 5)
    x[0, element, 2, 2] = 1.0
    y = conv(x).view(4, 5, 5)
    assert y[element][pixel] == 1.0 and y.sum() == 1.0


# --- every layer: equivariance and export -----------------------------------------------------------------------


def layers(group):
    return {
        "lifting": G.LiftingConv(group, 3, 4, bias=True),
        "group_conv": G.GroupConv(group, 4, 5, bias=True),
        "group_conv_1x1": G.GroupConv(group, 4, 5, kernel_size=1),
        "batch_norm": G.GBatchNorm(group, 4),
        "relu": G.GReLU(group, 4),
        "max_pool": G.GMaxPool2d(group, 4),
        "upsample": G.GUpsample(group, 4),
        "group_pool": G.GroupMaxPool(group, 4),
        "invariant_1x1": G.InvariantConv1x1(group, 4, 2),
        "double_conv": G.double_conv(group, 3, 4, lifting=True),
    }


LAYER_NAMES = list(layers(P4))


def trained(module):
    """A few train-mode passes so batch-norm running statistics are not the trivial (0, 1)."""
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(module.example_input() * 3 + 1)
    return module


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_equivariance_float64(group, name, mode):
    module = trained(layers(group)[name].double()).train(mode == "train")
    x = module.example_input().double()
    errors = module.check_equivariance(x, atol=1e-12)
    assert set(errors) == {group.element_name(g) for g in range(group.order)}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_export_matches(group, name):
    module = trained(layers(group)[name]).eval()
    plain = module.export()
    assert not any(isinstance(m, G.GModule) for m in plain.modules())
    x = module.example_input()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), module(x), atol=1e-5, rtol=1e-5)


def test_check_equivariance_can_fail():
    conv = G.GroupConv(P4M, 2, 2)
    rows = conv.index.view(2, 8, -1)  # (out field, element, source)
    rows.copy_(rows[:, :1].expand_as(rows).clone())  # every element gets the untransformed filter
    with pytest.raises(EqsegError, match="not p4m-equivariant"):
        conv.check_equivariance(atol=1e-3)


def test_batch_norm_shares_statistics_over_the_group():
    bn = G.GBatchNorm(P4M, 3, momentum=1.0)
    x = torch.randn(4, 3 * 8, 6, 6) * torch.arange(1, 25).view(1, -1, 1, 1)  # group channels differ in scale
    y = bn(x).view(4, 3, 8, 6, 6)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3, 4), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(bn.running_mean, x.view(4, 3, 8, 6, 6).mean(dim=(0, 2, 3, 4)))


def test_group_pool_is_max_over_the_group():
    x = torch.randn(2, 3 * 4, 5, 5)
    torch.testing.assert_close(G.GroupMaxPool(P4, 3)(x), x.view(2, 3, 4, 5, 5).amax(2))


def test_equivariance_check_has_no_side_effects():
    block = G.double_conv(P4, 3, 2, lifting=True)
    x = block.example_input()
    before = [b.clone() for b in block.buffers()]
    block.check_equivariance(x)
    assert all(torch.equal(a, b) for a, b in zip(before, block.buffers()))
    relu, y = G.GReLU(P4, 2, inplace=True), torch.randn(1, 8, 4, 4)
    y0 = y.clone()
    relu.check_equivariance(y)
    assert torch.equal(y, y0)


# --- filter cache -----------------------------------------------------------------------------------------------


def test_eval_cache_reused_and_invalidated():
    conv = G.GroupConv(P4M, 2, 2).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        y0 = conv(x)
        cached = conv.filters()
        assert conv.filters() is cached  # built once in eval mode
        conv.weight.mul_(2)  # in-place change (as an optimizer step) bumps the version: rebuilt
        assert conv.filters() is not cached
        torch.testing.assert_close(conv(x), 2 * y0)
        conv.load_state_dict({"weight": conv.weight / 2})
        torch.testing.assert_close(conv(x), y0)
    conv.train()
    assert conv._cache is None


def test_eval_mode_with_autograd_still_trains_the_weight():
    conv = G.GroupConv(P4, 2, 2).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        conv(x)  # fills the cache
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    for _ in range(2):  # a stale cached bank would give no gradient, or fail on the second backward
        opt.zero_grad()
        conv(x).square().sum().backward()
        assert conv.weight.grad.abs().sum() > 0
        opt.step()


def test_sequential_refuses_neighbours_that_do_not_fit():
    from eqseg.errors import EqsegError
    from eqseg.models.gconv import GBatchNorm, GroupConv, GroupMaxPool, GSequential, LiftingConv
    from eqseg.models.groups import P4, P4M

    ok = GSequential(LiftingConv(P4M, 3, 4), GBatchNorm(P4M, 4), GroupConv(P4M, 4, 2), GroupMaxPool(P4M, 2))
    assert ok.in_rep == "trivial" and ok.out_rep == "trivial" and ok.raw_out_channels() == 2
    with pytest.raises(EqsegError, match="groups differ"):
        GSequential(LiftingConv(P4M, 3, 4), GBatchNorm(P4, 4))
    with pytest.raises(EqsegError, match="trivial fields feed a module expecting regular"):
        GSequential(LiftingConv(P4M, 3, 4), GroupMaxPool(P4M, 4), GroupConv(P4M, 4, 4))
    with pytest.raises(EqsegError, match="32 channels feed a module expecting 40"):
        GSequential(LiftingConv(P4M, 3, 4), GroupConv(P4M, 5, 4))
