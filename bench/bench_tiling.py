"""Streaming tiling of a large scene vs. simply decoding the file block by block (the physical limit).

Goal (issue #5): `build_tile_store` on a 16,000 x 16,000 x 3 uint8 tiled, deflate-compressed GeoTIFF with vector
labels, at 256-px tiles, runs at least at half the speed of decoding every block of the file once with rasterio,
with peak memory (RSS) under 1 GiB. Run from the repository root:

    .venv/bin/python bench/bench_tiling.py [--size 16000] [--repeats 3] [--work /tmp/eqseg-bench]

The synthetic scene and its labels are generated once into --work (not in git). Each measurement runs in a fresh
subprocess, so its peak RSS (ru_maxrss) is its own; both are repeated and the best time of each is kept, because
other jobs may load the CPU. Writes bench/results/tiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CRS = "EPSG:32633"
BLOCK = 256


def make_scene(path: Path, size: int, bands: int = 3, seed: int = 0) -> None:
    """A smooth landscape plus noise (compresses like imagery, unlike pure noise), written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    x = np.arange(size, dtype=np.float32)
    prof = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs=CRS, nodata=0,
                transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                compress="deflate", predictor=2, bigtiff="YES", num_threads="ALL_CPUS")
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **prof) as ds:
        for r in range(0, size, BLOCK):
            y = np.arange(r, min(r + BLOCK, size), dtype=np.float32)[:, None]
            base = 120 + 50 * np.sin(x / 311.0) * np.cos(y / 419.0) + 30 * np.sin((x + 2 * y) / 97.0)
            strip = np.stack([base + 15 * b for b in range(bands)])
            strip += rng.normal(0, 6, strip.shape).astype(np.float32)
            ds.write(np.clip(strip, 1, 255).astype(np.uint8), window=Window(0, r, size, len(y)))
    os.replace(tmp, path)


def make_labels(path: Path, size: int, n: int = 2000, seed: int = 0) -> None:
    """Random rotated rectangles with a class field 1..3, in the scene's CRS."""
    import geopandas as gpd
    from shapely import affinity
    from shapely.geometry import box

    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(n):
        cx, cy = 500000 + rng.uniform(0, size * 0.5), 5000000 - rng.uniform(0, size * 0.5)
        w, h = rng.uniform(5, 60, 2)
        geoms.append(affinity.rotate(box(cx - w, cy - h, cx + w, cy + h), rng.uniform(0, 90)))
    gpd.GeoDataFrame({"cls": rng.integers(1, 4, n)}, geometry=geoms, crs=CRS).to_file(path)


def ensure_inputs(work: Path, size: int) -> tuple[Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    scene, labels = work / f"scene_{size}.tif", work / f"labels_{size}.gpkg"
    if not scene.exists():
        t0 = time.perf_counter()
        make_scene(scene, size)
        print(f"generated {scene} ({scene.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s", flush=True)
    if not labels.exists():
        make_labels(labels, size)
    return scene, labels


# --------------------------------------------------------------------------------------------- measured in children
def decode_blocks(scene: Path) -> dict:
    """The physical limit: every block decoded once, one rasterio read per block, nothing else done."""
    import rasterio

    n = 0
    with rasterio.open(scene) as ds:
        for _, win in ds.block_windows(1):
            n += int(ds.read(window=win).shape[-1] > 0)
    return dict(blocks=n)


def tile_scene(scene: Path, labels: Path, tile: int) -> dict:
    from eqseg.config import GeoTiffDataset, Scene, SplitConfig, TileConfig
    from eqseg.tiling.store import build_tile_store

    cfg = GeoTiffDataset(kind="geotiff", classes=["bg", "a", "b", "c"], class_field="cls",
                         scenes=[Scene(raster=str(scene), labels=str(labels))], split=SplitConfig(by="block", block_size=2048))
    with tempfile.TemporaryDirectory(dir=scene.parent) as tmp:
        meta = build_tile_store("bench", cfg, TileConfig(size=tile, min_valid_fraction=0.01), Path(tmp) / "tiles")
    return dict(tiles=meta["n_tiles"], splits=meta["splits"])


def child(kind: str, scene: Path, labels: Path, tile: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    out = decode_blocks(scene) if kind == "decode" else tile_scene(scene, labels, tile)
    out |= dict(seconds=time.perf_counter() - t0, peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


def measure(kind: str, scene: Path, labels: Path, tile: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--scene", str(scene), "--labels", str(labels),
                           "--tile", str(tile)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16000)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eqseg-bench")
    ap.add_argument("--child", choices=["decode", "tile"])
    ap.add_argument("--scene", type=Path)
    ap.add_argument("--labels", type=Path)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.scene, args.labels, args.tile)
    scene, labels = ensure_inputs(args.work, args.size)
    runs = {"decode": [], "tile": []}
    for i in range(args.repeats):
        for kind in runs:  # interleaved, so that a burst of load from other jobs hits both
            runs[kind].append(measure(kind, scene, labels, args.tile))
            print(f"run {i + 1} {kind}: {runs[kind][-1]}", flush=True)
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    result = dict(
        size=args.size, tile=args.tile, cores=os.cpu_count(), scene_mib=scene.stat().st_size / 2**20,
        decode_best_s=best["decode"]["seconds"], tile_best_s=best["tile"]["seconds"],
        speed_ratio=best["decode"]["seconds"] / best["tile"]["seconds"],
        tile_peak_rss_mib=max(r["peak_rss_mib"] for r in runs["tile"]),
        decode_peak_rss_mib=max(r["peak_rss_mib"] for r in runs["decode"]),
        tiles=best["tile"]["tiles"], runs=runs,
    )
    out = Path(__file__).parent / "results" / "tiling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"decode {result['decode_best_s']:.1f}s, tile {result['tile_best_s']:.1f}s: tiling at "
          f"{result['speed_ratio']:.2f}x the decoding speed (goal >= 0.5); peak RSS {result['tile_peak_rss_mib']:.0f} MiB (goal < 1024)")


if __name__ == "__main__":
    main()
