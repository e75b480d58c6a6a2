"""End-to-end `leukedge run` speed on real microscope frames (ALL-IDB1), per ONNX precision.

    python benchmarks/run_pipeline.py --run benchmarks/work/allidb2-cnn \\
        [--data ../shared/data] [--precisions fp32,int8] [--batch 8] [--max-frames N]

``--run`` is a run dir with ``export/model.<precision>.onnx`` (``leukedge export RUN``),
an export folder, or one ``.onnx`` file. Every frame of ``DATA/all-idb1/im/*.jpg``
goes through the same ``run_pipeline`` the CLI calls (capture thread: read, find
cells, preprocess; main thread: ONNX Runtime on CPU), once per precision, after
one warm-up frame. Writes benchmarks/results/run_pipeline.json and .md with the
machine described. The pipeline outputs go to --work (not committed).

The model is an ALL-IDB2 classifier; ALL-IDB1 frames come from the same study, so
the crops look like its training images. Throughput, not accuracy, is measured
here: the counts are reported to show the runs did the same work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from leukedge.artifacts import export_dir_of, onnx_name, precision_of_file
from leukedge.io import atomic_write_json, atomic_write_text
from leukedge.machine import describe_machine, markdown_machine
from leukedge.runtime.cells import CellFinder
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.detection_eval import load_xyc
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import open_source
from leukedge.runtime.stats import STAGES

REPO = Path(__file__).resolve().parents[1]


def models_for(run: Path, precisions: list[str]) -> dict[str, Path | None]:
    """``{precision: model.<precision>.onnx}`` of a run dir or export folder; one ``.onnx`` as is."""
    if run.suffix == ".onnx":
        return {precision_of_file(run): run}
    folder = export_dir_of(run)
    paths = {p: folder / onnx_name(p) for p in precisions}
    return {p: path if path.is_file() else None for p, path in paths.items()}


def cell_calls(out: Path, xyc_dir: Path, positive: str) -> dict[str, Any]:
    """How the cells of ALL-IDB1 frames were called, where the truth is known.

    Frames ``ImXXX_0`` come from healthy subjects: every cell there should be called
    HEM. In ``ImXXX_1`` frames only blasts are annotated (a centroid each): a cell whose
    box holds a blast centroid should be called ALL; other cells of those frames are
    not judged (they may be blasts left unannotated or normal cells).
    """
    by_frame: dict[str, list[dict[str, Any]]] = {}
    with open(out / "cells.jsonl") as f:
        for line in f:
            cell = json.loads(line)
            by_frame.setdefault(cell["name"], []).append(cell)
    healthy = healthy_pos = blasts = blasts_pos = 0
    for name, cells in by_frame.items():
        if Path(name).stem.endswith("_0"):
            healthy += len(cells)
            healthy_pos += sum(c["class"] == positive for c in cells)
            continue
        points = load_xyc(xyc_dir / (Path(name).stem + ".xyc"))
        for c in cells:
            x0, y0, x1, y1 = c["box"]
            if any(x0 <= x < x1 and y0 <= y < y1 for x, y in points):
                blasts += 1
                blasts_pos += c["class"] == positive
    return {
        "healthy_frame_cells": healthy,
        "healthy_frame_cells_called_all": healthy_pos,
        "blast_cells": blasts,
        "blast_cells_called_all": blasts_pos,
    }


def measure(model: Path, frames: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One full pipeline run after a one-frame warm-up; the summary's speed and counts."""
    clf = Classifier.load(model, backend="ort", device="cpu", batch=args.batch)
    finder = CellFinder.from_spec(
        clf.spec, cell_diameter_px=args.cell_diameter_px, um_per_px=args.um_per_px
    )
    with clf:
        run_pipeline(clf, open_source(frames, max_frames=1), out / "warmup", finder, annotate=False)
        t0 = time.perf_counter()
        s = run_pipeline(
            clf,
            open_source(frames, max_frames=args.max_frames),
            out,
            finder,
            batch=args.batch,
            annotate=args.annotate,
            model_name=str(model),
        )
        wall = time.perf_counter() - t0
    return {
        "model": str(model),
        "backend": s["backend"]["chosen"],
        "status": s["status"],
        "frames": s["frames"],
        "cells": s["cells"]["total"],
        "all_count": s["all_count"],
        "blast_ratio": s["blast_ratio"]["ratio"],
        "frames_per_s": s["throughput"]["frames_per_s"],
        "cells_per_s": s["throughput"]["cells_per_s"],
        "mean_cells_per_batch": s["throughput"]["mean_cells_per_batch"],
        "wall_s": round(wall, 2),
        "latency_ms": s["latency_ms"],
        "skipped_frames": s["skipped_frames"],
        "calls": cell_calls(out, Path(args.data) / "all-idb1" / "xyc", clf.spec.positive_class),
    }


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    lines = [
        "# `leukedge run` on ALL-IDB1 frames",
        "",
        f"Model: `{report['run']}`; {report['frames']} frames from `{report['source']}`; "
        f"batch {report['settings']['batch']}; annotation "
        f"{'on' if report['settings']['annotate'] else 'off'}; cell size "
        f"{report['settings']['scale']}; ONNX Runtime on CPU.",
        "",
        "| precision | frames/s | cells/s | cells | ALL | "
        + " | ".join(f"{s} p50/p90/p99 ms" for s in STAGES)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(STAGES),
    ]
    for p, r in rows.items():
        lat = [
            "/".join(f"{r['latency_ms'][s][k]:.0f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
            if r["latency_ms"][s]["n"]
            else "-"
            for s in STAGES
        ]
        lines.append(
            f"| {p} | {r['frames_per_s']:.2f} | {r['cells_per_s']:.1f} | {r['cells']} | "
            f"{r['all_count']} | " + " | ".join(lat) + " |"
        )
    lines += [
        "",
        "Cells called ALL where the truth is known (healthy-subject frames `ImXXX_0`: every "
        "cell is normal; blast cells: a detection whose box holds an annotated blast centroid):",
        "",
        "| precision | healthy-frame cells called ALL | blast cells called ALL |",
        "|---|---:|---:|",
    ]
    for p, r in rows.items():
        c = r["calls"]
        lines.append(
            f"| {p} | {c['healthy_frame_cells_called_all']}/{c['healthy_frame_cells']} | "
            f"{c['blast_cells_called_all']}/{c['blast_cells']} |"
        )
    lines += [
        "",
        "capture, find and preprocess run in the capture thread per frame; infer is one "
        "ONNX Runtime call per batch of cells in the main thread; end_to_end runs from reading "
        "a frame to its results being written (queue waits included). frames/s is the whole "
        "run's wall clock.",
        "",
        "## Machine",
        "",
        markdown_machine(report["machine"]),
        f"- Load average when the run started: {report['load_average']}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="Run dir, export folder or .onnx file.")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--cell-diameter-px", type=float, default=None)
    ap.add_argument("--um-per-px", type=float, default=None)
    ap.add_argument("--annotate", action="store_true", help="Also write annotated PNGs.")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "run_pipeline"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    run = Path(args.run)
    frames_dir = Path(args.data) / "all-idb1" / "im"
    if not frames_dir.is_dir():
        raise SystemExit(f"no ALL-IDB1 frames at {frames_dir} (pass --data)")
    frames = str(frames_dir / "*.jpg")
    models = models_for(run, args.precisions.split(","))
    missing = [p for p, m in models.items() if m is None]
    if len(missing) == len(models):
        raise SystemExit(
            f"no model.{{{args.precisions}}}.onnx for {run}: run `leukedge export {run}`"
        )
    load = (
        " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists()
        else None
    )
    results = {}
    for precision, model in models.items():
        if model is None:
            print(f"{precision}: no model.{precision}.onnx, skipped", flush=True)
            continue
        results[precision] = measure(model, frames, Path(args.work) / precision, args)
        print(
            json.dumps(
                {precision: {k: v for k, v in results[precision].items() if k != "latency_ms"}},
                indent=1,
            ),
            flush=True,
        )

    scale = (
        f"{args.cell_diameter_px} px"
        if args.cell_diameter_px
        else f"{args.um_per_px} µm/px"
        if args.um_per_px
        else "measured per frame"
    )
    report = {
        "benchmark": "run_pipeline",
        "run": str(run),
        "source": frames,
        "frames": next(iter(results.values()))["frames"]["read"],
        "settings": {"batch": args.batch, "annotate": args.annotate, "scale": scale},
        "skipped_precisions": missing,
        "results": results,
        "load_average": load,
        "machine": describe_machine(),
    }
    out = Path(args.results)
    atomic_write_json(out / "run_pipeline.json", report)
    atomic_write_text(out / "run_pipeline.md", markdown(report))
    print(f"wrote {out / 'run_pipeline.json'} and .md", flush=True)


if __name__ == "__main__":
    main()
