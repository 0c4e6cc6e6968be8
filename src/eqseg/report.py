"""`eqseg report`: the study's answer as tables and plots over every evaluated cell of the grid.

Outputs in `results/report/`: `cells.csv` and `cells.parquet` (tidy: one row per trained cell and test set, every
metric), `summary.csv` (per cell over seeds: mean, std, n, and for every model the paired difference to the `unet`
of the same cell with its 95 % t interval), `metrics.json` (test mIoU per test set and cell: DVC's headline
metrics), `report.md`, and plots with labelled axes: `miou.png` (test mIoU per
model, variant and supervision), `budget.png` (mIoU against label budget), `external.png` (scores on other test
sets, when grid.test_on is set), `equivariance.png` (rotation and reflection error per model), `distill.csv` (every NAME+distill student against
its teacher, paired by seed; empty without grid.distill), `modes.csv` (the normalisation axis: each cell scored
under every mode of evaluate.normalise_modes, paired by seed to mode train; empty without it), `modes_pooled.csv`
(each mode against train over every trained model of a dataset and test set; empty without modes), `weak_full.csv` (each
weak supervision against full labels of the same cell: ratio and paired difference; empty without full cells),
`per_class.csv` (each class's test IoU per cell, for datasets with more than two classes; empty without one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from eqseg import paths
from eqseg.config import CLASSICAL_OPTIONS, DISTILL, Params
from eqseg.errors import EqsegError
from eqseg.stats import paired_t_interval, summarise as paired_summary
from eqseg.utils.atomic import atomic_dir, check_replaceable, write_json

KEYS = ("dataset", "testset", "model", "supervision", "variant", "budget", "seed")
HEADLINE = ("miou_macro", "fwiou", "tta_miou_macro", "ap_macro", "dice_macro")


def collect(params: Params, root: Path = Path("."), partial: bool = False) -> pd.DataFrame:
    """One row per (trained cell, test set): test metrics from evaluate, size and cost from train. With `partial`,
    the evaluations not done yet are left out (a long run's progress) instead of refused."""
    rows = []
    for cell in params.evaluations():
        metrics_file = root / paths.EVAL.format(**cell) / "metrics.json"
        if not metrics_file.is_file():
            if partial:
                continue
            raise EqsegError(f"{metrics_file}: missing; run evaluate for this cell first (or report --partial)")
        row = dict(cell) | json.loads(metrics_file.read_text())
        config = root / paths.MODEL.format(**cell) / "config.json"
        if config.is_file():
            summary = json.loads(config.read_text()).get("summary", {})
            row |= {k: summary.get(k) for k in ("n_params", "macs_per_tile", "train_seconds", "best_epoch")}
        rows.append(row)
    return pd.DataFrame(rows)


def distill_gains(table: pd.DataFrame, root: Path = Path("."), metric: str = "miou_macro") -> pd.DataFrame:
    """Every distilled student against its teacher (the weak parent cell, same dataset, test set, model, variant,
    budget): both means over seeds, the paired difference per seed with its 95 % t interval, and how much of the
    open pixels the teacher labelled (and how precisely: against the dense masks, for the record only)."""
    cols = ["dataset", "test_set", "model", "variant", "budget", "supervision", "parent", "student", "teacher",
            "diff", "diff_lo", "diff_hi", "n", "kept_fraction", "pseudo_precision"]
    if "supervision" not in table or not table.supervision.str.endswith(DISTILL).any():
        return pd.DataFrame(columns=cols)
    keys = ["dataset", "testset", "model", "variant", "budget"]
    rows = []
    for cell, part in table[table.supervision.str.endswith(DISTILL)].groupby(keys + ["supervision"], sort=False):
        parent = cell[-1].removesuffix(DISTILL)
        mask = table.supervision == parent
        for k, v in zip(keys, cell):
            mask &= table[k] == v
        teacher = table[mask].set_index("seed")[metric]
        student = part.set_index("seed")[metric]
        seeds = student.index.intersection(teacher.index)
        res = paired_t_interval(student.loc[seeds].to_numpy(), teacher.loc[seeds].to_numpy())
        kept, precision = [], []
        for seed in seeds:
            q = root / paths.PSEUDO.format(dataset=cell[0], model=cell[2], supervision=parent, variant=cell[3],
                                           budget=cell[4], seed=seed) / "quality.json"
            if q.is_file():
                d = json.loads(q.read_text()).get("distill", {})
                kept.append(d.get("kept_fraction"))
                precision.append(d.get("pseudo_precision"))
        def mean(values: list) -> float:  # over the seeds that have it (a teacher that labelled nothing has no precision)
            v = np.asarray(values, float)
            return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")

        rows.append(dict(dataset=cell[0], test_set=cell[1], model=cell[2], variant=cell[3], budget=cell[4],
                         supervision=cell[5], parent=parent, student=float(student.loc[seeds].mean()),
                         teacher=float(teacher.loc[seeds].mean()), diff=res["diff"], diff_lo=res["lo"],
                         diff_hi=res["hi"], n=res["n"], kept_fraction=mean(kept), pseudo_precision=mean(precision)))
    return pd.DataFrame(rows, columns=cols)


def distill_markdown(gains: pd.DataFrame) -> str:
    lines = ["| dataset | test set | model | variant | budget | student | teacher (its parent) | test mIoU student / "
             "teacher | Δ [95 % CI] | open pixels labelled | their precision | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in gains.to_dict("records"):
        lines.append(f"| {r['dataset']} | {r['test_set']} | {r['model']} | {r['variant']} | {int(r['budget'])} % | "
                     f"{r['supervision']} | {r['parent']} | {_fmt(r['student'])} / {_fmt(r['teacher'])} | "
                     f"{_delta(r)} | {_fmt(r['kept_fraction'])} | {_fmt(r['pseudo_precision'])} | {r['n']} |")
    return "\n".join(lines) + "\n"


def networks_first(w: pd.DataFrame, models: list[str], arch: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows in grid order, the classical baselines under the networks of each group of rows (`arch`: a grid name's
    architecture, where it is an alias)."""
    arch = arch or {}
    order = {m: i + (len(models) if arch.get(m, m) in CLASSICAL_OPTIONS else 0) for i, m in enumerate(models)}
    keys = [c for c in ("dataset", "test_set", "supervision", "variant", "budget") if c in w]
    return w.assign(_order=w.model.map(order).fillna(len(order) * 2)).sort_values(
        [*keys, "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def summarise(table: pd.DataFrame, baseline: str = "unet") -> pd.DataFrame:
    """Long summary over seeds (eqseg.stats.summarise) of the headline metrics, the equivariance errors and, with the
    normalisation axis, the test mIoU under each mode (`mode_<mode>[_adabn]_miou_macro`: the answer, model against
    baseline, under every normalisation, not only the one the grid ran with)."""
    modes = [c for c in table.columns if MODE_COLUMN.match(c)]
    metrics = [c for c in (*HEADLINE, "equivariance_error_rotations", "equivariance_error_reflections", *modes)
               if c in table]
    keyed = table[[c for c in KEYS if c in table] + metrics]
    return paired_summary(keyed.rename(columns={"testset": "test_set"}), metrics=metrics, baseline=baseline)


def wide(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary pivoted to one row per cell: <metric>, <metric>_std, <metric>_diff(_lo/_hi), n."""
    keys = [c for c in summary.columns if c in ("dataset", "test_set", "model", "supervision", "variant", "budget")]
    out = summary.set_index([*keys, "metric"])[["mean", "std", "diff", "diff_lo", "diff_hi", "n"]].unstack("metric")
    out.columns = [m if stat == "mean" else f"{m}_{stat}" for stat, m in out.columns]
    return out.reset_index()


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _delta(r: dict) -> str:
    """A paired difference with its interval, "+0.012 [-0.003, 0.027]" (no interval for one pair)."""
    ci = f" [{_fmt(r['diff_lo'])}, {_fmt(r['diff_hi'])}]" if r["n"] > 1 else ""
    return f"{r['diff']:+.3f}{ci}"


def to_markdown(w: pd.DataFrame, table: pd.DataFrame) -> str:
    """The main table: one row per cell, mean ± std over seeds, the paired difference to unet with its interval."""
    # per dataset and model: the input bands (and classes) change the count
    size = table.groupby(["dataset", "model"])["n_params"].first() if "n_params" in table else None
    lines = ["| dataset | test set | model | variant | supervision | budget | test mIoU | Δ vs unet [95 % CI] | "
             "TTA mIoU | AP (macro) | equiv. err. rot / refl | params | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in w.to_dict("records"):
        n = int(r.get("miou_macro_n", 0) or 0)
        std = f" ± {_fmt(r.get('miou_macro_std'))}" if n > 1 else ""
        diff = r.get("miou_macro_diff")
        delta = "-" if diff is None or not np.isfinite(diff) else (
            f"{diff:+.3f} [{_fmt(r.get('miou_macro_diff_lo'))}, {_fmt(r.get('miou_macro_diff_hi'))}]" if n > 1 else f"{diff:+.3f}")
        equiv = f"{r.get('equivariance_error_rotations', np.nan):.1e} / {r.get('equivariance_error_reflections', np.nan):.1e}"
        params = "-"
        key = (r["dataset"], r["model"])
        if size is not None and key in size.index and pd.notna(size.loc[key]):
            params = f"{int(size.loc[key]):,}"
        lines.append(f"| {r['dataset']} | {r['test_set']} | {r['model']} | {r['variant']} | {r['supervision']} | "
                     f"{int(r['budget'])} % | {_fmt(r.get('miou_macro'))}{std} | {delta} | {_fmt(r.get('tta_miou_macro'))} | "
                     f"{_fmt(r.get('ap_macro'))} | {equiv} | {params} | {n} |")
    return "\n".join(lines) + "\n"


def by_test_set(w: pd.DataFrame) -> str:
    """Test mIoU (mean ± std over seeds) with a column per test set, for the trained datasets that have more than
    one (grid.test_on): in-domain and external side by side. Empty when none has."""
    counts = w.groupby("dataset").test_set.nunique()
    sub = w[w.dataset.isin(counts[counts > 1].index)]
    if sub.empty:
        return ""
    keys = ["dataset", "model", "variant", "supervision", "budget"]
    cell = sub.assign(text=[_fmt(m) + (f" ± {_fmt(s)}" if n > 1 else "") for m, s, n in
                            zip(sub.miou_macro, sub.miou_macro_std, sub.miou_macro_n)])
    table = cell.pivot_table(index=keys, columns="test_set", values="text", aggfunc="first", sort=False)
    sets = list(dict.fromkeys(sub.test_set))
    lines = ["| dataset | model | variant | supervision | budget | " + " | ".join(sets) + " |",
             "|---|---|---|---|---|" + "---|" * len(sets)]
    for key, row in table.iterrows():
        d, m, v, s, b = key
        texts = [row.get(t) if isinstance(row.get(t), str) else "-" for t in sets]  # a test set not scored yet: "-"
        lines.append(f"| {d} | {m} | {v} | {s} | {int(b)} % | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_miou(w: pd.DataFrame, path: Path) -> None:
    """Test mIoU (mean, std over seeds) per model and variant, one panel per dataset, full budget, in-domain."""
    plt = _plt()
    sub = w[(w.dataset == w.test_set) & (w.budget == w.budget.max())]
    datasets = list(dict.fromkeys(sub.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), dpi=110, squeeze=False)
    for ax, d in zip(axes[0], datasets):
        part = sub[sub.dataset == d]
        labels = [f"{r.model}\n{r.variant}\n{r.supervision}" for r in part.itertuples()]
        ax.bar(range(len(part)), part.miou_macro, yerr=part.get("miou_macro_std", 0).fillna(0), color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(part)), labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test mIoU (macro), mean ± std over seeds")
        ax.set_title(d, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_budget(w: pd.DataFrame, path: Path) -> None:
    """Sample-efficiency curves: mIoU against the label budget per model and variant (paired nested subsets)."""
    plt = _plt()
    sub = w[w.dataset == w.test_set]
    panels = list(dict.fromkeys(zip(sub.dataset, sub.supervision)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110, squeeze=False)
    for ax, (d, s) in zip(axes[0], panels):
        part = sub[(sub.dataset == d) & (sub.supervision == s)]
        for (m, v), line in part.groupby(["model", "variant"], sort=False):
            line = line.sort_values("budget")
            ax.errorbar(line.budget, line.miou_macro, yerr=line.get("miou_macro_std", 0).fillna(0), marker="o",
                        capsize=3, label=f"{m} ({v})")
        ax.set_xscale("log")
        ax.set_xlabel("label budget (% of train tiles)")
        ax.set_ylabel("test mIoU (macro)")
        ax.set_title(f"{d} / {s}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_external(w: pd.DataFrame, path: Path) -> None:
    """In-domain against other test sets, per model and variant (full budget), mean ± std over seeds."""
    plt = _plt()
    sub = w[w.budget == w.budget.max()]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for i, ((d, t), part) in enumerate(sub.groupby(["dataset", "test_set"], sort=False)):
        labels = [f"{r.model}/{r.variant}" for r in part.itertuples()]
        x = np.arange(len(part)) + i * 0.25
        ax.bar(x, part.miou_macro, 0.25, yerr=part.get("miou_macro_std", pd.Series(0.0, index=part.index)).fillna(0),
               capsize=2, label=f"trained on {d}, tested on {t}")
        ax.set_xticks(np.arange(len(part)), labels, fontsize=7)
    ax.set_ylabel("test mIoU (macro), mean ± std over seeds")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_equivariance(table: pd.DataFrame, path: Path) -> None:
    """Relative equivariance error of the logits for rotations and for reflections, per model (log scale)."""
    plt = _plt()
    sub = table.groupby("model", sort=False)[["equivariance_error_rotations", "equivariance_error_reflections"]].median()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    x = np.arange(len(sub))
    ax.bar(x - 0.2, sub.equivariance_error_rotations.clip(lower=1e-9), 0.4, label="rotations (max over r1-r3)")
    ax.bar(x + 0.2, sub.equivariance_error_reflections.clip(lower=1e-9), 0.4, label="reflections (max over m, mr1-mr3)")
    ax.set_yscale("log")
    ax.set_xticks(x, sub.index, fontsize=8)
    ax.set_ylabel("max |f(g·x) - g·f(x)| / max |f(x)|")
    ax.legend(fontsize=7)
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


MODE_COLUMN = re.compile(r"^mode_(train|dataset|image)(_adabn)?_miou_macro$")


def normalisation_modes(table: pd.DataFrame, reference: str = "train", metric: str = "miou_macro") -> pd.DataFrame:
    """The normalisation axis (evaluate.normalise_modes), long: per trained cell and test set, each mode's mean over
    seeds and its paired difference per seed to the `reference` mode with the 95 % t interval."""
    cols = ["dataset", "test_set", "model", "variant", "supervision", "budget", "mode", "mean", "std", "n",
            "diff", "diff_lo", "diff_hi"]
    found = {m.group(1) + ("+adabn" if m.group(2) else ""): c for c in table.columns if (m := MODE_COLUMN.match(c))}
    canonical = [f"{mode}{adapt}" for adapt in ("", "+adabn") for mode in ("train", "dataset", "image")]
    found = {mode: found[mode] for mode in canonical if mode in found}  # columns in a fixed order, not the file's
    if not found:
        return pd.DataFrame(columns=cols)
    keys = ["dataset", "testset", "model", "variant", "supervision", "budget"]
    ref_col = found.get(reference)
    rows = []
    for cell, part in table.sort_values("seed").groupby(keys, sort=False):
        for mode, col in found.items():
            values = part[col].astype(float)
            diff = (paired_t_interval(values.to_numpy(), part[ref_col].astype(float).to_numpy()) if ref_col
                    else {"diff": np.nan, "lo": np.nan, "hi": np.nan})
            finite = values[np.isfinite(values)]
            rows.append(dict(zip(cols, [*cell, mode, float(finite.mean()) if len(finite) else np.nan,
                                        float(finite.std(ddof=1)) if len(finite) > 1 else np.nan, int(len(finite)),
                                        diff["diff"], diff["lo"], diff["hi"]])))
    return pd.DataFrame(rows, columns=cols)


def modes_markdown(modes: pd.DataFrame, reference: str = "train") -> str:
    """One row per trained cell and test set, a column per mode: mean test mIoU (Δ to the reference [95 % CI])."""
    if modes.empty:
        return ""
    order = list(dict.fromkeys(modes["mode"]))
    keys = ["dataset", "test_set", "model", "variant", "supervision", "budget"]
    lines = ["| dataset | test set | model | variant | supervision | budget | " + " | ".join(order) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(order)]
    for cell, part in modes.groupby(keys, sort=False):
        by = part.set_index("mode")
        texts = []
        for mode in order:
            r = by.loc[mode] if mode in by.index else None
            if r is None or not np.isfinite(r["mean"]):
                texts.append("-")
                continue
            text = _fmt(r["mean"])
            if mode != reference and np.isfinite(r["diff"]):
                ci = f" [{_fmt(r['diff_lo'])}, {_fmt(r['diff_hi'])}]" if np.isfinite(r["diff_lo"]) else ""
                text += f" ({r['diff']:+.3f}{ci})"
            texts.append(text)
        lines.append("| " + " | ".join([*map(str, cell[:5]), f"{int(cell[5])} %"]) + " | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


NO_COST = 0.01  # a mode "costs nothing in-domain" when its in-domain interval stays above -NO_COST


def modes_pooled(table: pd.DataFrame, reference: str = "train") -> pd.DataFrame:
    """The normalisation axis over every trained model: per dataset, test set and mode, the paired difference to the
    `reference` mode over all (cell, seed) evaluations with its 95 % t interval, the worst pair and how many pairs
    lose. The unit is a trained model (cells share data, so the interval is of this grid's models, not of data).
    `in_domain`: the test set is the trained dataset's own test split."""
    cols = ["dataset", "test_set", "in_domain", "mode", "n", "mean", "diff", "diff_lo", "diff_hi", "worst", "n_worse"]
    found = {m.group(1) + ("+adabn" if m.group(2) else ""): c for c in table.columns if (m := MODE_COLUMN.match(c))}
    if reference not in found:
        return pd.DataFrame(columns=cols)
    canonical = [f"{mode}{adapt}" for adapt in ("", "+adabn") for mode in ("train", "dataset", "image")]
    rows = []
    for (dataset, testset), part in table.groupby(["dataset", "testset"], sort=False):
        ref = part[found[reference]].astype(float).to_numpy()
        for mode in (m for m in canonical if m in found and m != reference):
            values = part[found[mode]].astype(float).to_numpy()
            d = paired_t_interval(values, ref)
            diffs = np.asarray(d["diffs"])
            rows.append(dict(zip(cols, [dataset, testset, bool(dataset == testset), mode, d["n"],
                                        float(np.nanmean(values)) if np.isfinite(values).any() else np.nan,
                                        d["diff"], d["lo"], d["hi"], float(diffs.min()) if diffs.size else np.nan,
                                        int((diffs < 0).sum())])))
    return pd.DataFrame(rows, columns=cols)


def best_mode(pooled: pd.DataFrame) -> str | None:
    """The mode that holds off-domain without hurting in-domain: among the modes whose in-domain interval stays
    above -NO_COST on every dataset (a single pair: its difference), the one of largest mean external gain; None
    without an external test set or without such a mode."""
    if pooled.empty or not (~pooled.in_domain).any():
        return None
    inside = pooled[pooled.in_domain]
    floor = inside.diff_lo.where(np.isfinite(inside.diff_lo), inside["diff"])
    harmless = set(inside["mode"]) - set(inside.loc[~(floor >= -NO_COST), "mode"])
    outside = pooled[~pooled.in_domain & pooled["mode"].isin(harmless)]
    if outside.empty:
        return None
    gains = outside.groupby("mode", sort=False)["diff"].mean()
    return str(gains.idxmax()) if gains.max() > 0 else None


def modes_pooled_markdown(pooled: pd.DataFrame, reference: str = "train") -> str:
    """A row per dataset and test set, a column per mode: paired difference to the reference [95 % CI], the worst
    pair, and how many of the n pairs lose."""
    if pooled.empty:
        return ""
    order = list(dict.fromkeys(pooled["mode"]))
    lines = ["| dataset | test set | pairs | " + " | ".join(f"{m} − {reference}" for m in order) + " |",
             "|---|---|---|" + "---|" * len(order)]
    for (dataset, testset), part in pooled.groupby(["dataset", "test_set"], sort=False):
        by = part.set_index("mode")
        texts = []
        for mode in order:
            r = by.loc[mode]
            texts.append(f"{_delta(r)}; worst {r['worst']:+.3f}, {int(r['n_worse'])} lose" if r["n"] else "-")
        where = " (in-domain)" if dataset == testset else ""
        lines.append(f"| {dataset} | {testset}{where} | {int(part['n'].max())} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def per_class(table: pd.DataFrame, classes: dict[str, list[str]], metric: str = "iou") -> pd.DataFrame:
    """Per trained cell and test set, each class's test IoU: mean and std over seeds, for the datasets with more
    than two classes (`classes`: a dataset's class names; a binary task's two IoUs say little the mIoU does not)."""
    cols = ["dataset", "test_set", "model", "variant", "supervision", "budget", "class", "mean", "std", "n"]
    keys = ["dataset", "testset", "model", "variant", "supervision", "budget"]
    rows = []
    for cell, part in table.groupby(keys, sort=False):
        names = classes.get(cell[0], [])
        if len(names) <= 2:
            continue
        for name in names:
            values = part.get(f"{metric}_{name}", pd.Series(dtype=float)).astype(float)
            finite = values[np.isfinite(values)]
            rows.append(dict(zip(cols, [*cell, name, float(finite.mean()) if len(finite) else np.nan,
                                        float(finite.std(ddof=1)) if len(finite) > 1 else np.nan, int(len(finite))])))
    return pd.DataFrame(rows, columns=cols)


def per_class_markdown(table: pd.DataFrame) -> str:
    """A table per dataset: one row per cell, a column per class, mean ± std over seeds."""
    if table.empty:
        return ""
    keys = ["dataset", "test_set", "model", "variant", "supervision", "budget"]
    blocks = []
    for dataset, block in table.groupby("dataset", sort=False):
        names = list(dict.fromkeys(block["class"]))
        lines = ["| test set | model | variant | supervision | budget | " + " | ".join(names) + " | seeds |",
                 "|---|---|---|---|---|" + "---|" * (len(names) + 1)]
        for cell, part in block.groupby(keys, sort=False):
            by = part.set_index("class")
            texts = [_fmt(by.loc[c, "mean"]) + (f" ± {_fmt(by.loc[c, 'std'])}" if by.loc[c, "n"] > 1 else "")
                     for c in names]
            lines.append(f"| {cell[1]} | {cell[2]} | {cell[3]} | {cell[4]} | {int(cell[5])} % | " + " | ".join(texts)
                         + f" | {int(part.n.max())} |")
        blocks.append(f"**{dataset}**\n\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def weak_vs_full(table: pd.DataFrame, metric: str = "miou_macro") -> pd.DataFrame:
    """Every weak supervision against full labels of the same dataset, test set, model, variant and budget: both
    means over seeds, their ratio (weak / full: the share of the fully supervised score the weak labels keep) and
    the paired difference per seed with its 95 % t interval."""
    cols = ["dataset", "test_set", "model", "variant", "budget", "supervision", "weak", "full", "ratio",
            "diff", "diff_lo", "diff_hi", "n"]
    if "supervision" not in table or not (table.supervision == "full").any():
        return pd.DataFrame(columns=cols)
    keys = ["dataset", "testset", "model", "variant", "budget"]
    rows = []
    for cell, part in table.groupby(keys, sort=False):
        full = part[part.supervision == "full"].set_index("seed")[metric].astype(float)
        if full.empty:
            continue
        for supervision, weak_part in part[part.supervision != "full"].groupby("supervision", sort=False):
            weak = weak_part.set_index("seed")[metric].astype(float)
            seeds = weak.dropna().index.intersection(full.dropna().index).sort_values()  # pairs with both scores
            if not len(seeds):
                continue
            res = paired_t_interval(weak.loc[seeds].to_numpy(), full.loc[seeds].to_numpy())
            w_mean, f_mean = float(weak.loc[seeds].mean()), float(full.loc[seeds].mean())
            rows.append(dict(zip(cols, [*cell, supervision, w_mean, f_mean, w_mean / f_mean if f_mean else np.nan,
                                        res["diff"], res["lo"], res["hi"], res["n"]])))
    return pd.DataFrame(rows, columns=cols)


def weak_vs_full_markdown(ratios: pd.DataFrame) -> str:
    if ratios.empty:
        return ""
    lines = ["| dataset | test set | model | variant | budget | supervision | test mIoU weak / full | ratio | "
             "Δ weak − full [95 % CI] | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ratios.to_dict("records"):
        lines.append(f"| {r['dataset']} | {r['test_set']} | {r['model']} | {r['variant']} | {int(r['budget'])} % | "
                     f"{r['supervision']} | {_fmt(r['weak'])} / {_fmt(r['full'])} | {_fmt(r['ratio'], 2)} | "
                     f"{_delta(r)} | {r['n']} |")
    return "\n".join(lines) + "\n"


def selection_note(table: pd.DataFrame) -> str:
    """How the cells' epochs were chosen (train.select), in one sentence for the report."""
    chosen = sorted({str(v) for v in table.get("select", pd.Series(dtype=object)).dropna()})
    meaning = {"own": "own (each cell's best validation epoch scored with the labels its supervision has on the val "
                      "tiles: points for a points cell)",
               "dense": "dense (the dense val masks: an oracle for weak-label cells)", "last": "last (the last epoch)"}
    if not chosen:
        return "Epoch selection: not recorded (models of an earlier eqseg)."
    return "Epoch selection (train.select): " + "; ".join(meaning.get(c, c) for c in chosen) + "."


def headline(w: pd.DataFrame) -> dict:
    """The few numbers `dvc exp show` and `dvc metrics diff` show (results/report/metrics.json), so that one screen
    answers "did this change help?": mean_miou.<model>, the model's test mIoU averaged over its in-domain cells
    (short names: columns of `dvc exp show`), and test_miou.<test set>.<model>_<supervision>_<variant>_b<budget>,
    each cell's (mean over seeds; a test set from elsewhere, grid.test_on, is <dataset>_on_<test set>)."""
    cells: dict[str, dict[str, float]] = {}
    for r in w.to_dict("records"):
        test = r["dataset"] if r["test_set"] == r["dataset"] else f"{r['dataset']}_on_{r['test_set']}"
        cell = f"{r['model']}_{r['supervision']}_{r['variant']}_b{int(r['budget'])}"
        cells.setdefault(test, {})[cell] = r.get("miou_macro")
    own = w[w.dataset == w.test_set]
    means = {m: float(part.miou_macro.mean()) for m, part in own.groupby("model", sort=False)}
    return {"mean_miou": means, "test_miou": cells}


def report(params: Params, out: Path, partial: bool = False) -> pd.DataFrame:
    check_replaceable(out)  # a folder eqseg did not write is refused before any work
    table = collect(params, partial=partial)
    planned = len(params.evaluations())
    if table.empty:
        raise EqsegError(f"report: none of the {planned} evaluations of the grid is done yet")
    summary = summarise(table)
    w = networks_first(wide(summary), params.grid.models, {m: params.model_arch(m) for m in params.grid.models})
    gains = distill_gains(table)
    used = ", ".join(sorted(set(table["normalise"]))) if "normalise" in table else "train"
    text = ("# eqseg report\n\n## Segmentation\n\nDense test labels, each pixel once; mean ± std over seeds; Δ = paired "
            f"difference to the unet of the same cell (per seed), 95 % t interval over seeds. Inputs normalised with: "
            f"{used}. {selection_note(table)}\n\n"
            + (f"**Partial report: {len(table)} of the grid's {planned} evaluations are done**; cells with fewer seeds "
               "than planned show their n.\n\n" if len(table) < planned else "")
            + to_markdown(w, table))
    if per_set := by_test_set(w):
        text += ("\n## Per test set\n\nTest mIoU (macro), mean ± std over seeds, a column per test set: the trained "
                 "dataset's own test split and the datasets it never saw (grid.test_on).\n\n" + per_set)
    modes = normalisation_modes(table)
    if len(modes):
        text += ("\n## Normalisation modes\n\nThe same models with their inputs normalised each way "
                 "(evaluate.normalise_modes): train = the statistics of the training split that travel in the model, "
                 "dataset = the scored dataset's own, image = each scene's or slide's own; +adabn = batch-norm "
                 "statistics re-estimated on the test tiles. Test mIoU, mean over seeds (paired difference per seed "
                 "to train [95 % t interval]).\n\n" + modes_markdown(modes))
        pooled = modes_pooled(table)
        choice = best_mode(pooled)
        text += ("\n### Normalisation over every trained model\n\nEach mode against train, paired per trained model "
                 "(cell and seed) over all of them: mean difference of test mIoU [95 % t interval], the worst model, and "
                 "how many lose. Cells share data, so the interval is of this grid's models, not of new data.\n\n"
                 + modes_pooled_markdown(pooled)
                 + (f"\nThe mode that holds off-domain without costing in-domain (in-domain interval above "
                    f"−{NO_COST} on every dataset, largest mean external gain): **{choice}**.\n" if choice else ""))
    ratios = weak_vs_full(table)
    if len(ratios):
        text += ("\n## Weak labels against full labels\n\nEach weak supervision against full labels of the same "
                 "model, variant and budget: test mIoU (mean over seeds), the ratio weak / full, and the paired "
                 "difference per seed with its 95 % t interval.\n\n" + weak_vs_full_markdown(ratios))
    classes = per_class(table, {name: list(d.classes) for name, d in params.datasets.items()})
    if len(classes):
        text += ("\n## Per class\n\nTest IoU of each class, mean ± std over seeds, for the datasets with more than "
                 "two classes.\n\n" + per_class_markdown(classes))
    if len(gains):
        text += ("\n## Self-training (data distillation)\n\nEach NAME+distill student against its teacher, the NAME cell: "
                 f"test mIoU (mean over seeds), the paired difference per seed with its 95 % t interval, the fraction of "
                 f"the pixels left open by the weak labels that the teacher labelled (probability ≥ "
                 f"{params.distill.threshold}{', D4-averaged' if params.distill.tta else ''}) and their precision "
                 "against the dense masks (recorded, never used).\n\n" + distill_markdown(gains))
    digits_done = all((Path(paths.DIGITS.format(model=m, seed=seed)) / "metrics.json").is_file()
                      for m in params.digits.models for seed in params.digits.seeds)
    if params.digits.models and (digits_done or not partial):
        text += "\n## Rotated digits\n\nTrained on upright MNIST digits; accuracy on the test digits as rotated.\n\n" + digits_table(params)
    with atomic_dir(out) as tmp:
        table.to_csv(tmp / "cells.csv", index=False)
        table.to_parquet(tmp / "cells.parquet", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        gains.to_csv(tmp / "distill.csv", index=False)
        modes.to_csv(tmp / "modes.csv", index=False)
        modes_pooled(table).to_csv(tmp / "modes_pooled.csv", index=False)
        ratios.to_csv(tmp / "weak_full.csv", index=False)
        classes.to_csv(tmp / "per_class.csv", index=False)
        (tmp / "report.md").write_text(text)
        write_json(tmp / "metrics.json", headline(w))
        plot_miou(w, tmp / "miou.png")
        plot_budget(w, tmp / "budget.png")
        plot_external(w, tmp / "external.png")
        plot_equivariance(table, tmp / "equivariance.png")
    return w
