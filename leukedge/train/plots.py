"""Training plots: learning curves and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leukedge.io import atomic_file
from leukedge.plotting import pyplot


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss (train/val) and validation accuracy, weighted F1 and AUROC per epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    for key, label in (
        ("val_accuracy", "accuracy"),
        ("val_f1_weighted", "weighted F1"),
        ("val_auroc", "AUROC"),
    ):
        ax_m.plot(epochs, [h[key] for h in history], label=label)
    ax_m.set_xlabel("epoch")
    ax_m.set_ylim(0, 1.02)
    ax_m.set_title("validation")
    ax_m.legend(loc="lower right")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(
    confusion: list[list[int]], classes: list[str], path: str | Path, title: str = "test"
) -> Path:
    plt = pyplot()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion ({title})")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def plot_reliability(
    before: list[dict], after: list[dict], path: str | Path, title: str = "test"
) -> Path:
    """Reliability diagram: accuracy against confidence, before and after temperature scaling."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.4, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for rows, label, marker in ((before, "raw", "o"), (after, "temperature-scaled", "s")):
        if rows:
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                marker=marker,
                label=label,
            )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability ({title})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
