"""Does bf16 training change the scores? The default grid trained in fp32 and in bf16, paired by cell and seed.

    # each precision in its own clone at one commit (params.yaml with grid.seeds [0, 1, 2] and train.precision
    # fp32 / bf16; bench/precision_run.sh COMMIT), then:
    /work/main/.venv/bin/python bench/precision_accuracy.py /tmp/prec/fp32 /tmp/prec/bf16 --out docs/results/precision/COMMIT

Reads results/eval/{dataset}/{model}/full/d4/b100/seed{s}/{dataset}/metrics.json of both runs; for every model
and dataset, and over all cells, the paired difference bf16 - fp32 of test mIoU (macro) with its 95 % Student-t
interval (eqseg.stats.paired_t_interval, pairs = the same cell and seed). Writes precision.csv (one row per cell
and seed) and summary.csv, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from eqseg.stats import paired_t_interval


def scores(root: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(root.glob("results/eval/*/*/full/d4/b100/seed*/*/metrics.json")):
        ds, model, seed, testset = f.parts[-8], f.parts[-7], int(f.parts[-3].removeprefix("seed")), f.parts[-2]
        m = json.loads(f.read_text())
        rows.append(dict(dataset=ds, testset=testset, model=model, seed=seed, miou=m["miou_macro"],
                         precision=m.get("trained_precision")))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("bf16", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    a, b = scores(args.fp32), scores(args.bf16)
    keys = ["dataset", "testset", "model", "seed"]
    pairs = a.merge(b, on=keys, suffixes=("_fp32", "_bf16"))
    pairs["diff"] = pairs.miou_bf16 - pairs.miou_fp32
    summary = []
    for (ds, model), g in list(pairs.groupby(["dataset", "model"])) + [(("all", "all"), pairs)]:
        t = paired_t_interval(g.miou_bf16.tolist(), g.miou_fp32.tolist())
        summary.append(dict(dataset=ds, model=model, n=t["n"], fp32=g.miou_fp32.mean(), bf16=g.miou_bf16.mean(),
                            diff=t["diff"], lo=t["lo"], hi=t["hi"]))
    summary = pd.DataFrame(summary)
    print("| dataset | model | n | fp32 mIoU | bf16 mIoU | bf16 - fp32 [95 % CI] |\n|---|---|---|---|---|---|")
    for r in summary.itertuples():
        print(f"| {r.dataset} | {r.model} | {r.n} | {r.fp32:.3f} | {r.bf16:.3f} | {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        pairs.to_csv(args.out / "precision.csv", index=False, float_format="%.6f")
        summary.to_csv(args.out / "summary.csv", index=False, float_format="%.6f")


if __name__ == "__main__":
    main()
