"""The pictures of a comparison, drawn with matplotlib's Agg backend as PNG bytes.

``pareto.png``: weighted F1 (with its 95 % interval) against batch-1 latency, one
point per model x backend, the non-dominated ones joined: what accuracy each
millisecond buys. ``roc.png``: the ROC curves on one axes. ``confusion.png``: the
confusion matrices side by side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leukedge.compare.runs import Aligned
from leukedge.plotting import figure_png, pyplot


def pareto_png(points: list[dict[str, Any]]) -> bytes:
    """Weighted F1 against batch-1 latency (log axis); the Pareto front drawn as a step line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    models = sorted({p["model"] for p in points})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for p in points:
        lo, hi = p["ci95"]
        yerr = None
        if lo is not None and hi is not None:
            yerr = [[max(0.0, p["f1_weighted"] - lo)], [max(0.0, hi - p["f1_weighted"])]]
        ax.errorbar(
            p["latency_ms"],
            p["f1_weighted"],
            yerr=yerr,
            fmt="o",
            mfc=colours[p["model"]] if p["on_front"] else "white",
            color=colours[p["model"]],
            capsize=3,
        )
        ax.annotate(
            f"{p['model']}\n{p['backend']}",
            (p["latency_ms"], p["f1_weighted"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["latency_ms"])
    if len(front) > 1:
        ax.step(
            [p["latency_ms"] for p in front],
            [p["f1_weighted"] for p in front],
            where="post",
            color="grey",
            lw=1,
            ls="--",
        )
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 4, 10, 40 rather than powers of ten
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("weighted F1 (95% interval)")
    ax.set_title("accuracy vs latency (filled: Pareto-optimal)")
    ax.grid(True, alpha=0.3)
    return figure_png(fig, dpi=110)


def roc_png(data: Aligned, auroc: dict[str, dict[str, Any]]) -> bytes:
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    y = data.labels == data.positive_index
    for name, probs in data.probs.items():
        fpr, tpr, _ = roc_curve(y, probs[:, data.positive_index])
        est = auroc[name]["estimate"]
        label = f"{name} (AUROC {est:.3f})" if est is not None else name
        ax.plot(fpr, tpr, lw=1.5, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, {data.n} images")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    return figure_png(fig, dpi=110)


def confusion_png(data: Aligned) -> bytes:
    plt = pyplot()
    names = list(data.probs)
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names), 2.9), squeeze=False)
    k = len(data.classes)
    for ax, name in zip(axes[0], names, strict=True):
        pred = data.probs[name].argmax(axis=1)
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (data.labels, pred), 1)
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for i in range(k):
            for j in range(k):
                colour = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour)
        ax.set_xticks(range(k), data.classes)
        ax.set_yticks(range(k), data.classes)
        ax.set_xlabel("predicted")
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("true")
    fig.tight_layout()
    return figure_png(fig, dpi=110)
