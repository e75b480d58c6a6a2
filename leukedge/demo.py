"""`leukedge demo`: the whole path on synthetic data, end to end, on a laptop CPU.

synthesize cells and frames -> train the small CNN (subject-level split) ->
export FP32/FP16/INT8 ONNX -> run the microscope pipeline on the synthetic
frames and score it against their ground truth -> bench every backend against
PyTorch -> train the same CNN for half the epochs and compare the two on the
same test cells (intervals, paired tests), ending with what that comparison can
and cannot tell. Every step is the same library call a user makes; the demo only
picks small sizes so it finishes in minutes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from leukedge.io import OutputError, atomic_write_text

DEMO_IMG_SIZE = 64
DEMO_BACKENDS = "torch,ort-fp32,ort-fp16,ort-int8"
STEPS = 7
MARKER = ".leukedge-demo"


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo's: a new or empty folder, or one a demo already holds.

    The demo replaces its own sub-folders on every run, so it refuses any other
    folder (``runs/cnn`` is a name users give their own runs too). The marker file
    is written before anything else, so even an interrupted demo's folder is its own.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; pick a new or empty folder for --out")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file() or marker.is_symlink():
            raise OutputError(
                f"{out} is not empty and holds no earlier leukedge demo ({MARKER}); the demo "
                "replaces what it finds there, so pick a new or empty folder for --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, "written by `leukedge demo`: it may replace this folder's contents\n")


def _step(console: Console, n: int, title: str) -> float:
    console.rule(f"[bold]{n}/{STEPS} {title}")
    return time.perf_counter()


def _count_on_a_pan(
    console: Console, run_dir: Path, data_dir: Path, pan_dir: Path, out: Path
) -> dict[str, Any]:
    """Pan a window over one synthetic frame and count each cell once (report.html too)."""
    import cv2

    from leukedge.data.pan import write_pan
    from leukedge.io import read_json
    from leukedge.runtime.cells import CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.pipeline import run_pipeline

    first = sorted((data_dir / "frames").glob("*.png"))[0]
    frame = cv2.imread(str(first))
    if frame is None:
        raise OutputError(f"cannot read {first}")
    h, w = frame.shape[:2]
    path = write_pan(frame, pan_dir, (2 * w // 3, 2 * h // 3), max(4, w // 40))
    diameter = float(read_json(data_dir / "synth.json")["cell_diameter"])
    with Classifier.load(run_dir, backend="ort-fp32") as clf, console.status("counting"):
        finder = CellFinder.from_spec(clf.spec, cell_diameter_px=diameter)
        s = run_pipeline(clf, str(pan_dir), out, finder=finder, annotate=False)
    u, br = s["unique_cells"], s["unique_cells"]["blast_ratio"]
    pct = "-" if br["ratio"] is None else f"{100 * br['ratio']:.1f} %"
    lo, hi = ("-", "-") if br["ratio"] is None else (f"{100 * v:.1f}" for v in br["ci95"])
    console.print(
        f"  panning over one frame ({len(path)} frames, back over the first row): "
        f"{s['cells']['total']} detections, {u['cells']} cells counted once each "
        f"({u['blasts']} ALL, {pct}, 95% CI {lo}-{hi} %); review them in {out / 'report.html'}"
    )
    return {"frames": len(path), "detections": s["cells"]["total"], "unique": u["cells"]}


def run_demo(
    out: str | Path,
    n: int = 1200,
    epochs: int = 4,
    seed: int = 0,
    frames: int = 8,
    console: Console | None = None,
) -> dict[str, Any]:
    out = Path(out)
    claim_folder(out)  # before anything is imported or written

    from leukedge.bench import run_bench
    from leukedge.bench.tables import parity_table
    from leukedge.compare import compare_runs
    from leukedge.compare.markdown import findings
    from leukedge.data.synth import synthesize
    from leukedge.export import export_run
    from leukedge.progress import RichReporter
    from leukedge.runtime.groundtruth import run_on_synthetic_frames
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import train

    console = console or Console()
    data_dir, run_dir = out / "data", out / "runs" / "cnn"
    short_dir, compare_dir = out / "runs" / "cnn-short", out / "compare"
    frames_out = out / "frames-run"
    pan_dir, pan_out = out / "pan", out / "pan-run"
    summary: dict[str, Any] = {"out": str(out)}
    timings: dict[str, float] = {}

    t0 = _step(console, 1, "synthesize cells and frames")
    with RichReporter(console) as rep:
        task = rep.task("synthesizing", n + frames)
        synthesize(data_dir, n=n, frames=frames, seed=seed, progress=lambda i, t: rep.advance(task))
    timings["synthesize"] = time.perf_counter() - t0

    t0 = _step(console, 2, "train the CNN (split by subject)")
    for old in (
        run_dir,
        short_dir,
        frames_out,
        pan_dir,
        pan_out,
    ):  # a previous demo's (claim_folder): start over
        if old.is_symlink():
            old.unlink()
        elif old.exists():
            shutil.rmtree(old)
    cfg = TrainConfig(
        model="cnn",
        data=str(data_dir),
        out=str(run_dir),
        epochs=epochs,
        batch_size=32,
        img_size=DEMO_IMG_SIZE,
        seed=seed,
        workers=1,
        patience=epochs,
    )
    with RichReporter(console) as rep:
        result = train(cfg, reporter=rep)
    summary["test"] = {k: result["test"][k] for k in ("accuracy", "f1_weighted", "auroc")}
    timings["train"] = time.perf_counter() - t0

    t0 = _step(console, 3, "export ONNX FP32 / FP16 / INT8 (calibrated on the val split)")
    with console.status("exporting"):
        exported = export_run(run_dir)
    for entry in exported["files"].values():
        console.print(f"  {entry['file']:<18} {entry['size_bytes'] / 1e6:5.2f} MB")
    timings["export"] = time.perf_counter() - t0

    t0 = _step(console, 4, "run the microscope pipeline on the synthetic frames")
    with console.status("finding and classifying cells"):
        frames_report = run_on_synthetic_frames(run_dir, data_dir, frames_out)
    det, cls = frames_report["detection"], frames_report["classification"]
    fsum = frames_report["summary"]
    console.print(
        f"  {fsum['frames']['processed']} frames, {det['found_cells']} cells found of "
        f"{det['truth_cells']} drawn (recall {det['recall']:.2f}, precision {det['precision']:.2f} "
        f"at IoU 0.5); matched cells classified correctly: {cls['correct']}/{cls['matched']}; "
        f"backend {fsum['backend']['chosen']}"
    )
    summary["frames"] = {"detection": det, "classification": cls}
    summary["count"] = _count_on_a_pan(console, run_dir, data_dir, pan_dir, pan_out)
    timings["run"] = time.perf_counter() - t0

    t0 = _step(console, 5, "bench: parity and latency against PyTorch")
    with RichReporter(console) as rep:
        report = run_bench(
            run_dir,
            backends=DEMO_BACKENDS,
            batch_sizes=(1, 8),
            warmup=3,
            iters=20,
            min_time_s=0.3,
            max_time_s=3.0,
            reporter=rep,
        )
    summary["bench"] = {
        name: {"agreement": row["parity"]["agreement"], "budget": row["budget"]["status"]}
        for name, row in report["backends"].items()
        if row.get("parity")
    }
    timings["bench"] = time.perf_counter() - t0

    t0 = _step(console, 6, "compare: the CNN against one trained half as long, lr / 10")
    # A lower learning rate too: on easy data both runs could keep the same first epoch.
    short_cfg = TrainConfig.from_dict(
        {
            **cfg.to_dict(),
            "out": str(short_dir),
            "epochs": max(1, epochs // 2),
            "lr": cfg.resolved_lr() / 10,
        }
    )
    short_cfg.patience = short_cfg.epochs
    with RichReporter(console) as rep:
        train(short_cfg, reporter=rep)
    with console.status("comparing on the same test cells"):
        compared = compare_runs([run_dir, short_dir], compare_dir, n_resamples=1000)
    summary["compare"] = {
        name: {k: m[k]["estimate"] for k in ("accuracy", "f1_weighted", "auroc")}
        for name, m in compared["metrics"].items()
    }
    timings["compare"] = time.perf_counter() - t0

    _step(console, 7, "results")
    table = Table(title="synthetic test subjects (a demo: not a claim about real cells)")
    for col in ("accuracy", "weighted F1", "AUROC"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{summary['test'][k]:.3f}" for k in ("accuracy", "f1_weighted", "auroc")))
    console.print(table)
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    console.print(f"data:      {data_dir}  (cells/, frames/ with ground truth)")
    console.print(f"run dir:   {run_dir}  (checkpoint, split, metrics, plots; export/; bench/)")
    console.print(
        f"frames:    {frames_out}  (cells.jsonl, summary.json, annotated/, groundtruth.json)"
    )
    console.print(f"count:     {pan_out}  (report.html: every counted cell's picture, for review)")
    console.print(
        f"bench:     {run_dir / 'bench'}  (report.md, report.json, latency.png, parity.png)"
    )
    console.print(f"time (s):  {summary['timings_s']}")
    for note in report.get("notes", []):
        console.print(f"note: {note}", style="yellow", markup=False)
    console.print(parity_table(report))
    console.print(
        f"compare:   {compare_dir}  (report.md, report.json, roc.png, confusion.png, pareto.png)"
    )
    for line in findings(compared):
        console.print(line, markup=False, highlight=False)
    return summary
