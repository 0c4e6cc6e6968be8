"""The `eqseg` command: a thin layer over importable functions; Snakemake rules and DVC stages only call this.

Every failure the user can fix ends as one line `eqseg <command>: error: <what, where>` and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

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
               f"{len(g.supervision)} supervision x {len(g.seeds)} seeds")


@cli.command()
@click.argument("dataset")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
def tile(dataset: str, params_path: Path, out: Path | None) -> None:
    """Tile a dataset's sources into the tile store (arrays + GeoParquet index + meta.json)."""
    from eqseg.tiling.store import build_tile_store

    p = _load(params_path)
    meta = build_tile_store(dataset, p.dataset(dataset), p.tile, out or Path("results/tiles") / dataset)
    click.echo(f"{dataset}: {meta['n_tiles']} tiles {meta['splits']}")


@cli.command()
@params_option
@click.option("--dataset", required=True)
@click.option("--model", "model_name", required=True)
@click.option("--supervision", default="full", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), help="Default: results/tiles/DATASET.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def train(params_path, dataset, model_name, supervision, seed, tiles, out) -> None:
    """Train one model (one cell of the grid); resumes from its checkpoint after a kill."""
    from eqseg.train.loop import train as run

    p = _load(params_path)
    summary = run(p, dataset, model_name, supervision, seed, tiles or Path("results/tiles") / dataset, out)
    click.echo(f"{out}: best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']}")


@cli.command()
@params_option
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def evaluate(params_path, model_dir, tiles, out) -> None:
    """Evaluate a trained model on the test split: metrics.json, confusion and prediction plots."""
    from eqseg.evaluate.run import evaluate as run

    metrics = run(_load(params_path), model_dir, tiles, out)
    click.echo(f"{out}: test mIoU {metrics['miou_macro']:.4f}, micro IoU {metrics['iou_micro']:.4f}")


@cli.command()
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/report"), show_default=True)
def report(params_path: Path, out: Path) -> None:
    """Collect the grid's test metrics into one table (report.md, summary.csv, cells.csv) and a plot."""
    from eqseg.report import report as run, to_markdown

    click.echo(to_markdown(run(_load(params_path), out)), nl=False)


@cli.command("tracking-init")
@params_option
def tracking_init(params_path: Path) -> None:
    """Create the MLflow database and experiment before parallel jobs start (avoids SQLite lock races)."""
    from eqseg import tracking

    p = _load(params_path)
    exp = tracking.setup(p.mlflow)
    click.echo(f"mlflow: {p.mlflow.tracking_uri} experiment {p.mlflow.experiment!r} (id {exp})")


def main() -> None:
    try:
        cli(standalone_mode=False)
    except EqsegError as err:
        cmd = sys.argv[1] if len(sys.argv) > 1 else ""
        click.echo(f"eqseg {cmd}: error: {err}".replace("  ", " "), err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("eqseg: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
