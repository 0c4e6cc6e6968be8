"""The training step of every segmentation model, in fp32 and bf16, against the step before issue 19, in one run.

    /work/main/.venv/bin/python bench/bench_train.py [--repeats 9] [--threads 1 2] [--models unet p4_unet p4m_unet gridnet]
        [--device cpu|cuda] [--batch 8] [--other-layout]

One training step = forward, CE + Lovász-softmax (the default loss), backward and an AdamW step, on a batch of
8 tiles of 3 x 128 x 128 px with 2 classes, through eqseg's own `train_one_epoch` (one batch). Per model and thread
count, three cases run interleaved round by round (load from other processes hits all alike; medians reported):

  * reference: the step as it was before issue 19, fp32, contiguous (NCHW) tensors, and the group U-Nets' head as
    its modules (`GSequential.forward`: the (8, 128, 128, 128) group-conv output materialised), and upsampling by
    nn.Upsample (aten's generic CPU backward), Lovász-softmax pixel-major with torch.sort, and AdamW's
    per-tensor loop on the CPU (not fused), i.e. the current version's fp32 step before this change;
  * fp32 and bf16: the step now (`train.precision`), in the layout the model prefers (eqseg.runtime.memory_format:
    channels_last for unet and gridnet), the group head fused (gconv.invariant_head).

Reported: milliseconds per step, tiles per second, the speed-up over the reference (median of the rounds' paired
ratios, with their quartiles: single steps vary by +-15 % on a shared machine), and the achieved GFLOP/s,
counted as 3 x 2 x the forward multiply-accumulates (forward 1x, backward 2x). Prints a markdown table and writes
bench/results/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH, CHANNELS, SIZE, CLASSES = 8, 3, 128, 2


def legacy_group_forward(self, x: torch.Tensor) -> torch.Tensor:
    """GUNet.forward before issue 19: the head run as its three modules."""
    from eqseg.models.gconv import GSequential

    return GSequential.forward(self.head, self.features(x))


def legacy_upsampling(net: torch.nn.Module) -> torch.nn.Module:
    """Every Upsample2x (eqseg.models.upsample, this issue's faster CPU backward) back to the nn.Upsample it was."""
    from eqseg.models.upsample import Upsample2x

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Upsample2x):
                setattr(parent, name, child.export())
    return net


def legacy_lovasz_flat(probs: torch.Tensor, target: torch.Tensor, classes: str) -> torch.Tensor:
    """lovasz._lovasz_flat as the reference has measured it since issue 19 began: pixel-major (P, K) gathers and
    two cumulative sums down strided columns, sorted by torch.sort (the version before this issue sorted the same
    way, after a boolean selection of the labelled pixels). Takes the class-major (K, P) probabilities of now."""
    from eqseg.losses.pixel import IGNORE, one_hot

    probs = probs.t()
    fg = one_hot(target, probs.shape[1], probs.dtype)
    errors = torch.where((target != IGNORE).unsqueeze(1), (fg - probs).abs(), 0.0)
    order = torch.sort(errors.detach(), dim=0, descending=True).indices
    fg_sorted = fg.gather(0, order)
    total = fg_sorted.sum(dim=0)
    jaccard = 1.0 - (total - fg_sorted.cumsum(dim=0)) / (total + (1.0 - fg_sorted).cumsum(dim=0))
    per_class = (errors.gather(0, order) * torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)).sum(dim=0)
    if classes == "all":
        return per_class.mean()
    present = (fg.sum(dim=0) > 0).to(per_class.dtype)
    return (per_class * present).sum() / present.sum().clamp_min(1)


@contextlib.contextmanager
def legacy_lovasz():
    """Lovász-softmax as the reference computes it (legacy_lovasz_flat)."""
    from eqseg.losses import lovasz

    current = lovasz._lovasz_flat
    lovasz._lovasz_flat = legacy_lovasz_flat
    try:
        yield
    finally:
        lovasz._lovasz_flat = current


def step_case(net: torch.nn.Module, precision: str, layout: torch.memory_format, device: torch.device, batch: int,
              legacy: bool = False):
    """One call = one training step through eqseg.train.loop.train_one_epoch on one fixed batch (legacy: with
    Lovász-softmax and AdamW's per-tensor loop as they were)."""
    from eqseg.losses import build_loss
    from eqseg.train.loop import adamw, train_one_epoch

    net = net.to(device, memory_format=layout)
    net.prefers_contiguous = layout == torch.contiguous_format  # what train_one_epoch puts the batch in
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (batch, SIZE, SIZE), generator=g)
    loader = [(x, y, torch.zeros(0))]
    loss = build_loss({"ce": 1.0, "lovasz": 1.0})
    optimiser = (torch.optim.AdamW(net.parameters(), lr=1e-3, fused=device.type == "cuda") if legacy
                 else adamw(net.parameters(), 1e-3, 0.01, device))  # AdamW's default weight decay
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def run():
        with legacy_lovasz() if legacy else contextlib.nullcontext():
            float(train_one_epoch(net, loader, loss, optimiser, scaler, device, precision, torch.Generator(), net))

    return run


