"""Batch norm of channels_last tensors on the CPU through aten's per-column kernels on a free rows view; written for
the group batch norm, whose field f pools the statistics of its |G| channels f*|G| + g.

Why (issue 19, bench/README.md): the group U-Nets run channels_last (their convolutions, pooling and head are faster
so), and no aten call computes a group batch norm in that layout; the contiguous round trip `GBatchNorm` took
instead spent most of its time in four transposing copies. Here the tensor stays where it is: its (B*H*W, C) rows
are viewed k at a time as (B*H*W/k, k*C) rows (k*C >= 256 columns: aten's kernels are slow on narrow rows), aten's
kernels give each column's mean and variance (forward) and each column's sums of dy and dy*x_hat (backward), and a
feature's statistics are those of its k*|G| columns pooled exactly (the parallel-variance formula); the output and
the input gradient's affine part in x are per-column affine maps through aten's eval-mode kernel (float32 inside,
written once), and the gradient's dy term is added in place. Same function, gradients and running statistics as
`F.batch_norm` on the (B, F, |G|*H, W) view (`tests/test_batch_norm.py`: gradcheck in float64, aten's values in
float32 and bfloat16). Group batch norm forward + backward, 1 thread, summed over p4_unet's 14: 94 -> 34 ms in bf16,
119 -> 39 ms in fp32 (`bench/bench_batch_norm.py`, session 8; the two-pass gradient of session 9 took another
10-40 % off each). Plain batch norms take it only at NARROW_CHANNELS or fewer (gridnet's full-resolution row):
aten's own channels_last kernel is faster from 16 channels on, slower below, and single-threaded there.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from eqseg.models.layout import is_channels_last

aten = torch.ops.aten
MIN_COLUMNS = 256  # narrower rows leave aten's vectors partly empty (bench/README.md)
NARROW_CHANNELS = 8  # plain batch norms this narrow or narrower are faster here than in aten's channels_last kernel


def rows_per_view_row(pixels: int, channels: int) -> int:
    """k: pixel rows per row of the wide view; a power of two dividing `pixels`, k*channels >= MIN_COLUMNS if it can."""
    k = 1
    while k * channels < MIN_COLUMNS and pixels % (2 * k) == 0:
        k *= 2
    return k


class _Layout:
    """A channels_last (B, F*order, H, W) tensor as wide rows (B*H*W/k, k*F*order): column j*F*order + f*order + g."""

    def __init__(self, shape: torch.Size, order: int, device: torch.device):
        self.shape, self.order = shape, order
        b, c, h, w = shape
        self.k = rows_per_view_row(b * h * w, c)
        self.feature_of_column = _feature_of_column(self.k, c // order, order, device)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(-1, self.k * self.shape[1])

    def pooled(self, column_values: torch.Tensor) -> torch.Tensor:
        """Per column -> (features, k*order): the columns each feature pools."""
        return column_values.view(self.k, -1, self.order).transpose(0, 1).reshape(-1, self.k * self.order)

    def image(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows back to the channels_last (B, C, H, W) tensor they view (no copy)."""
        b, c, h, w = self.shape
        return rows.view(b, h, w, c).permute(0, 3, 1, 2)

    def columns(self, *feature_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per feature -> per column, several vectors in one gather (each op costs more than its work here)."""
        return torch.stack(feature_values).index_select(1, self.feature_of_column).unbind(0)


@functools.lru_cache(maxsize=256)
def _feature_of_column(k: int, features: int, order: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: a normal tensor even if first made under inference mode
        return torch.arange(features, device=device).repeat_interleave(order).repeat(k)


@functools.lru_cache(maxsize=256)
def _constant(value: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only vector of n values (aten's kernels take them as weights or statistics and never write them)."""
    with torch.inference_mode(False):
        return torch.full((n,), value, dtype=dtype, device=device)


class _ChannelsLastBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, factor, eps, order):
        layout = _Layout(x.shape, order, x.device)
        rows = layout.rows(x)
        out = torch.empty_like(x)  # channels_last, written through its rows view so that it is not a view itself
        count = x.numel() // weight.numel()  # values per feature
        if use_batch_stats:  # per-column statistics; the normalised columns written to `out` are overwritten below
            n = rows.shape[1]
            _, mean_c, invstd_c = aten.native_batch_norm.out(
                rows, _constant(1.0, n, weight.dtype, x.device), None, None, None, True, 0.0, 0.0,
                out=layout.rows(out), save_mean=weight.new_empty(n), save_invstd=weight.new_empty(n))
            var_c = torch.where(invstd_c > 0, invstd_c.pow(-2), 0.0)  # aten gives invstd 0 for a constant column
            mean_c, var_c = layout.pooled(mean_c), layout.pooled(var_c)  # equal counts per column
            mean = mean_c.mean(1)
            var = (var_c + (mean_c - mean[:, None]).square()).mean(1)  # biased: the columns pooled exactly
            if running_mean is not None and factor > 0:
                running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                running_var.mul_(1 - factor).add_(var * (count / max(count - 1, 1)), alpha=factor)
        else:
            mean, var = running_mean, running_var
        invstd = (var + eps).rsqrt()
        scale = weight * invstd
        _affine(rows, *layout.columns(scale, bias - mean * scale), layout.rows(out))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.order, ctx.count, ctx.use_batch_stats = order, count, use_batch_stats
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        layout = _Layout(x.shape, ctx.order, x.device)
        rows, grad_rows = layout.rows(x), layout.rows(grad.contiguous(memory_format=torch.channels_last))
        n = rows.shape[1]
        scale = weight * invstd
        mean_c, invstd_c, scale_c = layout.columns(mean, invstd, scale)
        # per column: sum(dy * (x - mean) * invstd) and sum(dy), with the feature's statistics
        _, dot_c, sum_c = aten.native_batch_norm_backward(
            grad_rows, rows, _constant(1.0, n, weight.dtype, x.device), None, None, mean_c, invstd_c, True, 0.0,
            [False, True, True])
        grad_weight, grad_bias = layout.pooled(dot_c).sum(1), layout.pooled(sum_c).sum(1)
        if not ctx.use_batch_stats:  # running statistics (eval mode) are constants: dx = w*invstd*dy, in float32
            scaled = aten.native_batch_norm_backward(
                grad_rows, rows, scale_c, _constant(0.0, n, weight.dtype, x.device),
                _constant(1.0, n, weight.dtype, x.device), None, None, False, 0.0, [True, False, False])[0]
            return layout.image(scaled), grad_weight, grad_bias, None, None, None, None, None, None
        # dx = w*invstd*dy - w*invstd*(sum(dy) + x_hat*sum(dy*x_hat))/n: the second term, an affine map of x, through
        # aten's eval-mode forward (float32 inside, written once), then the dy term added in place in one pass (a
        # separate product and sum took two more passes over the tensor: twice the time, bench/README.md)
        a = scale / ctx.count
        x_coefficient = -a * grad_weight * invstd
        grad_in = torch.empty_like(x)
        _affine(rows, *layout.columns(x_coefficient, -a * grad_bias - mean * x_coefficient), layout.rows(grad_in))
        layout.rows(grad_in).addcmul_(grad_rows, scale_c.to(x.dtype))
        return grad_in, grad_weight, grad_bias, None, None, None, None, None, None


