"""The channels_last batch norm (models/batch_norm.py), plain and group, against aten's batch norm on the contiguous
(B, F, |G|*H, W) view (the definition of a group batch norm), in values, gradients and running statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from eqseg.models.gconv import GBatchNorm
from eqseg.models.batch_norm import BatchNorm2d, batch_norm_channels_last, rows_per_view_row
from eqseg.models.layout import is_channels_last
from eqseg.models.groups import P4, P4M

CL = torch.channels_last


def reference(x, bn, training):
    """F.batch_norm on the contiguous (B, F, |G|*H, W) view: the statistics of field f are those of its |G| channels."""
    b, c, h, w = x.shape
    y = F.batch_norm(x.contiguous().view(b, bn.num_features, -1, w), bn.running_mean, bn.running_var, bn.weight,
                     bn.bias, training, bn.momentum, bn.eps)
    return y.view(b, c, h, w)


def make(group, fields, dtype=torch.float32, **options):
    torch.manual_seed(0)
    bn = GBatchNorm(group, fields, **options)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.to(torch.float64 if dtype == torch.float64 else torch.float32)


def data(shape, dtype, scale=torch.tensor(1.0)):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 5) * scale
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(dtype).contiguous(memory_format=CL), grad.to(dtype).contiguous(memory_format=CL)


TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
             torch.bfloat16: dict(rtol=2e-2, atol=4e-2)}


def test_wide_rows_view():
    """k pixel rows per row of the view: a power of two dividing the pixel count, up to 256 columns."""
    assert [rows_per_view_row(n, c) for n, c in [(90, 8), (32, 8), (49, 8), (4096, 8), (4096, 16), (64, 512)]] == [
        2, 32, 1, 32, 16, 1]


SHAPES = [(3, 6, 5), (2, 4, 4), (1, 7, 7)]  # batch, height, width: k = 2, 32 (one row), 1 for 8 channels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group,fields", [(P4, 3), (P4M, 2), (P4M, 1)])
@pytest.mark.parametrize("size", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_batch_norm_on_the_contiguous_view(dtype, group, fields, size, training):
    """Fields whose |G| channels differ in mean and scale (pooling them is what can go wrong)."""
    shape = (size[0], fields * group.order, *size[1:])
    scale = torch.arange(1, shape[1] + 1, dtype=torch.float64).view(1, -1, 1, 1) / 4
    x, grad = data(shape, dtype, scale)
    ours, ref = make(group, fields, dtype), make(group, fields, dtype)
    ours.train(training), ref.train(training)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ours(xa)
    assert is_channels_last(out)
    expected = reference(xb, ref, training)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    out.backward(grad)
    expected.backward(grad)
    tol = TOLERANCE[dtype] if dtype != torch.bfloat16 else dict(rtol=2e-2, atol=2e-2 * xb.grad.abs().max().item())
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad, msg=name,
                                   **TOLERANCE[torch.float32 if dtype == torch.bfloat16 else dtype])
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), msg=name, rtol=1e-5, atol=1e-5)
    assert ours.num_batches_tracked.item() == (1 if training else 0)


def test_running_statistics_by_hand():
    """momentum 0.5: running = (old + batch) / 2; the variance unbiased over the n = B*|G|*H*W values of a field."""
    bn = GBatchNorm(P4, 2, momentum=0.5).double()
    x, _ = data((2, 8, 3, 3), torch.float64)
    bn(x)
    values = x.permute(1, 0, 2, 3).reshape(2, -1)  # field f owns channels 4f..4f+3
    torch.testing.assert_close(bn.running_mean, values.mean(1) / 2)
    torch.testing.assert_close(bn.running_var, (1 + values.var(1, unbiased=True)) / 2)


def test_cumulative_average_when_momentum_is_none():
    """Also under no_grad in training mode, as AdaBN re-estimates the statistics on a target domain."""
    ours, ref = make(P4M, 2, momentum=None), make(P4M, 2, momentum=None)
    for seed in range(3):
        x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=CL)
        with torch.no_grad() if seed == 2 else torch.enable_grad():
            ours(x), ref(x.contiguous())  # the contiguous path: nn.BatchNorm2d's own cumulative average
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 3


@pytest.mark.parametrize("use_batch_stats", [True, False])
def test_gradcheck(use_batch_stats):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    weight = torch.rand(2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    mean, var = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5
    fn = lambda x, w, b: batch_norm_channels_last(x, w, b, mean.clone(), var.clone(), use_batch_stats, 0.1,
                                                       1e-5, 4)
    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_no_grad_and_contiguous_gradient():
    """Inference without autograd, and a gradient that arrives contiguous (NCHW) rather than channels_last."""
    bn = make(P4, 2)
    x, grad = data((2, 8, 4, 4), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(bn.eval()(x), reference(x, copy.deepcopy(bn), False))
    bn.train()
    xa = x.clone().requires_grad_()
    bn(xa).backward(grad.contiguous())
    ref, xb = make(P4, 2), x.clone().requires_grad_()
    reference(xb, ref, True).backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", SHAPES)
def test_plain_batch_norm_matches_nn(dtype, size):
    """eqseg's BatchNorm2d (unet, gridnet) on channels_last input: nn.BatchNorm2d's outputs, gradients, statistics."""
    channels = 8
    shape = (size[0], channels, *size[1:])
    x, grad = data(shape, dtype, torch.linspace(0.5, 4, channels, dtype=torch.float64).view(1, -1, 1, 1))
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(channels, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours = BatchNorm2d(channels, momentum=0.3)
    ours.load_state_dict(ref.state_dict())
    ours, ref = (m.to(torch.float64 if dtype == torch.float64 else torch.float32) for m in (ours, ref))
    xa, xb = x.clone().requires_grad_(), x.clone().contiguous().requires_grad_()
    out, expected = ours(xa), ref(xb)
    assert is_channels_last(out) and out._base is None  # not a view: unet's in-place ReLU may follow
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    out.backward(grad)
    expected.backward(grad)
    tol = TOLERANCE[dtype] if dtype != torch.bfloat16 else dict(rtol=2e-2, atol=2e-2 * xb.grad.abs().max().item())
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    param_tol = dict(rtol=1e-4, atol=1e-4) if dtype != torch.bfloat16 else dict(rtol=1e-2, atol=5e-2)  # aten rounds
    for name in ("weight", "bias"):  # its bf16 sums to bf16; ours are float32 sums, checked exactly below
        torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad, msg=name, **param_tol)
    exact = grad.double().sum((0, 2, 3))
    torch.testing.assert_close(ours.bias.grad.double(), exact, rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), msg=name)


def test_constant_channels():
    """A channel that is 0 everywhere (a dead ReLU's): aten reports its inverse std as 0, not infinity."""
    bn = make(P4, 2, torch.float64)
    x, grad = data((2, 8, 4, 4), torch.float64)
    x[:, :4] = 0  # the whole first field
    x[:, 5] = 1.5  # one channel of the second
    ref = make(P4, 2, torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = bn(xa), reference(xb, ref, True)
    torch.testing.assert_close(out, expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_which_batch_norms_take_the_rows_kernel():
    """Group batch norms always (on CPU, channels_last); plain ones only when narrow (gridnet's 8-channel rows), where
    aten's channels_last kernel is slow; never a contiguous input (aten's contiguous kernel is fast)."""
    from eqseg.models import build

    x8, x16 = (torch.zeros(2, c, 4, 4).contiguous(memory_format=CL) for c in (8, 16))
    assert BatchNorm2d(8).uses_rows_kernel(x8) and not BatchNorm2d(16).uses_rows_kernel(x16)
    assert GBatchNorm(P4, 4).uses_rows_kernel(x16)
    assert not BatchNorm2d(8).uses_rows_kernel(torch.zeros(2, 8, 4, 4))
    assert not BatchNorm2d(8, affine=False).uses_rows_kernel(x8)
    widths = {m.num_features for m in build("gridnet", 3, 2).modules() if isinstance(m, BatchNorm2d)}
    assert widths == {8, 16, 32}  # every batch norm of gridnet is eqseg's; its width-8 row takes the rows kernel
