"""`leukedge compare`: models side by side on the same images, with the statistics to read it.

``report.json`` (format ``leukedge.compare``, version 1)::

    runs        [{name, path, kind ("run"|"kfold"), arch, images_scored, data_root}]
    images      {n, class_counts, aligned (bool), scored {run: images}}
    positive_class
    resampling  {unit ("subject"|"image"), units, strata [units per resampled class], fixed
                 [units alone in their class: in every resample], resamples, seed, method,
                 confidence}
    correction  {method "holm", alpha, pairs}
    metrics     {run: {metric: {estimate, ci95 [lo, hi]}}}   metrics of leukedge.stats.METRICS
    pairs       [{a, b, significant, mcnemar {b, c, exact, statistic, p_value, p_holm,
                  significant}, f1_weighted|auroc {estimate (A - B), ci95, p_value, p_holm,
                  significant}}]
    cost        {run: {arch, input_size, parameters, gflops, sizes_mb {checkpoint, onnx_<p>},
                  latency [{backend, precision, device, batch1_p50_ms, batch1_p90_ms,
                  throughput_batch, images_per_s, agreement}], latency_machine}}
    pareto      [{model, backend, latency_ms, f1_weighted, ci95, on_front}]
    latency_mixed_machines (bool)
    notes       [str]
    files       [names written beside report.json]

Undefined figures are null, never NaN.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leukedge.compare.analysis import analyse
from leukedge.compare.cost import model_cost
from leukedge.compare.markdown import to_markdown
from leukedge.compare.plots import confusion_png, pareto_png, roc_png
from leukedge.compare.runs import Aligned, ModelRun, align_runs, load_run, unique_names
from leukedge.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from leukedge.progress import Reporter

REPORT_FORMAT = "leukedge.compare"
REPORT_VERSION = 1


def pareto_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Model x backend points (latency, weighted F1); ``on_front`` where none dominates."""
    points = []
    for name, c in report["cost"].items():
        f1 = report["metrics"][name]["f1_weighted"]
        for r in c["latency"]:
            if r["batch1_p50_ms"] and f1["estimate"] is not None:
                points.append(
                    {
                        "model": name,
                        "backend": r["backend"],
                        "latency_ms": r["batch1_p50_ms"],
                        "f1_weighted": f1["estimate"],
                        "ci95": f1["ci95"],
                    }
                )
    for p in points:
        p["on_front"] = not any(
            q["latency_ms"] <= p["latency_ms"]
            and q["f1_weighted"] >= p["f1_weighted"]
            and (q["latency_ms"] < p["latency_ms"] or q["f1_weighted"] > p["f1_weighted"])
            for q in points
        )
    return points


def _notes(runs: list[ModelRun], data: Aligned, report: dict[str, Any]) -> list[str]:
    notes = []
    if data.aligned:
        per = ", ".join(f"{n} {k}" for n, k in data.scored.items())
        notes.append(
            f"--align: the runs scored different images ({per}); only the {data.n} images "
            "common to all are compared"
        )
    res = report["resampling"]
    if not res["strata"]:
        notes.append(
            f"no class has two {res['unit']}s: nothing to resample, so no intervals and no "
            "paired bootstrap tests; these data cannot tell the models apart"
        )
    elif res["fixed"]:
        notes.append(
            f"{', '.join(res['fixed'])} alone in its class: in every resample, so the intervals "
            f"leave out {res['unit']}-to-{res['unit']} variation of that class"
        )
    if res["unit"] == "image":
        notes.append(
            "no subject ids: intervals resample images as if independent; cells of one patient "
            "are alike, so for new patients the intervals are too narrow and the figures optimistic"
        )
    else:
        notes.append(
            "McNemar treats images as independent, which cells of one subject are not; the "
            "paired bootstrap over subjects is the test that respects it"
        )
    roots = {r.data_root for r in runs if r.data_root}
    if len(roots) > 1:
        notes.append(
            f"the runs were trained from different data folders: {', '.join(sorted(roots))}"
        )
    if any(r.kind == "kfold" for r in runs):
        notes.append(
            "k-fold AUROC and ECE pool scores of different fold models on one scale; the "
            "per-fold figures are in each run's metrics.json"
        )
    machines = {
        (m.get("cpu"), m.get("cpu_cores"), tuple(m.get("gpus") or ()))
        for c in report["cost"].values()
        if (m := c["latency_machine"])
    }
    if len(machines) > 1:
        notes.append(
            "the bench reports were measured on different machines: their latencies are not "
            "comparable across models"
        )
    if any(c["latency"] for c in report["cost"].values()):
        notes.append(
            "latency is from each run's bench report (leukedge bench), p50 over timed calls; "
            "the weighted F1 of every backend in the Pareto plot is the PyTorch model's "
            "(its backends' agreement with it is in the latency table)"
        )
    missing = [r.name for r in runs if not report["cost"][r.name]["latency"]]
    if missing and len(missing) < len(runs):
        notes.append(f"no bench report for {', '.join(missing)}: not in the latency table")
    return notes


def _clean(obj: Any) -> Any:
    """NaN and inf to None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def compare_runs(
    paths: Sequence[str | Path],
    out: str | Path = "compare",
    align: bool = False,
    n_resamples: int = 2000,
    seed: int = 0,
    plots: bool = True,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Compare runs on their common images; writes report.json, report.md and the plots."""
    rep = reporter or Reporter()
    runs = [load_run(p) for p in paths]
    unique_names(runs)
    data = align_runs(runs, align)
    rep.log(f"comparing {len(runs)} runs on {data.n} images")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "kind": r.kind,
                "arch": r.arch,
                "images_scored": len(r.table),
                "data_root": r.data_root,
            }
            for r in runs
        ],
        "images": {
            "n": data.n,
            "class_counts": {c: int((data.labels == k).sum()) for k, c in enumerate(data.classes)},
            "aligned": data.aligned,
            "scored": data.scored,
        },
        "positive_class": data.classes[data.positive_index],
    }
    report.update(analyse(data, n_resamples, seed))
    report["cost"] = {r.name: model_cost(r) for r in runs}
    report["pareto"] = pareto_points(report)
    report["latency_mixed_machines"] = (
        len(
            {
                (m.get("cpu"), m.get("cpu_cores"), tuple(m.get("gpus") or ()))
                for c in report["cost"].values()
                if (m := c["latency_machine"])
            }
        )
        > 1
    )
    report["notes"] = _notes(runs, data, report)
    report = _clean(report)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = ["report.json", "report.md"]
    if plots:
        atomic_write_bytes(
            out / "roc.png", roc_png(data, {n: m["auroc"] for n, m in report["metrics"].items()})
        )
        atomic_write_bytes(out / "confusion.png", confusion_png(data))
        files += ["roc.png", "confusion.png"]
        if report["pareto"]:
            atomic_write_bytes(out / "pareto.png", pareto_png(report["pareto"]))
            files.append("pareto.png")
    report["files"] = files
    atomic_write_text(out / "report.md", to_markdown(report))
    atomic_write_json(out / "report.json", report)
    report["out"] = str(out)
    return report
