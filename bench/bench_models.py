"""Equivariant models against ordinary ones, side by side on the same input (batch 8, 3x128x128).

    /work/main/.venv/bin/python bench/bench_models.py [--repeats 5] [--threads 1] \
        [--escnn-python /work/escnn-venv/bin/python]

Measures, in one run with the cases interleaved round by round (so that load from other processes hits all
of them alike; medians reported):
  * train step (forward, backward, SGD step) and inference of p4m_unet against unet, at equal raw channel count
    (match: channels) and at matched parameter count (match: params);
  * p4m_unet's head pooling by `max(dim)` against the previous `amax` (same values; see GroupMax);
  * inference of the exported p4m_unet (plain torch.nn) against a plain unet of the same shape (goal: <= 1.1x);
  * our p4m group convolution against escnn's R2Conv on D4 (regular fields, same raw channels), training mode
    (goal: ours no slower). escnn pins numpy<2, so it runs in its own interpreter (--escnn-python), which
    re-runs this file with --escnn-worker and imports our layer from src/ there; skipped when not given.
Prints a markdown table and writes bench/results/models.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BATCH, CHANNELS, SIZE, CLASSES, WIDTH = 8, 3, 128, 2, 16


def time_interleaved(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per case; one call of every case per round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def inference(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def run():
        with torch.inference_mode():
            model(x)

    return run


def conv_train_step(conv: torch.nn.Module, x) -> Callable[[], None]:
    """Forward and backward of one layer in training mode (filters rebuilt every call, as when training)."""
    conv.train()

    def step():
        conv.zero_grad(set_to_none=True)
        y = conv(x)
        (y.tensor if hasattr(y, "tensor") else y).square().mean().backward()

    return step


def _amax_mean_max(self, x: torch.Tensor) -> torch.Tensor:
    """The group U-Nets' head pooling before `max(dim)`: the reference of the head-pooling row."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // self.order, self.order, h, w)
    return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)


AMAX = "p4m_unet (match: channels), amax head pooling (before)"


def bench_models(repeats: int) -> list[dict]:
    from eqseg.models import build, count_parameters

    torch.manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE)
    y = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE))
    models = {
        "unet": build("unet", CHANNELS, CLASSES, width=WIDTH),
        "p4m_unet (match: channels)": build("p4m_unet", CHANNELS, CLASSES, width=WIDTH, match="channels"),
        "p4m_unet (match: params)": build("p4m_unet", CHANNELS, CLASSES, width=WIDTH, match="params"),
    }
    models[AMAX] = copy.deepcopy(models["p4m_unet (match: channels)"])
    models[AMAX].head[1].forward = types.MethodType(_amax_mean_max, models[AMAX].head[1])
    fields = models["p4m_unet (match: params)"].fields
    models[f"unet width {fields * 8} (shape of the params-matched p4m)"] = build("unet", CHANNELS, CLASSES, width=fields * 8)
    exported = {
        "p4m_unet (match: channels) exported": models["p4m_unet (match: channels)"].eval().export(),
        "p4m_unet (match: params) exported": models["p4m_unet (match: params)"].eval().export(),
    }
    cases: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        cases[f"train|{name}"] = train_step(copy.deepcopy(model), x, y)
        cases[f"infer|{name}"] = inference(copy.deepcopy(model), x)
    for name, model in exported.items():
        cases[f"infer|{name}"] = inference(model, x)
    ms = time_interleaved(cases, repeats)
    raw = {name: (m.fields * 8 if hasattr(m, "fields") else m.down[0][0].out_channels) for name, m in models.items()}
    rows = [
        {"model": name, "raw_channels": raw[name], "params": count_parameters(m),
         "train_ms": ms[f"train|{name}"], "infer_ms": ms[f"infer|{name}"]}
        for name, m in models.items()
    ]
    rows += [
        {"model": name, "raw_channels": raw[name.removesuffix(" exported")], "params": count_parameters(m),
         "train_ms": None, "infer_ms": ms[f"infer|{name}"]}
        for name, m in exported.items()
    ]
    return rows


