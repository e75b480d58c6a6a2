"""The two pictures of a bench report, drawn from report.json alone.

``latency.png``: p50 time per batch and throughput against batch size, one line
per backend (where batching stops paying off). ``parity.png``: change of
accuracy against speed-up over the reference, one point per backend, with the
INT8 accuracy budget drawn (what each compiled variant costs and buys).
Both are drawn with matplotlib's Agg backend (no display needed) and returned
as PNG bytes for an atomic write.
"""

from __future__ import annotations

from typing import Any

from leukedge.plotting import figure_png, pyplot


def _plain_ticks(ax: Any) -> None:
    """Tick labels as plain numbers (0.5, 2, 40), not powers of ten, on log axes."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(fmt)


def _series(row: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for entry in row["latency"].values():
        if "skipped" in entry:
            continue
        value = entry["host_ms"]["p50"] if key == "p50" else entry["images_per_s"]
        if value is not None:
            xs.append(entry["batch"])
            ys.append(value)
    order = sorted(range(len(xs)), key=xs.__getitem__)
    return [xs[i] for i in order], [ys[i] for i in order]


def latency_png(report: dict[str, Any]) -> bytes:
    """p50 latency per batch and images/s against batch size, per measured backend."""
    plt = pyplot()
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = 0
    for name, row in report["backends"].items():
        xs, ys = _series(row, "p50")
        if not xs:
            continue
        style = {"linestyle": "--" if row["is_reference"] else "-", "marker": "o"}
        ax_lat.plot(xs, ys, label=name, **style)
        ax_thr.plot(*_series(row, "throughput"), label=name, **style)
        drawn += 1
    sizes = report["settings"]["batch_sizes"]
    for ax, ylabel in ((ax_lat, "p50 ms per batch"), (ax_thr, "images / s (mean)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xticks(sizes, [str(s) for s in sizes])  # after: fixed labels win on x
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax_thr.legend(fontsize=8)
    else:
        ax_lat.text(0.5, 0.5, "no latency measured", ha="center", transform=ax_lat.transAxes)
    run = report["run"]
    fig.suptitle(f"{run['name']} ({run['arch']}): latency on {_machine_label(report)}")
    return figure_png(fig)


def _machine_label(report: dict[str, Any]) -> str:
    m = report["machine"]
    if m.get("jetson"):
        return m["jetson"]["model"]
    gpus = m.get("gpus") or []
    cpu = f"{m.get('cpu')} ({m.get('cpu_cores')} cores)"
    return f"{gpus[0]['name']} + {cpu}" if gpus else cpu


def parity_points(report: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    """(name, speed-up, Δaccuracy in points, budget status) of each plottable backend.

    The speed-up is the throughput ratio at the largest batch measured, or the
    p50 ratio at batch 1 where that is all there is; parity-only rows (no
    latency) are left to the caption.
    """
    largest = str(max(report["settings"]["batch_sizes"]))
    smallest = str(min(report["settings"]["batch_sizes"]))
    out = []
    for name, row in report["backends"].items():
        delta = (row["delta"] or {}).get("accuracy")
        sp = (row["speedup"].get(largest) or {}).get("throughput") or (
            row["speedup"].get(smallest) or {}
        ).get("p50")
        if delta is not None and sp is not None:
            out.append((name, float(sp), 100.0 * delta, row["budget"]["status"]))
    return out


COLOURS = {"pass": "tab:green", "fail": "tab:red", "reference": "tab:blue", "none": "tab:gray"}


def parity_png(report: dict[str, Any]) -> bytes:
    """Accuracy change (points) against speed-up over the reference, per backend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    points = parity_points(report)
    for name, sp, dacc, status in points:
        ax.scatter([sp], [dacc], s=60, color=COLOURS.get(status, "tab:gray"), zorder=3)
        ax.annotate(name, (sp, dacc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    drop = 100.0 * report["settings"]["budgets"]["int8_max_accuracy_drop"]
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(-drop, color="tab:red", linestyle=":", label=f"INT8 budget (−{drop:g} pt)")
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
    if points:
        ax.set_xscale("log")
        _plain_ticks(ax)
    ax.margins(x=0.2, y=0.15)
    largest = max(report["settings"]["batch_sizes"])
    baseline = report["reference"].get("speed_baseline") or report["reference"]["backend"]
    ax.set_xlabel(f"speed-up over {baseline} (throughput at batch {largest})")
    ax.set_ylabel("Δ accuracy (points)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    caption = _parity_only_caption(report)
    if caption:
        fig.text(0.01, -0.02, caption, fontsize=8, va="top")
    run = report["run"]
    ax.set_title(f"{run['name']}: accuracy change vs speed-up ({report['data']['images']} images)")
    return figure_png(fig)


def _parity_only_caption(report: dict[str, Any]) -> str:
    parts = []
    for name, row in report["backends"].items():
        if row["kind"] != "parity-only":
            continue
        delta = (row["delta"] or {}).get("accuracy")
        dacc = "undefined" if delta is None else f"{100.0 * delta:+.2f} pt"
        parts.append(
            f"{name} (parity only): Δacc {dacc}, agreement {row['parity']['agreement']:.4f}"
        )
    return "; ".join(parts)
