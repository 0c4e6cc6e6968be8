"""Rotated-digits check: a P4CNN trained on upright digits recognises them rotated by 90°, a plain CNN does not.

`run(out_dir, model=..., epochs=..., seed=..., n_train=...)` trains on upright digits of the shipped MNIST sample,
tests on the fixed test digits upright, rotated by 90/180/270° (exact) and by random angles (interpolated),
and writes `out_dir/metrics.json`. Deterministic on CPU for a seed and a thread count (torch splits the
convolutions' reductions by thread, so 1 and 2 threads round differently and drift apart over a long run).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from eqseg.digits.data import DEFAULT_CSV, load_digits, rotate_quarter, rotate_random, split
from eqseg.digits.nets import NETS
from eqseg.errors import EqsegError
from eqseg.runtime import resolve_device
from eqseg.utils import strictjson

__all__ = ["run"]

BATCH_SIZE = 32
LEARNING_RATE = 3e-3


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Adam with a cosine-decayed learning rate; the seed fixes the batch order (initialisation is seeded by the caller)."""
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    steps = epochs * -(-len(y) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(BATCH_SIZE):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net(b).argmax(1) for b in x.split(500)])
    return int((pred == y).sum()) / len(y)


def run(out_dir: Path, *, model: str = "p4cnn", epochs: int = 6, seed: int = 0, n_train: int = 4000,
        device: str = "auto", data: Path = DEFAULT_CSV) -> dict:
    """Train `model` ("cnn" | "p4cnn") on upright digits, test upright and rotated; write and return metrics."""
    if model not in NETS:
        raise EqsegError(f"digits: unknown model {model!r} (allowed: {sorted(NETS)})")
    if epochs < 1:
        raise EqsegError(f"digits: epochs must be >= 1 (got {epochs})")
    dev = resolve_device(device)
    (train_x, train_y), (test_x, test_y) = split(*load_digits(data), n_train)
    torch.manual_seed(seed)
    net = NETS[model]().to(dev)
    train(net, train_x.to(dev), train_y.to(dev), epochs, seed)
    conditions = {
        "upright": test_x,
        **{f"rot{90 * k}": rotate_quarter(test_x, k) for k in (1, 2, 3)},
        "random": rotate_random(test_x),
    }
    metrics = {
        "model": model, "epochs": epochs, "seed": seed, "n_train": n_train, "n_test": len(test_y),
        "n_params": sum(p.numel() for p in net.parameters()),
        **{f"acc_{name}": accuracy(net, x.to(dev), test_y.to(dev)) for name, x in conditions.items()},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(strictjson.dumps(metrics, indent=2) + "\n")
    return metrics
