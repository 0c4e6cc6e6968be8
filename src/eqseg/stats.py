"""Statistics of the study: spread over seeds, paired differences against the `unet` baseline, nested label budgets.

* `mean_std`: mean, sample standard deviation (ddof = 1) and n over seeds.
* `paired_t_interval`: per-seed differences model − baseline (paired by seed), their mean and a two-sided
  Student-t interval (scipy.stats.t, n − 1 degrees of freedom); NaN interval for fewer than 2 pairs.
* `paired_bootstrap_interval`: the alternative over test images: resample the test images with replacement
  (the same resample for both models: paired), re-score each model from its summed per-image statistics (e.g.
  per-image confusion matrices, so mIoU is recomputed on every resample, not averaged per image) and take the
  percentile interval of the difference. Seeded, so it is deterministic.
* `nested_budget_ids`: label budgets as prefixes of ONE seeded permutation of the train ids, so the 10 % subset
  is inside the 25 % subset inside 100 %, and sample-efficiency curves are paired.
* `summarise`: tidy table of runs -> mean/std/n per cell and paired differences vs the baseline model.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from eqseg.errors import EqsegError

KEY_COLUMNS = ("dataset", "test_set", "normalise", "model", "variant", "supervision", "budget")


def mean_std(values: Iterable[float]) -> dict:
    """{"mean", "std" (ddof=1; NaN for n < 2), "n"} of the finite values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "mean": float(v.mean()) if n else float("nan"),
        "std": float(v.std(ddof=1)) if n > 1 else float("nan"),
        "n": n,
    }


def paired_t_interval(model: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of the paired differences model[i] − baseline[i] with its Student-t interval.

    Returns {"diff", "lo", "hi", "n", "diffs"}; pairs with a NaN on either side are dropped.
    """
    _check_confidence(confidence)
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise EqsegError(f"paired_t_interval: model ({a.shape}) and baseline ({b.shape}) need one value per seed each")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        lo = hi = float("nan")
    else:
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        lo, hi = mean - half, mean + half
    return {"diff": mean, "lo": lo, "hi": hi, "n": n, "diffs": d.tolist()}


def paired_bootstrap_interval(
    model_stats: np.ndarray,
    baseline_stats: np.ndarray,
    metric: Callable[[np.ndarray], float] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Bootstrap over test images of metric(Σ model stats) − metric(Σ baseline stats).

    `model_stats`, `baseline_stats`: arrays (n_images, ...) of additive per-image statistics on the SAME images
    in the same order (e.g. confusion matrices (n_images, C, C)); `metric` maps a sum over images to a score
    (default: the mean, i.e. stats are per-image scores). Returns {"diff" (on all images), "lo", "hi", "n_images",
    "n_boot", "seed"}.
    """
    _check_confidence(confidence)
    a, b = np.asarray(model_stats, dtype=np.float64), np.asarray(baseline_stats, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or a.shape[0] < 1:
        raise EqsegError(f"paired_bootstrap_interval: model {a.shape} and baseline {b.shape} statistics must have "
                         "one shape (n_images, ...)")
    if n_boot < 1:
        raise EqsegError(f"paired_bootstrap_interval: n_boot must be >= 1 (got {n_boot})")
    n = a.shape[0]
    if metric is None:
        def score(s, k=n):
            return float(np.sum(s) / k)
    else:
        def score(s, k=n):
            return float(metric(s))
    diff = score(a.sum(axis=0)) - score(b.sum(axis=0))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        boots[i] = score(a[idx].sum(axis=0)) - score(b[idx].sum(axis=0))
    boots = boots[np.isfinite(boots)]
    alpha = (1 - confidence) / 2
    lo, hi = (np.quantile(boots, [alpha, 1 - alpha]) if boots.size else (float("nan"), float("nan")))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "n_images": n, "n_boot": n_boot, "seed": seed}


def nested_budget_ids(train_ids: Sequence, fractions: Sequence[float], seed: int) -> dict[float, list]:
    """{fraction: ids} with every smaller budget a subset of every larger one.

    The ids are sorted (so the result does not depend on their input order), permuted once with
    numpy's default_rng(seed), and budget f takes the first max(1, floor(f * n + 0.5)) of that permutation.
    Each subset is returned in sorted order.
    """
    ids = sorted(train_ids)
    if len(set(ids)) != len(ids):
        raise EqsegError("nested_budget_ids: train ids must be unique")
    if not ids:
        raise EqsegError("nested_budget_ids: no train ids")
    for f in fractions:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise EqsegError(f"nested_budget_ids: budget fractions must be in (0, 1] (got {f!r})")
    n = len(ids)
    perm = np.random.default_rng(seed).permutation(n)
    out = {}
    for f in fractions:
        k = max(1, int(math.floor(f * n + 0.5)))
        out[f] = sorted(ids[i] for i in perm[:k])
    return out


def summarise(
    table: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    baseline: str = "unet",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Summary of a tidy table of runs (one row per run; columns such as dataset, model, variant, supervision,
    budget, seed, and metric columns).

    Cells are the unique combinations of the key columns present among KEY_COLUMNS (plus any other non-metric,
    non-seed column); `metrics` default to every numeric column that is not a key or `seed`. Returns a long table,
    one row per (cell, metric): the keys, `metric`, `mean`, `std`, `n` over seeds, and for every model other than
    the baseline: `diff` (mean of per-seed differences to the baseline model of the same cell with all other keys
    equal, paired by seed), `diff_lo`, `diff_hi` (Student-t interval at `confidence`), `n_pairs`. Rows without a
    baseline partner (or the baseline itself) have NaN differences and n_pairs = 0.
    """
    if not isinstance(table, pd.DataFrame):
        raise EqsegError("summarise: expected a pandas DataFrame")
    for col in ("model", "seed"):
        if col not in table.columns:
            raise EqsegError(f"summarise: the table has no {col!r} column")
    if metrics is None:
        metrics = [c for c in table.columns if c not in KEY_COLUMNS and c != "seed"
                   and pd.api.types.is_numeric_dtype(table[c])]
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise EqsegError(f"summarise: metric columns {missing} not in the table")
    keys = [c for c in table.columns if c not in metrics and c != "seed"]
    other = [c for c in keys if c != "model"]
    dup = table.duplicated(subset=keys + ["seed"])
    if dup.any():
        raise EqsegError(f"summarise: {int(dup.sum())} duplicate rows for the same cell and seed")

    rows = []
    for cell, group in table.groupby(keys, dropna=False, sort=True):
        cell = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,)))
        base = None
        if cell["model"] != baseline:
            mask = table["model"] == baseline
            for c in other:
                mask &= (table[c] == cell[c]) | (table[c].isna() & pd.isna(cell[c]))
            base = table[mask].set_index("seed")
        by_seed = group.set_index("seed")
        for m in metrics:
            row = dict(cell, metric=m, **mean_std(by_seed[m]))
            if base is not None and len(base):
                seeds = by_seed.index.intersection(base.index)
                res = paired_t_interval(by_seed.loc[seeds, m].to_numpy(), base.loc[seeds, m].to_numpy(), confidence)
                row.update(diff=res["diff"], diff_lo=res["lo"], diff_hi=res["hi"], n_pairs=res["n"])
            else:
                row.update(diff=float("nan"), diff_lo=float("nan"), diff_hi=float("nan"), n_pairs=0)
            rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["metric", "mean", "std", "n", "diff", "diff_lo", "diff_hi", "n_pairs"])


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise EqsegError(f"confidence must be in (0, 1) (got {confidence})")
