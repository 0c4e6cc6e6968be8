"""Training step with the real tile loader vs. the same steps on batches already in memory.

Goal (issue #2): ratio <= 1.15, i.e. reading, normalising and augmenting tiles from the memory-mapped store must
not dominate training. Run from the repository root:

    .venv/bin/python bench/bench_loader.py [--steps 30] [--tile 128]

It tiles the bundled CPM-15 data into a temporary store, then times, in one process and on the same model:
  loader     the DataLoader of `eqseg train` (1 worker, D4 augmentation, torch threads = cores - workers)
  in-memory  the same batches, collated beforehand, same torch threads
and writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eqseg.config import load_params
from eqseg.data.dataset import TileDataset
from eqseg.models import build
from eqseg.tiling.store import TileStore, build_tile_store
from eqseg.train.loop import make_loader
from eqseg.runtime import set_threads


def step(model, opt, x, y) -> None:
    loss = F.cross_entropy(model(x), y, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(model, opt, batches) -> float:
    t0 = time.perf_counter()
    for x, y, _ in batches:
        step(model, opt, x, y)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    params = load_params("params.yaml")
    workers = 1
    with tempfile.TemporaryDirectory() as tmp:
        tile_cfg = params.tile.model_copy(update={"size": args.tile})
        build_tile_store("cpm15", params.dataset("cpm15"), tile_cfg, Path(tmp) / "tiles")
        store = TileStore(Path(tmp) / "tiles")
        ds = TileDataset(store, store.ids("train"), augment="d4", seed=0)
        set_threads(0, workers)
        model = build("unet", store.meta.bands, store.meta.num_classes, **params.model_options("unet"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = make_loader(ds, args.batch, 0, 0, workers, pin=False)
        in_memory = list(itertools.islice(loader, args.steps))
        if len(in_memory) < args.steps:
            raise SystemExit(f"only {len(in_memory)} batches in the train split: use --steps {len(in_memory)}")
        timed(model, opt, in_memory[:5])  # warm-up
        results = {"loader": [], "in_memory": []}
        for r in range(args.repeats):
            loader = make_loader(ds, args.batch, r + 1, 0, workers, pin=False)
            results["loader"].append(timed(model, opt, itertools.islice(loader, args.steps)))
            results["in_memory"].append(timed(model, opt, in_memory))
        best = {k: min(v) for k, v in results.items()}
        out = dict(
            steps=args.steps, batch=args.batch, tile=args.tile, workers=workers, torch_threads=torch.get_num_threads(),
            cores=os.cpu_count(), seconds_loader=best["loader"], seconds_in_memory=best["in_memory"],
            ratio=best["loader"] / best["in_memory"], all_runs=results,
        )
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/loader.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"{args.steps} steps, batch {args.batch}x{store.meta.bands}x{args.tile}x{args.tile}, unet, "
          f"{out['torch_threads']} torch thread(s), {workers} loader worker(s)")
    print(f"  loader    {best['loader']:.3f} s")
    print(f"  in memory {best['in_memory']:.3f} s")
    print(f"  ratio     {out['ratio']:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
