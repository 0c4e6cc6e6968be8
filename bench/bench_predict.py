"""`eqseg predict` on a large scene: peak memory, and the share of time spent outside the model's forward passes.

Goal (issue #5): predicting a 20,000 x 20,000 x 3 scene keeps peak RSS under 2 GiB, and the time outside the forward
passes (reading, normalising, blending, scoring, writing) is under 20 % of the total. The model is the default
`unet` (depth 3, width 16) with untrained weights. Run from the repository root:

    .venv/bin/python bench/bench_predict.py [--size 20000] [--window 512] [--overlap 32] [--work /tmp/eqseg-bench]

The scene and its labels are generated once into --work (the generator of bench_tiling.py); the prediction runs in a
fresh subprocess so that its peak RSS is its own. Writes bench/results/predict_<size>.json.
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

sys.path.insert(0, str(Path(__file__).parent))
from bench_tiling import ensure_inputs  # noqa: E402


def save_untrained(model_dir: Path, tile: int) -> None:
    import torch

    from eqseg.models.checkpoint import ModelInfo, save_model
    from eqseg.models import build

    torch.manual_seed(0)
    model = build("unet", 3, 4, depth=3, width=16)
    info = dict(model="unet", options={"depth": 3, "width": 16}, in_channels=3, num_classes=4, classes=["bg", "a", "b", "c"],
                band_mean=[120.0, 135.0, 150.0], band_std=[40.0, 40.0, 40.0], tile_size=tile, dataset="bench",
                supervision="full", seed=0)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model(model_dir / "model.pt", model, ModelInfo(**info))


def child(scene: Path, labels: Path, window: int, overlap: int, batch: int) -> None:
    from eqseg.config import parse_params
    from eqseg.predict.run import predict

    params = parse_params(dict(
        datasets={"bench": dict(kind="geotiff", classes=["bg", "a", "b", "c"], class_field="cls",
                                scenes=[dict(raster=str(scene), labels=str(labels))])},
        models={"unet": {"depth": 3, "width": 16}}, grid={"datasets": ["bench"], "models": ["unet"]},
        predict=dict(window=window, overlap=overlap, batch_size=batch, device="cpu"),
    ))
    with tempfile.TemporaryDirectory(dir=scene.parent) as tmp:
        save_untrained(Path(tmp) / "model", window)
        t0 = time.perf_counter()
        m = predict(params, Path(tmp) / "model", Path(tmp) / "pred.tif", dataset="bench", source=scene.stem)
        wall = time.perf_counter() - t0
        size_mib = (Path(tmp) / "pred.tif").stat().st_size / 2**20
    print(json.dumps(dict(m["timing"], wall_seconds=wall, output_mib=size_mib, scene_pixels=m["scene"]["pixels"],
                          peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eqseg-bench")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--scene", type=Path)
    ap.add_argument("--labels", type=Path)
    args = ap.parse_args()
    if args.child:
        return child(args.scene, args.labels, args.window, args.overlap, args.batch)
    scene, labels = ensure_inputs(args.work, args.size)
    proc = subprocess.run([sys.executable, __file__, "--child", "--scene", str(scene), "--labels", str(labels),
                           "--window", str(args.window), "--overlap", str(args.overlap), "--batch", str(args.batch)],
                          capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    result = dict(size=args.size, window=args.window, overlap=args.overlap, batch=args.batch, cores=os.cpu_count(), **run,
                  outside_forward_share=1 - run["forward_share"])
    out = Path(__file__).parent / "results" / f"predict_{args.size}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.size}^2: {run['total_seconds']:.0f}s, {run['windows']} windows, outside forward "
          f"{100 * result['outside_forward_share']:.1f}% (goal < 20%), peak RSS {run['peak_rss_mib']:.0f} MiB (goal < 2048)")


if __name__ == "__main__":
    main()
