"""The `eqseg` command: a thin layer over importable functions; Snakemake rules and DVC stages only call this.

Every failure the user can fix ends as one line `eqseg <command>: error: <what, where>` and exit status 2.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from pathlib import Path

import click

from eqseg import paths
from eqseg.errors import EqsegError

params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The configuration file.",
)


def _load(path: Path):
    from eqseg.config import load_params

    return load_params(path)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """eqseg: equivariant vs. ordinary CNNs for segmentation of satellite scenes and pathology slides."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("matplotlib", "PIL", "rasterio", "fiona", "pyogrio", "urllib3", "git", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@params_option
def check(params_path: Path) -> None:
    """Validate the configuration and print the experiment grid."""
    p = _load(params_path)
    g = p.grid
    click.echo(f"{params_path}: ok; grid {len(g.datasets)} datasets x {len(g.models)} models x "
               f"{len(g.supervision)} supervision x {len(g.variants)} variants x {len(g.budgets)} budgets x "
               f"{len(g.seeds)} seeds = {len(p.cells())} trainings, {len(p.evaluations())} evaluations")


@cli.command()
@click.argument("dataset")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
def tile(dataset: str, params_path: Path, out: Path | None) -> None:
    """Tile a dataset's sources into the tile store (arrays + GeoParquet index + meta.json)."""
    from eqseg.tiling.store import build_tile_store

    p = _load(params_path)
    meta = build_tile_store(dataset, p.dataset(dataset), p.tile, out or Path(paths.TILES.format(dataset=dataset)))
    click.echo(f"{dataset}: {meta.n_tiles} tiles {meta.splits}")


@cli.command()
@click.argument("dataset")
@click.argument("supervision")
@params_option
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def weak(dataset: str, supervision: str, params_path: Path, tiles: Path | None, out: Path) -> None:
    """Make the train labels of one supervision (full, points, scribbles+superpixels, ...) with their quality record."""
    from eqseg.weak.stage import make_weak_stage

    p = _load(params_path)
    p.dataset(dataset)
    if p.supervision(supervision).distill:
        raise EqsegError(f"weak: {supervision!r} labels come from its teacher: `eqseg distill` (after training the "
                         f"{supervision.removesuffix('+distill')} cell)")
    q = make_weak_stage(p, dataset, p.supervision(supervision), tiles or Path(paths.TILES.format(dataset=dataset)), out)
    precision = "-" if q.get("precision") is None else f"{q['precision']:.3f}"
    click.echo(f"{dataset}/{supervision}: labelled fraction {q['labelled_fraction']:.4f}, precision {precision}")


@cli.command()
@params_option
@click.option("--dataset", required=True)
@click.option("--model", "model_name", required=True)
@click.option("--supervision", default="full", show_default=True)
@click.option("--variant", type=click.Choice(["none", "d4", "consistency"]), default="d4", show_default=True,
              help="none, d4 augmentation, or the consistency loss (equivariance by constraint).")
