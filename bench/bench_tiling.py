"""Streaming tiling of a large scene vs. simply decoding the file block by block (the physical limit).

Goal (issue #9, after #5): `build_tile_store` on a 16,000 x 16,000 x 3 uint8 tiled, deflate-compressed GeoTIFF with
vector labels, at 256-px tiles, runs at least at 0.85x the speed of decoding every block of the file once with
rasterio on one thread, with peak memory (RSS) under 1 GiB. Run from the repository root:

    .venv/bin/python bench/bench_tiling.py [--size 16000] [--repeats 5] [--work /tmp/eqseg-bench]

The synthetic scene and its labels are generated once into --work (not in git). Each measurement runs in a fresh
subprocess, so its peak RSS (ru_maxrss) and CPU time are its own; the two kinds alternate and the best time of each
is kept, because other jobs may load the CPU (the load average is recorded beside every run). Imports are inside
the timed part of both. Writes bench/results/tiling.json.

    .venv/bin/python bench/bench_tiling.py --slide-readers SLIDE.ome.tif

compares region reading of a pyramidal TIFF by eqseg's PyramidTiff, by tifffile's aszarr + zarr and by tiffslide, on
the access pattern of tiling (row by row, 128- and 256-px tiles); it needs zarr and tiffslide, which eqseg does not
depend on: install them into a scratch environment (see bench/README.md).
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
    meta = meta if isinstance(meta, dict) else meta.model_dump()  # a dict before StoreMeta (--baseline-src)
    return dict(tiles=meta["n_tiles"], splits=meta["splits"])


def child(kind: str, scene: Path, labels: Path, tile: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    out = decode_blocks(scene) if kind == "decode" else tile_scene(scene, labels, tile)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out |= dict(seconds=time.perf_counter() - t0, cpu_seconds=usage.ru_utime + usage.ru_stime, peak_rss_mib=usage.ru_maxrss / 1024)
    print(json.dumps(out))


def measure(kind: str, scene: Path, labels: Path, tile: int, src: Path | None = None) -> dict:
    """One run in a fresh interpreter; with `src`, eqseg is imported from that source tree (an older version)."""
    load = os.getloadavg()[0]
    env = os.environ | ({"PYTHONPATH": str(src)} if src else {})
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--scene", str(scene), "--labels", str(labels),
                           "--tile", str(tile)], capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1]) | dict(load_before=load, load_after=os.getloadavg()[0])


# --------------------------------------------------------------------------------------------- slide readers
def slide_readers(path: Path, repeats: int) -> None:
    """Read every tile of a level, row by row, with three readers; best of `repeats`, alternating; pixels compared."""
    import numpy as np
    import tifffile

    try:
        import tiffslide
        import zarr
    except ImportError as err:
        sys.exit(f"--slide-readers needs zarr and tiffslide ({err}); see bench/README.md")
    from eqseg.slides.tiff import PyramidTiff

    def ours(level, tile):
        s = PyramidTiff(path)
        lv = s.levels[level]
        out = [s.read(level, r, c, min(tile, lv.height - r), min(tile, lv.width - c))
               for r in range(0, lv.height, tile) for c in range(0, lv.width, tile)]
        s.close()
        return out

    def with_zarr(level, tile):
        with tifffile.TiffFile(path) as t:
            z = zarr.open(t.aszarr(level=level), mode="r")
            return [np.moveaxis(z[r : r + tile, c : c + tile], -1, 0) for r in range(0, z.shape[0], tile) for c in range(0, z.shape[1], tile)]

    def with_tiffslide(level, tile):
        s = tiffslide.TiffSlide(path)
        (w, h), d = s.level_dimensions[level], s.level_downsamples[level]
        out = [np.moveaxis(s.read_region((round(c * d), round(r * d)), level, (min(tile, w - c), min(tile, h - r)), as_array=True), -1, 0)
               for r in range(0, h, tile) for c in range(0, w, tile)]
        s.close()
        return out

    readers = {"PyramidTiff": ours, "tifffile aszarr + zarr": with_zarr, "tiffslide": with_tiffslide}
    print(f"{path.name}; zarr {zarr.__version__}, tiffslide {tiffslide.__version__}, tifffile {tifffile.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for level, tile in ((0, 128), (1, 128), (0, 256)):
        best, first = {}, {}
        for _ in range(repeats):
            for name, read in readers.items():
                t0 = time.perf_counter()
                out = read(level, tile)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
                first.setdefault(name, out)
        ref = first["PyramidTiff"]
        same = all(all(np.array_equal(a, b) for a, b in zip(ref, o)) for o in first.values())
        print(f"level {level}, {tile}-px tiles ({len(ref)} reads): " + ", ".join(f"{n} {t:.2f} s" for n, t in best.items())
              + f"; same pixels: {same}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16000)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eqseg-bench")
    ap.add_argument("--child", choices=["decode", "tile"])
    ap.add_argument("--scene", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="also time the tile store of another eqseg source tree (e.g. `git archive HEAD src | tar -x -C DIR`, DIR/src), alternating")
    ap.add_argument("--slide-readers", type=Path, metavar="SLIDE", help="compare slide region readers on this file instead")
    args = ap.parse_args()
    if args.slide_readers:
        return slide_readers(args.slide_readers, args.repeats)
    if args.child:
        return child(args.child, args.scene, args.labels, args.tile)
    scene, labels = ensure_inputs(args.work, args.size)
    runs = {"decode": [], "tile": []} | ({"tile_baseline": []} if args.baseline_src else {})
    for i in range(args.repeats):
        for kind in runs:  # interleaved, so that a burst of load from other jobs hits both
            src = args.baseline_src if kind == "tile_baseline" else None
            runs[kind].append(measure(kind.removesuffix("_baseline"), scene, labels, args.tile, src))
            print(f"run {i + 1} {kind}: {runs[kind][-1]}", flush=True)
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    median = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items()}
    result = dict(
        size=args.size, tile=args.tile, cores=os.cpu_count(), scene_mib=scene.stat().st_size / 2**20,
        decode_best_s=best["decode"]["seconds"], tile_best_s=best["tile"]["seconds"],
        speed_ratio=best["decode"]["seconds"] / best["tile"]["seconds"],
        median_s=median, median_speed_ratio=median["decode"] / median["tile"],
        tile_peak_rss_mib=max(r["peak_rss_mib"] for r in runs["tile"]),
        decode_peak_rss_mib=max(r["peak_rss_mib"] for r in runs["decode"]),
        baseline_tile_best_s=best["tile_baseline"]["seconds"] if args.baseline_src else None,
        baseline_speed_ratio=best["decode"]["seconds"] / best["tile_baseline"]["seconds"] if args.baseline_src else None,
        tiles=best["tile"]["tiles"], load_average=[r[k] for v in runs.values() for r in v for k in ("load_before", "load_after")],
        runs=runs,
    )
    out = Path(__file__).parent / "results" / "tiling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"decode {result['decode_best_s']:.1f}s, tile {result['tile_best_s']:.1f}s: tiling at "
          f"{result['speed_ratio']:.2f}x the decoding speed (goal >= 0.85; medians: {result['median_speed_ratio']:.2f}x); peak RSS {result['tile_peak_rss_mib']:.0f} MiB "
          f"(goal < 1024); load average {min(result['load_average']):.1f}-{max(result['load_average']):.1f}")
    if args.baseline_src:
        print(f"baseline ({args.baseline_src}): tile {result['baseline_tile_best_s']:.1f}s, {result['baseline_speed_ratio']:.2f}x")


if __name__ == "__main__":
    main()
