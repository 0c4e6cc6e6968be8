"""The group batch norm of a channels_last tensor: in its layout (models/batch_norm.py) against the contiguous round
trip it replaced, per shape, forward + backward, and the whole training step of both group U-Nets, interleaved.

    /work/main/.venv/bin/python bench/bench_batch_norm.py [--threads 1] [--repeats 21] [--step-repeats 7] [--no-step]

Shapes: the 14 group batch norms of p4_unet and p4m_unet at batch 8 x 128 px (four per level, two at the bottom).
"round trip" is `GBatchNorm` as it was: copy to the contiguous (B, F, |G|*H, W) view, aten's batch norm there, copy
back to channels_last. The step is bench_train.py's (`train_one_epoch` on one batch), the same net with its batch
norms swapped back to the round trip. Prints markdown tables; medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import step_case, time_interleaved  # noqa: E402

from eqseg.models import build  # noqa: E402
from eqseg.models.gconv import GBatchNorm  # noqa: E402
from eqseg.models.groups import P4, P4M  # noqa: E402

CL = torch.channels_last
SHAPES = [(8, 16, 128, 128), (8, 32, 64, 64), (8, 64, 32, 32), (8, 128, 16, 16)]
PER_STEP = [4, 4, 4, 2]  # batch norms of each shape in a group U-Net of depth 4


class RoundTrip(GBatchNorm):
    """GBatchNorm before session 8: channels_last input copied to the contiguous view and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = nn.BatchNorm2d.forward(self, x.contiguous().view(b, self.num_features, -1, w)).view(b, c, h, w)
        return y.contiguous(memory_format=CL)


def median_ms(fn, repeats: int) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def per_shape(repeats: int) -> None:
    print("| shape (B, C, H, W) | group | fp32 round trip -> in layout, ms | bf16 round trip -> in layout, ms |")
    print("|---|---|---|---|")
    for group in (P4, P4M):
        totals = {torch.float32: [0.0, 0.0], torch.bfloat16: [0.0, 0.0]}
        for shape, count in zip(SHAPES, PER_STEP):
            cells = []
            for dtype in totals:
                x = torch.randn(shape).to(dtype).contiguous(memory_format=CL).requires_grad_()
                grad = torch.randn(shape).to(dtype).contiguous(memory_format=CL)
                fields = shape[1] // group.order
                old, new = RoundTrip(group, fields), GBatchNorm(group, fields)
                t_old = median_ms(lambda: old(x).backward(grad), repeats)
                t_new = median_ms(lambda: new(x).backward(grad), repeats)
                totals[dtype][0] += count * t_old
                totals[dtype][1] += count * t_new
                cells.append(f"{t_old:.1f} -> {t_new:.1f}")
            print(f"| {', '.join(map(str, shape))} | {group.name} | {cells[0]} | {cells[1]} |", flush=True)
        print(f"| the 14 of a step | {group.name} | "
              + " | ".join(f"{a:.0f} -> {b:.0f}" for a, b in totals.values()) + " |", flush=True)


def with_round_trip(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net)
    for module in net.modules():
        if isinstance(module, GBatchNorm):
            module.__class__ = RoundTrip
    return net


def whole_step(repeats: int) -> None:
    print("\n| model | fp32 round trip | fp32 in layout | bf16 round trip | bf16 in layout |  (ms / step)")
    print("|---|---|---|---|---|")
    for name in ("p4_unet", "p4m_unet"):
        torch.manual_seed(0)
        net = build(name, 3, 2)
        cases = {}
        for precision in ("fp32", "bf16"):
            cases[f"old {precision}"] = step_case(with_round_trip(net), precision, CL, torch.device("cpu"), 8)
            cases[f"new {precision}"] = step_case(copy.deepcopy(net), precision, CL, torch.device("cpu"), 8)
        ms = time_interleaved(cases, repeats)
        print(f"| {name} | " + " | ".join(f"{ms[c]:.0f}" for c in ("old fp32", "new fp32", "old bf16", "new bf16"))
              + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--step-repeats", type=int, default=7)
    ap.add_argument("--no-step", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    per_shape(args.repeats)
    if not args.no_step:
        whole_step(args.step_repeats)


if __name__ == "__main__":
    main()
