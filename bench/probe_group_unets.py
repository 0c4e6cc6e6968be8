"""Do the group U-Nets learn at the channel-matched width? Train and test U-Net variants on tile stores.

Every run goes through the library's own `eqseg.train.loop.train` and `eqseg.evaluate.run.evaluate` (full labels,
`params.yaml`'s training settings with the overrides below, no MLflow), then prints and appends one JSON line:
test mIoU (macro), IoU of the last class (the foreground of the bundled datasets), parameters and MACs per tile.

A model is named as in params.yaml, optionally with GUNet constructor options after a colon, to compare head and
field-allocation variants of `p4_unet`/`p4m_unet` without touching the configuration, e.g.

    p4m_unet                                   # the registered default (head: 16 fields, mean+max pooling)
    p4m_unet:head_fields=2,pool=max            # the head before issue 10 at width 16 (2 fields, max pooling)
    p4m_unet:min_fields=4                      # 4 fields at full resolution (about 1.7x the MACs)

Runs whose output folder already holds a trained model are only re-evaluated.

Tile stores and full labels are built once with `eqseg tile` / `eqseg weak` (see bench/README.md). Example:

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_group_unets.py --dataset spacenet_atlanta \\
        --tiles /tmp/gu/tiles/spacenet_atlanta --labels /tmp/gu/weak/spacenet_atlanta/full \\
        --models unet p4_unet p4m_unet --loss ce --epochs 12 --tiles-per-epoch 256 --out /tmp/gu/runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from eqseg.config import parse_params
from eqseg.evaluate.run import evaluate
from eqseg.models import _REGISTRY, _load_builtin, build, count_macs, count_parameters
from eqseg.models.groups import P4, P4M
from eqseg.models.gunet import GUNet, build_gunet
from eqseg.train.loop import Observer, train

LOSSES = {"ce": {"ce": 1.0}, "ce+lovasz": {"ce": 1.0, "lovasz": 1.0}}


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = None if value == "none" else int(value) if value.isdigit() else value
    return name, options


def install_variant(name: str, variant: dict) -> None:
    """Make `name` build a GUNet with `variant`'s constructor options (in this process only)."""
    _load_builtin()
    if not variant:
        return
    group = {"p4_unet": P4, "p4m_unet": P4M}[name]

    def builder(in_channels, num_classes, depth=3, width=16, match="channels"):
        fields = build_gunet(group, in_channels, num_classes, depth, width, match).fields
        return GUNet(group, in_channels, num_classes, depth, fields, **variant)

    _REGISTRY[name] = builder


def run_one(args, spec: str, loss: str) -> dict:
    name, variant = parse_variant(spec)
    install_variant(name, variant)
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["train"].update(epochs=args.epochs, tiles_per_epoch=args.tiles_per_epoch, loss=LOSSES[loss], threads=1,
                        num_workers=0, device="cpu")
    raw["evaluate"].update(device="cpu", n_preview=1)
    params = parse_params(raw, args.params)
    tag = f"{args.dataset}-{spec.replace(':', '-').replace(',', '-').replace('=', '')}-{loss}-e{args.epochs}x{args.tiles_per_epoch}"
    out = Path(args.out) / tag
    if (out / "model" / "model.pt").is_file():  # trained by an earlier call (same tag = same settings)
        summary = json.loads((out / "model" / "config.json").read_text())["summary"]
    else:
        summary = train(params, args.dataset, name, "full", args.seed, Path(args.tiles), Path(args.labels),
                        out / "model", observer=Observer())
    seconds = summary["train_seconds"]
    (out / "model" / "run.json").unlink(missing_ok=True)  # no MLflow run behind it: evaluate must not log
    metrics = evaluate(params, out / "model", Path(args.tiles), out / "eval")
    classes = json.loads((Path(args.tiles) / "meta.json").read_text())["classes"]
    fg = classes[-1]
    options = params.model_options(name)
    in_ch = json.loads((Path(args.tiles) / "meta.json").read_text())["bands"]
    model = build(name, in_ch, len(classes), **options)
    row = dict(dataset=args.dataset, model=spec, loss=loss, epochs=args.epochs, tiles_per_epoch=args.tiles_per_epoch,
               seed=args.seed, miou=metrics["miou_macro"], iou_fg=metrics[f"iou_{fg}"], ap_fg=metrics[f"ap_{fg}"], best_epoch=summary["best_epoch"],
               best_val_miou=summary["best_val_miou"], final_train_loss=summary["final_train_loss"],
               params=count_parameters(model), macs_per_tile=count_macs(model, in_ch, 128),
               equivariance_error_max=metrics.get("equivariance_error_max"), train_seconds=round(seconds, 1))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--tiles", required=True)
    p.add_argument("--labels", required=True, help="output of `eqseg weak DATASET full`")
    p.add_argument("--models", nargs="+", required=True, help="NAME or NAME:option=value,... (GUNet options)")
    p.add_argument("--loss", nargs="+", default=["ce"], choices=sorted(LOSSES))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--tiles-per-epoch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--results", default="bench/results/probe_group_unets.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    for loss in args.loss:
        for spec in args.models:
            row = run_one(args, spec, loss)
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