@click.option("--budget", type=click.IntRange(1, 100), default=100, show_default=True,
              help="Percent of the train tiles (a nested seeded subset).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
@click.option("--labels", type=click.Path(file_okay=False, path_type=Path), help="Output of `eqseg weak` (default: results/weak/DATASET/SUPERVISION) or, for NAME+distill, of "
              "`eqseg distill` (default: results/pseudo/<the NAME cell>).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def train(params_path, dataset, model_name, supervision, variant, budget, seed, tiles, labels, out) -> None:
    """Train one model (one cell of the grid); resumes from its checkpoint after a kill."""
    import os

    from eqseg.train import distributed
    from eqseg.train.loop import train as run

    p = _load(params_path)
    p.dataset(dataset)
    if p.train.nproc > 1 and not os.environ.get(distributed.LAUNCHED):
        distributed.check_devices(p.train.nproc, p.train.device)
        sys.exit(distributed.relaunch(p.train.nproc, sys.argv[1:]))
    tiles = tiles or Path(paths.TILES.format(dataset=dataset))
    if labels is None:
        sup = p.supervision(supervision)
        cell = dict(dataset=dataset, model=model_name, supervision=sup.parent, variant=variant, budget=budget, seed=seed)
        labels = Path(paths.PSEUDO.format(**cell) if sup.distill else paths.WEAK.format(dataset=dataset, supervision=supervision))
    summary = run(p, dataset, model_name, supervision, seed, tiles, labels, out, variant=variant, budget=budget)
    if summary:  # rank 0 (or the only process)
        click.echo(f"{out}: best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']}")


@cli.command()
@params_option
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The teacher: a trained cell of a weak supervision.")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--labels", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The teacher's labels (output of `eqseg weak`); they stay in the student's labels.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def distill(params_path, model_dir, tiles, labels, out) -> None:
    """Pseudo-label a teacher's train tiles for its NAME+distill student (data distillation: D4-averaged, confident)."""
    from eqseg.distill.stage import make_pseudo_stage

    q = make_pseudo_stage(_load(params_path), model_dir, tiles, labels, out)
    d = q["distill"]
    click.echo(f"{out}: {d['unlabelled_tiles']} unlabelled + {d['labelled_tiles']} labelled tiles; teacher labelled "
               f"{d['kept_fraction']:.3f} of the open pixels (precision {d['pseudo_precision'] or float('nan'):.3f}); "
               f"labelled fraction now {q['labelled_fraction']:.3f}")


@cli.command()
@params_option
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def evaluate(params_path, model_dir, tiles, out) -> None:
    """Evaluate a trained model on the test split: metrics.json, confusion and prediction plots."""
    from eqseg.evaluate.run import evaluate as run

    metrics = run(_load(params_path), model_dir, tiles, out)
    click.echo(f"{out}: test mIoU {metrics['miou_macro']:.4f}, fwIoU {metrics['fwiou']:.4f}")


@cli.command()
@params_option
@click.option("--entry", help="Name of a `compare:` entry of the params file (gives the models, tiles and output).")
@click.option("--model-a", type=click.Path(file_okay=False, path_type=Path), help="A trained model folder.")
@click.option("--model-b", type=click.Path(file_okay=False, path_type=Path), help="Another (e.g. p4m_unet, or unet of another seed).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="Tile store whose test tiles both see.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--max-tiles", type=int, default=64, show_default=True, help="Test tiles used (a seeded sample).")
def compare(params_path, entry, model_a, model_b, tiles, out, max_tiles) -> None:
    """Compare what two trained models learned: layer x layer CKA and per-layer D4 invariance (CSV and plots)."""
    from eqseg.compare.run import compare as run

    p = _load(params_path)
    if entry:
        found = [c for c in p.compare if c.name == entry]
        if not found:
            raise EqsegError(f"params: no compare entry {entry!r} (defined: {[c.name for c in p.compare]})")
        c = found[0]
        model_a, model_b = Path(paths.MODEL.format(**c.cell("a"))), Path(paths.MODEL.format(**c.cell("b")))
        tiles, out = Path(paths.TILES.format(dataset=c.dataset)), out or Path(paths.COMPARE.format(dataset=c.dataset, name=c.name))
        max_tiles = c.max_tiles
    if not (model_a and model_b and tiles and out):
        raise EqsegError("compare: give --entry NAME, or --model-a, --model-b, --tiles and --out")
    s = run(p, model_a, model_b, tiles, out, max_tiles)
    diagonal = (f"mean diagonal {s['cka_diagonal_mean']:.3f}" if s["cka_diagonal_mean"] is not None
                else f"mean diagonal undefined ({s['cka_diagonal_mean_undefined']})")
    click.echo(f"{out}: CKA on {s['examples']} test tiles, {diagonal}")


@cli.command()
@params_option
@click.option("--model", "model_name", type=click.Choice(["cnn", "p4cnn"]), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def digits(params_path: Path, model_name: str, seed: int, out: Path) -> None:
    """Rotated-digits check: train on upright MNIST digits, test upright and rotated (metrics.json, MLflow run)."""
    import torch

    from eqseg import tracking
    from eqseg.digits import run
    from eqseg.utils.atomic import atomic_dir

    started = time.time()  # the MLflow run, started after the work, spans it
    p = _load(params_path)
    cfg = p.digits
    torch.set_num_threads(cfg.threads)
    with atomic_dir(out) as tmp:
        metrics = run(tmp, model=model_name, epochs=cfg.epochs, seed=seed, n_train=cfg.n_train, device=cfg.device)
    from eqseg.config import stable_hash

    tracking.start_cell_run(p.mlflow, dict(stage="digits", dataset="mnist5k", model=model_name, seed=seed),
                            stable_hash(cfg.model_dump()), run_name=f"digits/{model_name}/seed{seed}",
                            tags={"stage": "digits", "dataset": "mnist5k", "model": model_name, "seed": str(seed)},
                            start_time=started)
    tracking.log_params({"digits": cfg.model_dump(exclude={"models", "seeds"}), "model": model_name, "seed": seed})
    tracking.log_metrics({k: v for k, v in metrics.items() if k.startswith(("acc_", "n_params"))})
    tracking.log_artifacts([out / "metrics.json"])
    tracking.end_run()
    accs = ", ".join(f"{k[4:]} {v:.3f}" for k, v in metrics.items() if k.startswith("acc_"))
    click.echo(f"digits {model_name} seed {seed}: {accs}")


@cli.command()
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path(paths.REPORT), show_default=True)
@click.option("--partial", is_flag=True, help="Report the evaluations done so far (a long run's progress), say which are "
              "missing, instead of refusing to start.")
def report(params_path: Path, out: Path, partial: bool) -> None:
    """The study's tables and plots over the grid (report.md, cells.csv/.parquet, summary.csv, plots)."""
    from eqseg.report import report as run

    run(_load(params_path), out, partial=partial)
    click.echo((out / "report.md").read_text(), nl=False)


@cli.command()
@params_option
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--dataset", help="Dataset of the source (its labels give the scene metrics).")
@click.option("--source", "source_name", help="Source name: the scene raster's or slide's file stem, or the image stem.")
@click.option("--raster", type=click.Path(dir_okay=False, path_type=Path), help="Any GeoTIFF instead (no labels, no metrics).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="The dataset's tile store: also score the test tiles alone.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Class map GeoTIFF.")
@click.option("--metrics", "metrics_out", type=click.Path(dir_okay=False, path_type=Path), help="Default: OUT with .json.")
def predict(params_path, model_dir, dataset, source_name, raster, tiles, out, metrics_out) -> None:
    """Predict a whole scene or slide with overlapping windows into a tiled GeoTIFF, and score it."""
    from eqseg.predict.run import predict as run

    m = run(_load(params_path), model_dir, out, dataset, source_name, raster, tiles, metrics_out)
    score = f", scene mIoU {m['scene']['miou_macro']:.4f}" if "scene" in m else ""
    click.echo(f"{out}: {m['height']}x{m['width']}{score}, model forward {100 * (m['timing']['forward_share'] or 0):.0f}% "
               f"of {m['timing']['total_seconds']:.1f}s")


@cli.command("predict-dataset")
@params_option
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--dataset", required=True)
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder of {source}.tif.")
def predict_dataset(params_path, model_dir, dataset, tiles, out) -> None:
    """Predict every test source of a dataset (every scene when split by block) as stitched GeoTIFFs, and score them."""
    from eqseg.predict.run import predict_dataset as run

    r = run(_load(params_path), model_dir, dataset, tiles or Path(paths.TILES.format(dataset=dataset)), out)
    scene = r["pooled"].get("scene", {}).get("miou_macro", float("nan"))
    click.echo(f"{out}: {len(r['sources'])} sources, scene mIoU {scene:.4f}")


@cli.command("make-slide")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--masks", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--mask-suffix", default="", show_default=True)
@click.option("--mask-mode", type=click.Choice(["instances", "classes"]), default="instances", show_default=True)
@click.option("--include", multiple=True, help="Glob on image file names (repeatable); default: all images.")
@click.option("--mpp", type=float, required=True, help="Microns per pixel of the slide (0.25 for 40x, 0.5 for 20x).")
@click.option("--source-mpp", type=float, help="Microns per pixel of the tiles, if not --mpp (they are resampled).")
@click.option("--columns", type=int, default=4, show_default=True)
@click.option("--margin", type=int, default=256, show_default=True, help="Blank pixels around every tile.")
@click.option("--cell", type=int, help="Place each tile in its own cell of a uniform grid of this many pixels.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--mask-out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def make_slide(images, masks, mask_suffix, mask_mode, include, mpp, source_mpp, columns, margin, cell, out, mask_out) -> None:
    """Assemble image tiles and masks into a pyramidal tiled TIFF slide (OME, with its pixel size) and its mask."""
    from eqseg.slides.make import make_slide as run

    placed = run(images, masks, out, mask_out, mpp, source_mpp, mask_suffix, mask_mode, tuple(include), columns, margin, cell)
    click.echo(f"{out}: {len(placed)} tiles at {mpp} um/px; mask {mask_out}")


@cli.command("make-slides")
@click.argument("group")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: data/GROUP.")
def make_slides(group, params_path: Path, out: Path | None) -> None:
    """Build the slides of the `slides.GROUP` entry of the params file (the `slides` stage before tiling)."""
    from eqseg.slides.make import make_slide_group

    p = _load(params_path)
    if group not in p.slides:
        raise EqsegError(f"params: no slides group {group!r} (defined: {sorted(p.slides)})")
    out = out or Path(paths.SLIDES.format(group=group))
    placed = make_slide_group(p.slides[group], out)
    for name, tiles in placed.items():
        click.echo(f"{out}/{name}.ome.tif: {len(tiles)} tiles at {p.slides[group].slides[name].mpp} um/px")


@cli.command("tracking-init")
@params_option
def tracking_init(params_path: Path) -> None:
    """Create the MLflow database and experiment before parallel jobs start (avoids SQLite lock races)."""
    from eqseg import tracking

    p = _load(params_path)
    exp = tracking.setup(p.mlflow)
    click.echo(f"mlflow: {p.mlflow.tracking_uri} experiment {p.mlflow.experiment!r} (id {exp})")


def _command_name(argv: list[str]) -> str:
    """The subcommand the user ran (`eqseg -v tile ...` -> 'tile'), for the prefix of error lines."""
    return next((a for a in argv if a in cli.commands), "")


def _quiet_libraries(argv: list[str]) -> None:
    """Readers that log their own diagnosis of a bad file (tifffile logs ERROR/WARNING lines for a truncated
    OME-TIFF before raising) would bury eqseg's one line; -v shows them again."""
    if "-v" not in argv and "--verbose" not in argv:
        for name in ("tifffile", "imagecodecs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _fail(cmd: str, message: str, status: int) -> None:
    line = " ".join(str(message).split())  # one line, whatever the message holds
    click.echo(f"eqseg {cmd}: error: {line}" if cmd else f"eqseg: error: {line}", err=True)
    sys.exit(status)


# Environment failures that are not bugs: one line naming the path, not a traceback.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def main() -> None:
    argv = sys.argv[1:]
    cmd = _command_name(argv)
    _quiet_libraries(argv)
    try:
        cli(standalone_mode=False)
    except EqsegError as err:
        _fail(cmd, str(err), 2)
    except click.exceptions.Abort:
        click.echo("eqseg: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as err:
        err.show()  # `eqseg` alone: the help text
        sys.exit(err.exit_code)
    except click.UsageError as err:  # unknown option, missing --out, bad choice...
        ctx = err.ctx.command_path if err.ctx is not None else "eqseg"
        _fail(cmd, f"{err.format_message()} (see {ctx} --help)", err.exit_code)
    except click.ClickException as err:
        _fail(cmd, err.format_message(), err.exit_code)
    except OSError as err:
        if err.errno not in _ENV_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        _fail(cmd, f"{where}{err.strerror}", 2)


if __name__ == "__main__":
    main()
