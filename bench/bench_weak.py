"""Benchmark of weak-label generation over a tile set, through `make_weak_labels` as the pipeline calls it.

1,000 tiles of 256x256 cut from the CPM-15 nucleus masks (overlapping crops under the 8 D4 transforms, so every
tile holds real nuclei), every kind generated over all of them; then each expansion on a smaller subset.
Exit status 1 when generating every kind takes longer than the budget.

    /work/main/.venv/bin/python bench/bench_weak.py [--tiles 1000] [--expansion-tiles 50] [--budget 30]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from eqseg.weak.store import make_weak_labels

CPM = Path(__file__).resolve().parents[1] / "data" / "cpm15"
SIZE, STRIDE = 256, 128
KINDS = {"points": {}, "scribbles": {}, "boxes": {}, "coarse": {}, "tags": {"num_classes": 2}, "partial": {"fraction": 0.1}}
EXPANSIONS = {
    ("points", "region_growing"): {}, ("points", "watershed"): {}, ("points", "superpixels"): {},
    ("scribbles", "superpixels"): {"algorithm": "felzenszwalb"}, ("boxes", "kmeans"): {},
}


def cpm_tiles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n (image, mask) tiles: crops with stride 128 of every CPM-15 pair, each under the 8 D4 transforms."""
    images, masks = [], []
    for path in sorted((CPM / "images").glob("*.png")):
        image = np.asarray(Image.open(path)).transpose(2, 0, 1)
        mask = (np.asarray(Image.open(CPM / "masks" / f"{path.stem}_mask.png")) > 0).astype(np.uint8)
        for r in range(0, mask.shape[0] - SIZE + 1, STRIDE):
            for c in range(0, mask.shape[1] - SIZE + 1, STRIDE):
                images.append(image[:, r : r + SIZE, c : c + SIZE])
                masks.append(mask[r : r + SIZE, c : c + SIZE])
    images, masks = np.stack(images), np.stack(masks)
    turned = [(np.rot90(images[:, :, ::f or 1], g % 4, axes=(2, 3)), np.rot90(masks[:, :, ::f or 1], g % 4, axes=(1, 2)))
              for g, f in ((g, -1 if g >= 4 else 0) for g in range(8))]
    images = np.concatenate([t[0] for t in turned])[:n]
    masks = np.concatenate([t[1] for t in turned])[:n]
    if len(masks) < n:
        raise SystemExit(f"only {len(masks)} tiles can be cut from {CPM}; ask for fewer with --tiles")
    return np.ascontiguousarray(images), np.ascontiguousarray(masks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--expansion-tiles", type=int, default=50)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds allowed for generating every kind")
    args = parser.parse_args()
    images, masks = cpm_tiles(args.tiles)
    ids = np.arange(len(masks))
    print(f"# {len(masks)} tiles {SIZE}x{SIZE} from CPM-15, {masks.mean():.1%} nucleus pixels; "
          f"python {platform.python_version()}, {platform.machine()}")
    print(f"{'kind':<10} {'seconds':>8} {'ms/tile':>8} {'labelled':>9} {'precision':>9} {'effort/tile':>12}")
    total = 0.0
    for kind, options in KINDS.items():
        start = time.perf_counter()
        _, q = make_weak_labels(images, masks, ids, kind, 0, options)
        seconds = time.perf_counter() - start
        total += seconds
        precision = "-" if q["precision"] is None else f"{q['precision']:.4f}"
        print(f"{kind:<10} {seconds:8.2f} {1000 * seconds / len(ids):8.2f} {q['labelled_fraction']:9.4f} {precision:>9} "
              f"{q['effort']['per_tile']:8.1f} {q['effort']['unit']}")
    print(f"{'all kinds':<10} {total:8.2f} {1000 * total / len(ids):8.2f}   (budget {args.budget:.0f} s)")

    subset = ids[: args.expansion_tiles]
    print(f"\n{'expansion':<28} {'ms/tile':>8} {'labelled':>9} {'precision':>9}   ({len(subset)} tiles)")
    for (kind, method), options in EXPANSIONS.items():
        start = time.perf_counter()
        _, q = make_weak_labels(images, masks, subset, kind, 0, {}, method, options)
        seconds = time.perf_counter() - start
        e = q["expansion"]
        print(f"{kind + ' + ' + method:<28} {1000 * seconds / len(subset):8.1f} "
              f"{q['labelled_fraction']:.4f}->{e['labelled_fraction']:.4f} {q['precision']:.3f}->{e['precision']:.3f}")
    return 0 if total <= args.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
