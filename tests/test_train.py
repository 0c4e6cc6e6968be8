"""Training: checkpoint each epoch, resume after a kill to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tool_env, train_cmd
from eqseg.train.loop import checkpoint_path


def weights(model_dir: Path) -> dict:
    return torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def test_resume_after_kill_matches_uninterrupted_run(small_setup):
    tmp = small_setup
    straight, resumed = tmp / "straight", tmp / "resumed"
    subprocess.run(train_cmd(tmp, straight), env=tool_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(train_cmd(tmp, resumed), env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = checkpoint_path(resumed)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not resumed.exists()  # killed: a checkpoint, no output that looks done

    done = subprocess.run(train_cmd(tmp, resumed), env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert not ckpt.exists()
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = np.genfromtxt(resumed / "history.csv", delimiter=",", names=True)
    ref = np.genfromtxt(straight / "history.csv", delimiter=",", names=True)
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5]
    for column in ("train_loss", "val_miou", "val_fwiou"):  # every epoch, not only the best one, is the same
        assert np.array_equal(hist[column], ref[column]), column
    assert ref["val_miou"].max() > 0.55  # it learned nuclei (all background scores about 0.43 here)


def test_checkpoint_of_another_configuration_is_ignored(small_setup, tmp_path):
    tmp = small_setup
    out = tmp_path / "model"
    ckpt = checkpoint_path(out)
    torch.save({"config_hash": "something-else"}, ckpt)
    done = subprocess.run(train_cmd(tmp, out), env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "another configuration" in done.stderr and (out / "model.pt").is_file()


def test_training_optimiser_is_fused_adamw_with_the_loops_steps():
    """eqseg's AdamW is the fused kernel on the CPU (issue 19) and takes the same steps as torch's per-tensor loop."""
    from eqseg.train.loop import adamw

    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    fused = adamw(params, 0.01, 0.1, torch.device("cpu"))
    loop = torch.optim.AdamW(twins, lr=0.01, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for step in range(5):
        for a, b in zip(params, twins):
            a.grad = torch.full_like(a, float(step + 1)) * torch.linspace(-1, 1, a.numel()).view_as(a)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for a, b in zip(params, twins):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, s in zip(params, start):
        assert (a.detach() - s).abs().min() > 1e-3  # every parameter moved
