"""The README's study tables, built from a study's published report files (docs/results/NAME/), not typed by hand.

    /work/main/.venv/bin/python bench/study_tables.py docs/results/study_weak [--baseline unet]

Prints markdown: (0) every cell's test mIoU, a column per model; (1) the answer per supervision: the baseline's test mIoU and each other model's paired difference
to it per seed with its 95 % t interval (summary.csv), a column per model, in-domain and external test sets as rows,
under the grid's normalisation and, where the modes were scored, under `dataset` (the default);
(1b) the same pooled over the supervisions (cells.csv); (2) weak / full per model (weak_full.csv); (3) the normalisation modes against `train` over every trained model, with
the paired 95 % t interval, and the mode that holds off-domain without costing in-domain (modes_pooled.csv); (4) per-class IoU (per_class.csv). Files the report has not written
yet (a partial run) are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def ordered(table: pd.DataFrame, baseline: str = "unet") -> pd.DataFrame:
    """Rows in reading order: per trained dataset its own test set first, full labels first, the baseline model first
    (a partial run's files list cells in the order they finished)."""
    keys = {"dataset": {v: v for v in table.dataset},
            "supervision": {v: (v != "full", "+" in v, v) for v in table.supervision},  # full, weak, weak+expansion
            "model": {v: (v != baseline, v) for v in table.model}}
    return table.assign(_own=table.dataset != table.test_set).sort_values(
        ["dataset", "_own", "test_set", "supervision", "model"], kind="stable",
        key=lambda col: col.map(keys[col.name]) if col.name in keys else col).drop(columns="_own")


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _diff(r) -> str:
    if not np.isfinite(r["diff"]):
        return "-"
    ci = f" [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]" if np.isfinite(r["diff_lo"]) else " (1 seed)"
    return f"{r['diff']:+.3f}{ci}"


def answer(summary: pd.DataFrame, baseline: str = "unet", metric: str = "miou_macro") -> str:
    s = ordered(summary[summary.metric == metric], baseline)
    models = sorted(set(s.model) - {baseline})
    lines = [f"| trained on | tested on | supervision | {baseline} test mIoU | "
             + " | ".join(f"{m}: Δ vs {baseline} [95 % CI]" for m in models) + " | seeds |",
             "|---|---|---|---|" + "---|" * (len(models) + 1)]
    for (d, t, sup, var, bud), part in s.groupby(["dataset", "test_set", "supervision", "variant", "budget"], sort=False):
        by = part.set_index("model")
        if baseline not in by.index:
            continue
        b = by.loc[baseline]
        base = _fmt(b["mean"]) + (f" ± {_fmt(b['std'])}" if b["n"] > 1 else "")
        cells = [_diff(by.loc[m]) if m in by.index else "-" for m in models]
        seeds = int(part.n.min())
        lines.append(f"| {d} | {t} | {sup} | {base} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def grid(summary: pd.DataFrame) -> str:
    """Every cell's test mIoU (mean over the seeds done, their count in brackets), a column per model: the whole grid
    at a glance, "-" where no seed is scored yet (a partial run)."""
    s = ordered(summary[summary.metric == "miou_macro"])
    models = sorted(set(s.model), key=lambda m: (m != "unet", m))
    lines = ["| trained on | tested on | supervision | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for (d, t, sup), part in s.groupby(["dataset", "test_set", "supervision"], sort=False):
        by = part.set_index("model")
        lines.append(f"| {d} | {t} | {sup} | " + " | ".join(
            f"{_fmt(by.loc[m, 'mean'])} ({int(by.loc[m, 'n'])})" if m in by.index else "-" for m in models) + " |")
    return "\n".join(lines) + "\n"


def pooled(cells: pd.DataFrame, baseline: str = "unet", metric: str = "miou_macro") -> str:
    """Each model against the baseline pooled over the supervisions: pairs are (supervision, seed) of the same
    trained dataset, test set, variant and budget; mean difference, 95 % t interval over the pairs, and how many
    pairs the model wins. The supervisions share tiles and seeds, so the interval is of this grid's cells, not of new
    data: a summary of the per-supervision rows, not a stronger test."""
    from eqseg.stats import paired_t_interval

    c = cells[~cells.adabn.astype(bool)] if "adabn" in cells else cells
    c = c.rename(columns={"testset": "test_set"})[["dataset", "test_set", "variant", "budget", "supervision", "seed",
                                                    "model", metric]]
    models = sorted(set(c.model) - {baseline})
    lines = [f"| trained on | tested on | variant | budget | {baseline} mean | "
             + " | ".join(f"{m}: Δ vs {baseline} [95 % CI], wins" for m in models) + " |",
             "|---|---|---|---|---|" + "---|" * len(models)]
    keys = ["supervision", "seed"]
    for (d, t, var, bud), part in ordered(c, baseline).groupby(
            ["dataset", "test_set", "variant", "budget"], sort=False):
        base = part[part.model == baseline].set_index(keys)[metric]
        cols = []
        for m in models:
            other = part[part.model == m].set_index(keys)[metric]
            both = base.index.intersection(other.index)
            r = paired_t_interval(other[both].to_numpy(), base[both].to_numpy())
            wins = int(sum(x > 0 for x in r["diffs"]))
            cols.append("-" if not r["n"] else f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}], {wins} of {r['n']}")
        lines.append(f"| {d} | {t} | {var} | {bud} | {_fmt(base.mean())} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def weak_full(ratios: pd.DataFrame) -> str:
    lines = ["| trained on | tested on | model | supervision | weak / full mIoU | ratio | Δ [95 % CI] | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ratios.to_dict("records"):
        lines.append(f"| {r['dataset']} | {r['test_set']} | {r['model']} | {r['supervision']} | {_fmt(r['weak'])} / "
                     f"{_fmt(r['full'])} | {_fmt(r['ratio'], 2)} | {_diff(r)} | {r['n']} |")
    return "\n".join(lines) + "\n"


def modes(table: pd.DataFrame) -> str:
    """Each mode against train over every trained model of a test set (modes_pooled.csv), and the mode the report
    picks: the one that holds off-domain without costing in-domain."""
    from eqseg.report import NO_COST, best_mode, modes_pooled_markdown

    choice = best_mode(table)
    return modes_pooled_markdown(table) + (f"\nHolds off-domain without costing in-domain (in-domain interval above "
                                           f"-{NO_COST}, largest external gain): **{choice}**\n" if choice else "")


def per_class(table: pd.DataFrame) -> str:
    names = list(dict.fromkeys(table["class"]))
    lines = ["| tested on | model | supervision | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (t, m, s), part in table.groupby(["test_set", "model", "supervision"], sort=False):
        by = part.set_index("class")
        lines.append(f"| {t} | {m} | {s} | " + " | ".join(_fmt(by.loc[c, "mean"]) for c in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--baseline", default="unet")
    args = ap.parse_args()
    read = lambda name: pd.read_csv(args.folder / name) if (args.folder / name).is_file() else pd.DataFrame()  # noqa: E731
    sections = [("Every cell", read("summary.csv"), grid),
                ("Answer per supervision (the normalisation the grid ran with)", read("summary.csv"),
                 lambda t: answer(t, args.baseline)),
                ("Answer per supervision, normalisation dataset (the default)",
                 read("summary.csv").query("metric == 'mode_dataset_miou_macro'") if (args.folder / "summary.csv").is_file()
                 else pd.DataFrame(), lambda t: answer(t, args.baseline, "mode_dataset_miou_macro")),
                ("Pooled over supervisions (the normalisation the grid ran with)", read("cells.csv"),
                 lambda t: pooled(t, args.baseline)),
                ("Pooled over supervisions, normalisation dataset", read("cells.csv"),
                 lambda t: pooled(t, args.baseline, "mode_dataset_miou_macro")),
                ("Weak / full", read("weak_full.csv"), weak_full), ("Normalisation modes", read("modes_pooled.csv"), modes),
                ("Per class", read("per_class.csv"), per_class)]
    for title, table, render in sections:
        if len(table):
            print(f"#### {title}\n\n{render(table)}")


if __name__ == "__main__":
    main()
