"""`eqseg report`: one table (and a plot) over every evaluated cell of the grid, averaged over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from eqseg import paths
from eqseg.config import Params
from eqseg.errors import EqsegError
from eqseg.utils.atomic import atomic_dir

KEYS = ("dataset", "model", "supervision", "seed")


def collect(params: Params, root: Path = Path(".")) -> pd.DataFrame:
    """One row per grid cell: test metrics from evaluate, size and cost from train."""
    g = params.grid
    rows = []
    for d in g.datasets:
        for m in g.models:
            for s in g.supervision:
                for seed in g.seeds:
                    cell = dict(dataset=d, model=m, supervision=s, seed=seed)
                    metrics_file = root / paths.EVAL.format(**cell) / "metrics.json"
                    if not metrics_file.is_file():
                        raise EqsegError(f"{metrics_file}: missing; run evaluate for {d}/{m}/{s}/seed{seed} first")
                    row = cell | json.loads(metrics_file.read_text())
                    config = root / paths.MODEL.format(**cell) / "config.json"
                    if config.is_file():
                        summary = json.loads(config.read_text()).get("summary", {})
                        row |= {k: summary.get(k) for k in ("n_params", "macs_per_tile", "train_seconds", "best_epoch")}
                    rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (dataset, model, supervision)."""
    metric_cols = [c for c in table.columns if c.startswith(("miou", "iou", "pixel_acc"))]
    group = table.groupby(["dataset", "model", "supervision"], sort=False)
    out = group[metric_cols].mean()
    out["miou_macro_std"] = group["miou_macro"].std(ddof=0)
    out["seeds"] = group.size()
    for col in ("n_params", "macs_per_tile"):
        if col in table:
            out[col] = group[col].first()
    for col in ("equivariance_error_rotations", "equivariance_error_reflections", "equivariance_error_max"):
        if col in table:
            out[col] = group[col].mean()
    if "normalise" in table:
        out["normalise"] = group["normalise"].first()
    return out.reset_index()


def to_markdown(summary: pd.DataFrame) -> str:
    lines = [
        "| dataset | model | supervision | test mIoU (macro) | micro IoU | pixel acc. | params | MACs/tile | "
        "equiv. error, rotations | equiv. error, reflections | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def sci(r, col: str) -> str:
        v = getattr(r, col, None)
        return f"{v:.1e}" if v is not None and pd.notna(v) else "-"

    for r in summary.itertuples(index=False):
        std = f" ± {r.miou_macro_std:.3f}" if r.seeds > 1 else ""
        params = f"{int(r.n_params):,}" if "n_params" in summary and pd.notna(r.n_params) else "-"
        macs = f"{r.macs_per_tile / 1e9:.2f} G" if "macs_per_tile" in summary and pd.notna(r.macs_per_tile) else "-"
        lines.append(f"| {r.dataset} | {r.model} | {r.supervision} | {r.miou_macro:.3f}{std} | {r.iou_micro:.3f} | "
                     f"{r.pixel_accuracy:.3f} | {params} | {macs} | {sci(r, 'equivariance_error_rotations')} | "
                     f"{sci(r, 'equivariance_error_reflections')} | {r.seeds} |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.dataset}\n{r.supervision}" for r in summary.drop_duplicates(["dataset", "supervision"]).itertuples()]
    models = list(dict.fromkeys(summary.model))
    x = np.arange(len(labels))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(labels) + 1), 3.2), dpi=110)
    for i, m in enumerate(models):
        sub = summary[summary.model == m].set_index(["dataset", "supervision"])
        vals = [sub.miou_macro.get((lab.split("\n")[0], lab.split("\n")[1]), np.nan) for lab in labels]
        errs = [sub.miou_macro_std.get((lab.split("\n")[0], lab.split("\n")[1]), 0) for lab in labels]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, yerr=errs, label=m)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("test mIoU (macro)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def digits_table(params: Params, root: Path = Path(".")) -> str:
    """Markdown table of the rotated-digits check: accuracy per test condition, per model (mean over seeds)."""
    rows = []
    for m in params.digits.models:
        for seed in params.digits.seeds:
            f = root / paths.DIGITS.format(model=m, seed=seed) / "metrics.json"
            if not f.is_file():
                raise EqsegError(f"{f}: missing; run `eqseg digits --model {m} --seed {seed}` first")
            rows.append(json.loads(f.read_text()))
    df = pd.DataFrame(rows).groupby("model", sort=False).mean(numeric_only=True).reset_index()
    conds = [c for c in df.columns if c.startswith("acc_")]
    lines = ["| model | params | " + " | ".join(c[4:] for c in conds) + " |", "|---|---|" + "---|" * len(conds)]
    for r in df.to_dict("records"):
        lines.append(f"| {r['model']} | {int(r['n_params']):,} | " + " | ".join(f"{r[c]:.3f}" for c in conds) + " |")
    return "\n".join(lines) + "\n"


def report(params: Params, out: Path) -> pd.DataFrame:
    table = collect(params)
    summary = summarise(table)
    modes = ", ".join(sorted(set(table["normalise"]))) if "normalise" in table else "train"
    text = (f"# eqseg report\n\n## Segmentation\n\nTest split, mean over seeds; inputs normalised with: {modes}.\n\n"
            + to_markdown(summary))
    if params.digits.models:
        text += "\n## Rotated digits\n\nTrained on upright MNIST digits; accuracy on the test digits as rotated.\n\n" + digits_table(params)
    with atomic_dir(out) as tmp:
        table.to_csv(tmp / "cells.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "report.md").write_text(text)
        plot(summary, tmp / "miou.png")
    return summary