def bench_convs(repeats: int, fields_list: list[int]) -> list[dict]:
    """Our p4m GroupConv against escnn's R2Conv on D4; runs in the escnn interpreter, our layer from src/."""
    sys.path.insert(0, str(ROOT / "src"))
    from escnn import gspaces, nn as enn

    from eqseg.models.gconv import GroupConv
    from eqseg.models.groups import P4M

    torch.manual_seed(0)
    gspace = gspaces.flipRot2dOnR2(N=4)
    rows = []
    for fields in fields_list:
        ftype = enn.FieldType(gspace, fields * [gspace.regular_repr])
        ours = GroupConv(P4M, fields, fields, kernel_size=3)
        theirs = enn.R2Conv(ftype, ftype, 3, padding=1, bias=False)
        x = torch.randn(BATCH, fields * 8, SIZE, SIZE)
        ms = time_interleaved({"ours": conv_train_step(ours, x),
                               "escnn": conv_train_step(theirs, enn.GeometricTensor(x, ftype))}, repeats)
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        rows.append({"fields": fields, "raw_channels": fields * 8, "ours_ms": ms["ours"], "escnn_ms": ms["escnn"],
                     "ours_params": count(ours), "escnn_params": count(theirs)})
    return rows


def run_escnn(python: str | None, repeats: int, fields_list: list[int]) -> tuple[list[dict] | None, str]:
    if not python:
        return None, "escnn comparison skipped: pass --escnn-python PATH (a separate venv with escnn, see bench/README.md)"
    if not Path(python).exists():
        return None, f"escnn comparison skipped: {python} not found"
    cmd = [python, __file__, "--escnn-worker", "--repeats", str(repeats), "--fields", *map(str, fields_list),
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return None, f"escnn comparison skipped: the worker failed ({tail[0]})"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}"


def report(rows: list[dict], conv_rows: list[dict] | None, note: str) -> str:
    base = {r["model"]: r for r in rows}
    unet = base["unet"]
    same_shape = {"p4m_unet (match: channels) exported": "unet",
                  "p4m_unet (match: params) exported": next(m for m in base if m.startswith("unet width")),
                  AMAX: "p4m_unet (match: channels)"}
    lines = ["| model | raw channels | params | train step ms | inference ms | vs |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        ref = base[same_shape[r["model"]]] if r["model"] in same_shape else unet
        vs = "" if r is ref else (
            f"infer {r['infer_ms'] / ref['infer_ms']:.2f}x of {ref['model']}" if r["train_ms"] is None else
            f"train {r['train_ms'] / ref['train_ms']:.2f}x, infer {r['infer_ms'] / ref['infer_ms']:.2f}x of {ref['model']}")
        lines.append(f"| {r['model']} | {r['raw_channels']} | {r['params']:,} | {fmt(r['train_ms'])} | "
                     f"{fmt(r['infer_ms'])} | {vs} |")
    lines.append("")
    if conv_rows:
        lines += ["| p4m group conv 3x3, train fwd+bwd | raw channels | ours ms | escnn R2Conv ms | ours/escnn | params ours / escnn |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['fields']} regular fields | {r['raw_channels']} | {r['ours_ms']:.1f} | {r['escnn_ms']:.1f} | "
                  f"{r['ours_ms'] / r['escnn_ms']:.2f} | {r['ours_params']:,} / {r['escnn_params']:,} |" for r in conv_rows]
    else:
        lines.append(note)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--escnn-python", help="interpreter of a venv with escnn installed")
    parser.add_argument("--fields", type=int, nargs="+", default=[2, 6], help="regular fields for the conv comparison")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--escnn-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.escnn_worker:
        print(json.dumps(bench_convs(args.repeats, args.fields)))
        return
    load_before = os.getloadavg()
    rows = bench_models(args.repeats)
    conv_rows, note = run_escnn(args.escnn_python, args.repeats, args.fields)
    table = report(rows, conv_rows, note)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "batch": BATCH, "input": [CHANNELS, SIZE, SIZE], "repeats": args.repeats}
    print(table)
    print(f"\ntorch {env['torch']}, {env['threads']} threads, load average before/after "
          f"{load_before[0]:.1f}/{env['loadavg_after'][0]:.1f}")
    out = ROOT / "bench" / "results" / "models.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "models": rows, "convs": conv_rows, "note": note}, indent=2) + "\n")


if __name__ == "__main__":
    main()
