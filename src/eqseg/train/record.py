"""What a training leaves behind besides the model, written alike for networks (eqseg.train.loop) and fitted classical
baselines (eqseg.train.classical): history.csv, curves.png, the run's title and the label-quality metrics."""

from __future__ import annotations

import csv
from pathlib import Path


def weak_metrics(quality: dict) -> dict[str, float]:
    """The label-quality record as MLflow metrics (labels_*; after expansion labels_expanded_*)."""
    out = {f"labels_{k}": quality.get(k) for k in ("labelled_fraction", "precision")}
    out["labels_effort_per_tile"] = (quality.get("effort") or {}).get("per_tile")
    for k in ("labelled_fraction", "precision"):
        out[f"labels_expanded_{k}"] = (quality.get("expansion") or {}).get(k)
    for k in ("kept_fraction", "pseudo_precision"):  # a distilled student's pseudo-labels
        out[f"labels_distill_{k}"] = (quality.get("distill") or {}).get(k)
    return {k: v for k, v in out.items() if v is not None}


def run_config_title(c: dict) -> str:
    return f"{c['dataset']} / {c['model']} / {c['supervision']} / seed {c['seed']}"


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def plot_history(path: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["val_miou"] for r in history], "s-", color="tab:orange", label="val mIoU")
    ax2.set_ylabel("val mIoU (macro)")
    ax2.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title(title, fontsize=9, pad=18)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
