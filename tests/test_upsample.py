"""eqseg.models.upsample: the same function and gradient as F.interpolate(bilinear, x2, align_corners=False),
in every layout and precision a training step meets (issue 19's faster CPU kernels must not change the models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqseg.models.upsample import Upsample2x, upsample2x

CL = torch.channels_last


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def test_values_by_hand():
    """[1, 2] upsampled: edges clamp, the inner samples sit at 1/4 and 3/4 between the two pixels."""
    x = torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2)
    assert upsample2x(x).view(-1, 4)[0].tolist() == [1.0, 1.25, 1.75, 2.0]


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_gradcheck_in_float64(layout):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    assert torch.autograd.gradcheck(upsample2x, (x,))


def _through_concatenation(fn, x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor):
    """As in a U-Net decoder: the upsampled tensor concatenated with a skip, so its gradient is a channel slice."""
    x = x.detach().requires_grad_()
    out = torch.cat([fn(x), skip], dim=1)
    (grad,) = torch.autograd.grad((out.float() * weight).sum(), x)  # as returned, not re-laid out like x.grad
    return out, grad


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_forward_and_backward_equal_interpolate(layout, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, 12, generator=g).to(dtype).contiguous(memory_format=layout)
    skip = torch.randn(2, 4, 16, 24, generator=g).to(dtype).contiguous(memory_format=layout)
    weight = torch.randn(2, 10, 16, 24, generator=g)
    out, grad = _through_concatenation(upsample2x, x, skip, weight)
    out_ref, grad_ref = _through_concatenation(reference, x, skip, weight)
    assert out.dtype == out_ref.dtype == dtype and grad.dtype == dtype
    assert torch.allclose(out.float(), out_ref.float(), atol=tol, rtol=tol)
    assert torch.allclose(grad.float(), grad_ref.float(), atol=tol * 4, rtol=tol)
    # the layout the next layer sees is the input's: the group U-Nets rely on contiguous tensors
    assert out.is_contiguous(memory_format=layout) and grad.is_contiguous(memory_format=layout)


def test_without_autograd_and_under_autocast():
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        assert torch.allclose(upsample2x(x), reference(x), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample2x(x.bfloat16().requires_grad_())
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("model", ["unet", "p4m_unet"])
def test_models_compute_what_they_computed_with_nn_upsample(model):
    """Swap every Upsample2x back to the nn.Upsample it exports to: outputs and parameter gradients agree."""
    import copy

    from eqseg.models import build

    torch.manual_seed(0)
    net = build(model, 3, 2, depth=2, width=8)
    legacy = copy.deepcopy(net)
    swapped = 0
    for parent in list(legacy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Upsample2x):
                setattr(parent, name, child.export())
                swapped += 1
    assert swapped == {"unet": 1, "p4m_unet": 2}[model]  # the unet shares one module between its levels
    x = torch.randn(2, 3, 32, 32)
    for m in (net, legacy):
        m(x).square().mean().backward()
    assert torch.allclose(net(x), legacy(x), atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), legacy.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