def time_rounds(cases: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds per call, per case: one call of every case per round, `repeats` rounds (load from other
    processes hits the cases of a round alike, so ratios within a round are paired)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()  # reads the loss back: the step has finished on a GPU too
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def time_interleaved(cases: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per case over interleaved rounds (time_rounds)."""
    return {name: statistics.median(t) for name, t in time_rounds(cases, repeats, warmup).items()}


def paired_speedups(reference: list[float], times: list[float]) -> dict[str, float]:
    """The speed-up of each round (reference time / time, the same round) summarised: median and quartiles
    (inclusive method). On a shared machine single steps vary by +-15 %; the quartiles say whether a goal is met
    in most rounds or only in the median."""
    ratios = sorted(r / t for r, t in zip(reference, times, strict=True))
    if len(ratios) == 1:
        return dict(median=ratios[0], q1=ratios[0], q3=ratios[0])
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return dict(median=median, q1=q1, q3=q3)


def machine() -> dict:
    """What ran the bench: the CPU's model name (not just its architecture) and which bf16 units torch sees; the
    speed-ups depend on them (oneDNN runs AMX tiles where there are some, AVX512-BF16 dot products otherwise)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return dict(cpu=name, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                avx512_bf16=torch.cpu._is_avx512_bf16_supported(), amx=torch.cpu._is_amx_tile_supported())


def bench(models: list[str], threads: list[int], repeats: int, device: torch.device, batch: int,
          other_layout: bool = False) -> list[dict]:
    from eqseg.models import build, count_macs
    from eqseg.models.gunet import GUNet
    from eqseg.runtime import memory_format

    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for name in models:
            torch.manual_seed(0)
            net = build(name, CHANNELS, CLASSES)
            macs = count_macs(net, CHANNELS, SIZE)
            reference = legacy_upsampling(copy.deepcopy(net))
            if isinstance(reference, GUNet):
                reference.forward = types.MethodType(legacy_group_forward, reference)
                macs_reference = count_macs(reference, CHANNELS, SIZE)
            else:
                macs_reference = macs
            cases = {
                "reference fp32": step_case(reference, "fp32", torch.contiguous_format, device, batch, legacy=True),
                "fp32": step_case(copy.deepcopy(net), "fp32", memory_format(net), device, batch),
                "bf16": step_case(copy.deepcopy(net), "bf16", memory_format(net), device, batch),
            }
            if device.type == "cuda":
                cases["fp16"] = step_case(copy.deepcopy(net), "fp16", memory_format(net), device, batch)
            other = torch.contiguous_format if memory_format(net) == torch.channels_last else torch.channels_last
            layouts = {case: memory_format(net) for case in cases} | {"reference fp32": torch.contiguous_format}
            if other_layout:  # is the layout runtime.memory_format picks the faster one here?
                for precision in [c for c in cases if not c.startswith("reference")]:
                    case = f"{precision} {str(other).split('.')[-1]}"
                    cases[case], layouts[case] = step_case(copy.deepcopy(net), precision, other, device, batch), other
            times = time_rounds(cases, repeats)
            ms = {case: statistics.median(t) for case, t in times.items()}
            for case, t in ms.items():
                m = macs_reference if case.startswith("reference") else macs
                paired = paired_speedups(times["reference fp32"], times[case])
                rows.append(dict(model=name, threads=n_threads, case=case, ms=round(t, 1),
                                 tiles_per_s=round(batch / t * 1e3, 1), speedup=round(paired["median"], 2),
                                 speedup_q1=round(paired["q1"], 2), speedup_q3=round(paired["q3"], 2),
                                 gflops=round(6 * m * batch / t / 1e6, 1), layout=str(layouts[case]).split(".")[-1]))
            print(f"  {name} x{n_threads}: " + ", ".join(f"{c} {t:.0f} ms" for c, t in ms.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["unet", "p4_unet", "p4m_unet", "gridnet"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    ap.add_argument("--other-layout", action="store_true",
                    help="also time each precision in the layout runtime.memory_format does not pick")
    args = ap.parse_args()
    from eqseg.runtime import native_bf16

    device = torch.device(args.device)
    rows = bench(args.models, args.threads, args.repeats, device, args.batch, args.other_layout)
    host = machine()
    print(f"\n{host['cpu']} (torch {torch.__version__}, {host['cpu_capability']}, AVX512-BF16 "
          f"{'yes' if host['avx512_bf16'] else 'no'}, AMX {'yes' if host['amx'] else 'no'})")
    print("\n| model | threads | case | ms / step | tiles / s | speed-up vs reference [quartiles] | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['threads']} | {r['case']} | {r['ms']:.0f} | {r['tiles_per_s']:.1f} | "
              f"{r['speedup']:.2f}x [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}] | {r['gflops']:.1f} |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    out.write_text(json.dumps(dict(torch=torch.__version__, **host, gpu=gpu,
                                   native_bf16=native_bf16(device), batch=args.batch, size=SIZE,
                                   repeats=args.repeats, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