def _affine(rows, scale_c, shift_c, out):
    """out = rows * scale_c + shift_c per column, computed in float32 and written once: aten's eval-mode batch norm
    with mean 0 and variance 1 (which itself computes x * w/sqrt(var + eps) + (b - mean * w/sqrt(var + eps)))."""
    n = rows.shape[1]
    zeros, ones = (_constant(v, n, scale_c.dtype, rows.device) for v in (0.0, 1.0))
    aten.native_batch_norm.out(rows, scale_c, shift_c, zeros, ones, False, 0.0, 0.0, out=out,
                               save_mean=scale_c.new_empty(0), save_invstd=scale_c.new_empty(0))


def batch_norm_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                             use_batch_stats: bool, factor: float, eps: float, order: int = 1) -> torch.Tensor:
    """Batch norm of a channels_last (B, F*order, H, W) tensor with one mean, variance and affine per feature f
    (over batch, space and its `order` channels f*order + g), as F.batch_norm on the (B, F, order*H, W) view;
    channels_last out. `factor` weighs the batch in the running statistics (momentum), with batch statistics only."""
    return _ChannelsLastBatchNorm.apply(x, weight, bias, running_mean, running_var, use_batch_stats, factor, eps,
                                        order)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose channels_last CPU inputs go through `batch_norm_channels_last` (same function; a
    subclass, so state dicts, isinstance checks and AdaBN are unchanged). The base of `GBatchNorm`, and the plain
    nets' batch norm: with one channel per feature only NARROW_CHANNELS or fewer take the rows kernel (aten's
    channels_last kernel is slower on them, and does not use a second thread; it is faster on 16 or more)."""

    channels_per_feature = 1  # GBatchNorm: |G|

    def uses_rows_kernel(self, x: torch.Tensor) -> bool:
        narrow_or_group = self.channels_per_feature > 1 or self.num_features <= NARROW_CHANNELS
        return (narrow_or_group and x.device.type == "cpu" and is_channels_last(x) and self.affine
                and self.track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_rows_kernel(x):
            return super().forward(x)
        self._check_input_dim(x)
        return batch_norm_channels_last(x, self.weight, self.bias, self.running_mean, self.running_var,
                                        self.training, self._update_factor(), self.eps, self.channels_per_feature)

    def _update_factor(self) -> float:
        """nn.BatchNorm2d's running-statistics weight for this call (counting the batch in training mode)."""
        if not self.training:
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
