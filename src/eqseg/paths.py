"""Output paths of every stage, shared by the CLI defaults, the Snakemake rules and the DVC stages."""

SLIDES = "data/{group}"  # slides built from tiles are inputs of tiling, like the bundled data
TILES = "results/tiles/{dataset}"
WEAK = "results/weak/{dataset}/{supervision}"
MODEL = "results/models/{dataset}/{model}/{supervision}/seed{seed}"
EVAL = "results/eval/{dataset}/{model}/{supervision}/seed{seed}"
EVAL_FILES = ("metrics.json", "confusion.csv", "confusion.png", "predictions.png")
REPORT = "results/report"
REPORT_FILES = ("report.md", "summary.csv", "cells.csv", "miou.png")
DIGITS = "results/digits/{model}/seed{seed}"
PREDICT = "results/predict/{dataset}/{model}/{supervision}/seed{seed}"
