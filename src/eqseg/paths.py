"""Output paths of every stage, shared by the CLI defaults, the Snakemake rules and the DVC stages."""

SLIDES = "data/{group}"  # slides built from tiles are inputs of tiling, like the bundled data
TILES = "results/tiles/{dataset}"
WEAK = "results/weak/{dataset}/{supervision}"
# one trained cell: dataset x model x supervision x variant x label budget (percent) x seed
CELL = "{dataset}/{model}/{supervision}/{variant}/b{budget}/seed{seed}"
MODEL = "results/models/" + CELL
# pseudo-labels of a teacher cell (supervision = the teacher's, e.g. points) for its student (points+distill)
PSEUDO = "results/pseudo/" + CELL
# a trained cell scored on a test set: its own dataset, or another one of grid.test_on
EVAL = "results/eval/" + CELL + "/{testset}"
EVAL_FILES = ("metrics.json", "inputs.json", "confusion.csv", "confusion.png", "predictions.png")
REPORT = "results/report"
REPORT_FILES = ("report.md", "metrics.json", "summary.csv", "cells.csv", "cells.parquet", "distill.csv", "modes.csv", "modes_pooled.csv", "weak_full.csv", "per_class.csv", "miou.png", "budget.png", "external.png",
                "equivariance.png")
DIGITS = "results/digits/{model}/seed{seed}"
PREDICT = "results/predict/" + CELL + "/{testset}"
COMPARE = "results/compare/{dataset}/{name}"
