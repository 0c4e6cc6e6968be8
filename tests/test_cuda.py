"""The GPU paths: skipped without CUDA, run by bench/gpu_check.sh on a machine with one (see bench/README.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")]


def _batch(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 2, (4, 32, 32), generator=g)
    y[:, :8] = 255  # partial labels
    return [(x, y, torch.zeros(0))]


@pytest.mark.parametrize("model", ["unet", "p4m_unet", "gridnet"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_step_on_the_gpu_never_synchronises(model, precision):
    """eqseg's training step on CUDA in every precision, under torch's sync debug mode set to raise: no loss read
    back, no `.any()`, no boolean mask (AdamW fused, so its step counters live on the GPU too)."""
    from eqseg.losses import build_loss
    from eqseg.models import build
    from eqseg.runtime import memory_format
    from eqseg.train.loop import train_one_epoch

    device = torch.device("cuda")
    net = build(model, 3, 2, depth=2, width=16)
    net = net.to(device, memory_format=memory_format(net))
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    loss_fn = build_loss({"ce": 1.0, "lovasz": 1.0, "dice": 0.5})
    step = (net, _batch(device), loss_fn, optimiser, scaler, device, precision, torch.Generator(), net)
    train_one_epoch(*step)  # warm-up: cuDNN autotuning and first allocations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_one_epoch(*step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_group_head_on_the_gpu_equals_the_cpu():
    from eqseg.models.gconv import group_max_linear

    x = torch.randn(5000, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 16, 16, dtype=torch.float64, requires_grad=True)
    cpu = group_max_linear(x, w, 4096)
    (gx_cpu, gw_cpu) = torch.autograd.grad(cpu.sum(), [x, w])
    xc, wc = x.detach().cuda().requires_grad_(), w.detach().cuda().requires_grad_()
    gpu = group_max_linear(xc, wc, 5000)
    gx, gw = torch.autograd.grad(gpu.sum(), [xc, wc])
    torch.testing.assert_close(gpu.cpu(), cpu)
    torch.testing.assert_close(gx.cpu(), gx_cpu)
    torch.testing.assert_close(gw.cpu(), gw_cpu)


def test_p4m_unet_trained_on_the_gpu_is_equivariant_in_fp32():
    from eqseg.models import build
    from eqseg.models.groups import P4M, equivariance_errors

    net = build("p4m_unet", 3, 2, depth=2, width=16).cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(2, 3, 32, 32, device="cuda"), torch.randint(0, 2, (2, 32, 32), device="cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    errors = equivariance_errors(net.double(), torch.randn(1, 3, 32, 32, device="cuda", dtype=torch.float64), P4M,
                                 "trivial", "trivial")
    assert max(errors.values()) < 1e-6


def test_confusion_on_the_gpu_equals_the_cpu(tiled_setup):
    from eqseg.data.normalise import Normaliser
    from eqseg.inference import confusion_on
    from eqseg.models import build
    from eqseg.tiling.store import TileStore

    store = TileStore(tiled_setup / "tiles")
    norm = Normaliser("train", store.meta.band_mean, store.meta.band_std)
    ids = store.ids("test")[:16]
    net = build("unet", store.meta.bands, store.meta.num_classes, depth=2, width=8).eval()
    cpu = confusion_on(net, store, ids, 8, torch.device("cpu"), norm, "fp32")
    gpu = confusion_on(net.cuda(), store, ids, 8, torch.device("cuda"), norm, "fp32")
    assert cpu.sum() == gpu.sum() > 0
    assert np.abs(cpu - gpu).sum() <= 0.001 * cpu.sum()  # argmax ties may differ between kernels, nothing else


def test_process_group_all_reduces_gpu_and_cpu_tensors(tmp_path):
    """A one-rank group as eqseg starts it on a GPU (`cpu:gloo,cuda:nccl`): the loss tensor on the GPU and a CPU
    float both all-reduce (NCCL alone fails on the CPU one)."""
    import torch.distributed as dist

    from eqseg.train.distributed import World, backend, mean, stop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend(torch.device("cuda")), rank=0, world_size=1)
    try:
        t = torch.tensor([3.0], device="cuda")
        dist.all_reduce(t)
        c = torch.tensor([2.0])
        dist.all_reduce(c)
        assert float(t) == 3.0 and float(c) == 2.0
        assert mean(torch.tensor(5.0, device="cuda"), World(0, 0, 2)) == 2.5  # the sum over "2" ranks / 2
    finally:
        stop(World(0, 0, 2))
