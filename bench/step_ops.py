"""Where a training step's time goes, per ATen op, in fp32 and bf16 side by side: why a precision's speed-up stops
where it does (issue 19's 2.5x goal).

    /work/main/.venv/bin/python bench/step_ops.py [--models unet p4_unet] [--threads 1] [--top 14]

The step is bench_train.py's (eqseg's own `train_one_epoch` on one batch of 8 x 3 x 128 x 128 px, CE + Lovász,
AdamW, the model's preferred layout). Each op dispatched is timed with a TorchDispatchMode around it (wall clock,
so backward ops count where autograd runs them), over 2 steps after 3 warm-up steps; the table gives milliseconds
per step and the op's own bf16 speed-up. "step" is the step's wall time under the timing hooks (a few % above
bench_train.py's figure). Prints a markdown table per model.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import step_case  # noqa: E402


class OpTimes(TorchDispatchMode):
    """Wall time and calls per op packet (aten.convolution_backward, ...)."""

    def __init__(self):
        super().__init__()
        self.ms = collections.defaultdict(float)
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.ms[name] += 1e3 * (time.perf_counter() - t0)
        self.calls[name] += 1
        return out


def op_times(model: str, precision: str, steps: int = 2) -> tuple[float, OpTimes]:
    from eqseg.models import build
    from eqseg.runtime import memory_format

    torch.manual_seed(0)
    net = build(model, 3, 2)
    run = step_case(net, precision, memory_format(net), torch.device("cpu"), 8)
    for _ in range(3):
        run()
    times = OpTimes()
    t0 = time.perf_counter()
    with times:
        for _ in range(steps):
            run()
    step = 1e3 * (time.perf_counter() - t0) / steps
    for name in times.ms:  # per step
        times.ms[name] /= steps
        times.calls[name] //= steps
    return step, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["unet", "p4_unet"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.models:
        (step32, t32), (step16, t16) = op_times(model, "fp32"), op_times(model, "bf16")
        print(f"\n{model}, {args.threads} thread(s): step {step32:.0f} ms fp32, {step16:.0f} ms bf16 "
              f"({step32 / step16:.2f}x)\n")
        print("| op | calls | fp32 ms | bf16 ms | bf16 speed-up |")
        print("|---|---|---|---|---|")
        for name in sorted(t32.ms, key=lambda n: -t32.ms[n])[: args.top]:
            b = t16.ms.get(name, 0.0)
            print(f"| {name.removeprefix('aten.')} | {t32.calls[name]} | {t32.ms[name]:.1f} | {b:.1f} | "
                  f"{t32.ms[name] / b if b else float('nan'):.2f}x |")
        rest32 = step32 - sum(t32.ms[n] for n in t32.ms if "convolution" in n)
        rest16 = step16 - sum(t16.ms[n] for n in t16.ms if "convolution" in n)
        print(f"| everything but convolutions (step minus conv fwd + bwd) | | {rest32:.1f} | {rest16:.1f} | "
              f"{rest32 / rest16:.2f}x |")


if __name__ == "__main__":
    main()
