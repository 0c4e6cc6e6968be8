"""Training at the speed of the hardware (issue 19): one precision choice, the fused group head, channels_last,
losses and a training step without host synchronisation, loader workers that persist across epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from eqseg.errors import EqsegError
from eqseg.losses import build_loss
from eqseg.models import build
from eqseg.models.gconv import GroupConv, GroupMaxPool, GroupMeanMaxPool, GSequential, InvariantConv1x1, group_max_linear, invariant_head
from eqseg.models.groups import P4, P4M
from eqseg.runtime import autocast, memory_format, native_bf16, resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")


# ---- one precision choice -------------------------------------------------------------------------------------


def test_precision_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(EqsegError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(EqsegError, match="'half' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("half", cpu)


def test_autocast_runs_the_model_in_the_resolved_dtype():
    net = build("unet", 3, 2, depth=2, width=8).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        with autocast(torch.device("cpu"), "bf16"):
            assert net(x).dtype == torch.bfloat16
        with autocast(torch.device("cpu"), "fp32"):
            assert net(x).dtype == torch.float32


# ---- the group head as matmuls ----------------------------------------------------------------------------------


def reference_group_max(x, w):
    """max over g of x @ w[g].T, by brute force over rows and group elements."""
    out = torch.empty(x.shape[0], w.shape[1], dtype=x.dtype)
    for n in range(x.shape[0]):
        for f in range(w.shape[1]):
            out[n, f] = max(float(x[n] @ w[g, f]) for g in range(w.shape[0]))
    return out


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_group_max_linear_is_the_max_over_the_group_with_its_gradient(chunk):
    x = torch.randn(23, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 3, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(group_max_linear(x, w, chunk), reference_group_max(x.detach(), w.detach()))
    with torch.no_grad():
        torch.testing.assert_close(group_max_linear(x, w, chunk), reference_group_max(x, w))
    assert torch.autograd.gradcheck(lambda a, b: group_max_linear(a, b, chunk), (x, w))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_group_max_linear_sends_a_tie_to_the_first_maximum_like_max(dtype):
    x = torch.ones(1, 2, dtype=dtype, requires_grad=True)
    w = torch.zeros(4, 1, 2, dtype=dtype)
    w[1] = w[3] = 1.0  # elements 1 and 3 tie for the max
    w.requires_grad_()
    group_max_linear(x, w, 4).sum().backward()
    expected = torch.zeros_like(w)
    expected[1] = 1.0  # all of the gradient to element 1, as torch.max(dim) gives it
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("group", [P4, P4M])
@pytest.mark.parametrize("pool", [GroupMaxPool, GroupMeanMaxPool])
@pytest.mark.parametrize("bias", [False, True])
def test_invariant_head_computes_the_head_modules(group, pool, bias):
    """The fused head == the GSequential it stands for, in value and in every gradient (float64)."""
    head = GSequential(GroupConv(group, 3, 4, kernel_size=1, bias=bias), pool(group, 4),
                       InvariantConv1x1(group, pool(group, 4).raw_out_channels(), 5)).double()
    if bias:
        torch.nn.init.normal_(head[0].bias)
    x = torch.randn(2, 3 * group.order, 6, 6, dtype=torch.float64, requires_grad=True)
    fused, plain = invariant_head(head, x), head(x)
    torch.testing.assert_close(fused, plain)
    g = torch.randn_like(plain)
    grads_fused = torch.autograd.grad(fused, [x, *head.parameters()], g)
    grads_plain = torch.autograd.grad(plain, [x, *head.parameters()], g)
    for a, b in zip(grads_fused, grads_plain):
        torch.testing.assert_close(a, b)


def test_group_unet_equivariance_holds_in_fp32_after_bf16_training():
    """Training under bf16 autocast leaves fp32 parameters: the model stays exactly equivariant in fp32."""
    from eqseg.models.groups import equivariance_errors

    net = build("p4m_unet", 3, 2, depth=2, width=16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))
    for _ in range(2):
        with autocast(torch.device("cpu"), "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    net.eval()
    errors = equivariance_errors(net, torch.randn(1, 3, 16, 16), P4M, "trivial", "trivial")
    assert max(errors.values()) < 1e-5


# ---- memory format ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bands", [3, 1])
@pytest.mark.parametrize("model", ["unet", "p4m_unet", "p4_unet"])
def test_nets_run_channels_last_with_the_same_outputs_and_gradients(model, bands):
    """Every U-Net runs channels_last (runtime.memory_format), every layer of it, also on one-band images (laid out
    both ways at once: the group nets' lifting conv returned contiguous tensors, and the whole net ran so); the
    layout changes neither outputs, parameter gradients nor batch-norm statistics (float64: rounding is not what
    this checks)."""
    import copy

    torch.manual_seed(0)
    net = build(model, bands, 2, depth=2, width=8).double()
    assert memory_format(net) == torch.channels_last
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    layouts = []
    for module in last.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) or type(module).__name__ in (
                "LiftingConv", "GroupConv"):
            module.register_forward_hook(lambda m, i, o: layouts.append((type(m).__name__, o.stride())))
    x = torch.randn(2, bands, 16, 16, dtype=torch.float64)
    out, out_last = net(x), last(x.contiguous(memory_format=torch.channels_last))
    assert layouts and all(stride[1] == 1 for _, stride in layouts), layouts  # channels innermost
    torch.testing.assert_close(out_last, out)
    out.square().mean().backward()
    out_last.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), last.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), c in zip(net.named_buffers(), last.buffers()):
        torch.testing.assert_close(c, b, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(last.eval()(x.contiguous(memory_format=torch.channels_last)), net.eval()(x))


def test_group_batch_norm_gives_the_same_statistics_in_channels_last():
    from eqseg.models.gconv import GBatchNorm

    bn = GBatchNorm(P4M, 3).double()
    x = torch.randn(4, 24, 5, 5, dtype=torch.float64) * 3 + 1
    a = bn(x)
    mean_a = bn.running_mean.clone()
    bn.reset_running_stats()
    b = bn(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(bn.running_mean, mean_a)


# ---- no host synchronisation in the training step ----------------------------------------------------------------

SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item", "aten::is_nonzero"}


class OpRecorder(TorchDispatchMode):
    """Every aten op dispatched, and the index ops that take a boolean mask (a device-to-host copy of its size)."""

    def __init__(self, host_scalars=()):
        super().__init__()
        self.ops: set[str] = set()
        self.host_scalars = {id(t) for t in host_scalars}  # read back harmlessly: they live on the host on a GPU too

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"aten::{func._schema.name.split('::')[-1]}"
        if name == "aten::_local_scalar_dense" and id(args[0]) in self.host_scalars:
            return func(*args, **(kwargs or {}))
        self.ops.add(name)
        if name in ("aten::index", "aten::index_put_", "aten::index_put") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for t in a
        ):
            self.ops.add("aten::index(bool mask)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("spec", [{"ce": 1.0, "lovasz": 1.0}, {"ce": 1.0, "dice": 0.5},
                                  {"lovasz": {"weight": 1.0, "per_image": True}}])
def test_training_step_never_waits_for_the_device(spec):
    """Forward, partial-label losses, backward and the optimiser step dispatch no op that reads a value back to the
    host (what stalls a GPU every step): no .item(), no `.any()` branch, no boolean-mask indexing."""
    from eqseg.train.loop import train_one_epoch

    net = build("unet", 3, 2, depth=2, width=8)
    y = torch.full((2, 16, 16), 255)
    y[0, :4, :4], y[1, 8:, 8:] = 0, 1  # partial labels
    loader = [(torch.randn(2, 3, 16, 16), y, torch.zeros(0))]
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = (net, loader, build_loss(spec), optimiser, scaler, torch.device("cpu"), "fp32", torch.Generator(), net)
    train_one_epoch(*step)  # creates AdamW's state: its step counters stay on the host (unless fused) on a GPU too
    recorder = OpRecorder(host_scalars=[state["step"] for state in optimiser.state.values()])
    with recorder:
        loss = train_one_epoch(*step)
    assert torch.is_tensor(loss) and loss.dim() == 0
    assert not recorder.ops & (SYNCING | {"aten::index(bool mask)"}), sorted(recorder.ops & (SYNCING | {"aten::index(bool mask)"}))
    assert "aten::convolution" in recorder.ops  # the recorder saw the step


def test_the_recorder_catches_a_synchronising_loss():
    """The check above can fail: the loss as it was before (a branch on `.any()`, a boolean selection) is caught."""
    recorder = OpRecorder()
    logits, target = torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with recorder:
        if (target != 255).any():
            F.cross_entropy(logits.movedim(1, -1)[target != 255], target[target != 255])
    assert "aten::_local_scalar_dense" in recorder.ops or "aten::is_nonzero" in recorder.ops
    assert "aten::index(bool mask)" in recorder.ops or "aten::nonzero" in recorder.ops


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_over_all_pixels_equals_lovasz_over_the_labelled_ones(classes):
    """Unlabelled pixels kept in place with error 0 change nothing: the value over the labelled pixels alone."""
    from eqseg.losses.lovasz import lovasz_softmax

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[torch.rand(2, 8, 8, generator=g) < 0.7] = 255
    keep = target != 255
    labelled_only = lovasz_softmax(logits.movedim(1, -1)[keep].T.reshape(1, 3, -1, 1), target[keep].reshape(1, -1, 1), classes)
    torch.testing.assert_close(lovasz_softmax(logits, target, classes), labelled_only)


def test_losses_of_a_batch_without_labels_are_zero_with_a_graph():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for spec in ({"ce": 1.0}, {"lovasz": 1.0}, {"dice": 1.0}):
        loss = build_loss(spec)(logits, target)
        assert float(loss) == 0.0 and loss.requires_grad, spec


# ---- loader workers that persist across epochs -------------------------------------------------------------------


def test_persistent_workers_augment_for_the_epoch_the_sampler_says(tiled_setup):
    """One loader for the whole training: with a worker that lives across epochs, each epoch's batches equal a
    fresh single-process loader's for that epoch, and epochs differ (new order, new D4 draws)."""
    from eqseg.data.dataset import TileDataset
    from eqseg.data.normalise import Normaliser
    from eqseg.tiling.store import TileStore
    from eqseg.train.loop import make_loader

    store = TileStore(tiled_setup / "tiles")
    ids = store.ids("train")[:6]
    norm = Normaliser("train", store.meta.band_mean, store.meta.band_std)
    ds = TileDataset(store, ids, augment="d4", seed=5, normaliser=norm)
    persistent = make_loader(ds, 3, seed=5, num_workers=1, pin=False)
    assert persistent.persistent_workers
    epochs = []
    for epoch in (0, 1):
        persistent.sampler.epoch = epoch
        fresh = make_loader(ds, 3, seed=5, num_workers=0, pin=False)
        fresh.sampler.epoch = epoch
        got, want = [b[0] for b in persistent], [b[0] for b in fresh]
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == len(want) == 2
        epochs.append(torch.cat(got))
    assert not torch.equal(epochs[0], epochs[1])
