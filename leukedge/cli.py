"""The `leukedge` command line: parse, call the library, show progress and results.

Each command is thin; the work lives in the library so the Python API does
exactly what the CLI does. Errors leukedge anticipates (bad data, missing run
files, unavailable backends) end with a one-paragraph message and exit code 2,
not a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leukedge import __version__

app = typer.Typer(
    name="leukedge",
    help="Leukemia cell classifiers from training to the microscope: train, export, "
    "build TensorRT engines, run on camera frames, measure parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect datasets and make synthetic ones.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _known_errors() -> tuple[type[BaseException], ...]:
    from leukedge.bench.backends import BenchError
    from leukedge.bench.report import ReportError
    from leukedge.data.records import DatasetError
    from leukedge.rundir import RunDirError
    from leukedge.runtime.backends.base import BackendError
    from leukedge.runtime.display import DisplayUnavailable
    from leukedge.runtime.images import ImageReadError
    from leukedge.runtime.sources import SourceError
    from leukedge.spec import SpecError

    known: list[type[BaseException]] = [
        DatasetError,
        RunDirError,
        BackendError,
        ImageReadError,
        SpecError,
        SourceError,
        DisplayUnavailable,
        FileExistsError,
        FileNotFoundError,
        BenchError,
        ReportError,
    ]
    try:
        from leukedge.train.models import PretrainedError

        known.append(PretrainedError)
    except ImportError:  # torch not installed: the runtime-only install
        pass
    return tuple(known)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn anticipated errors into a clear message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: everything finished so far is saved")
            raise typer.Exit(130) from None
        except _known_errors() as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "-" if v is None else str(v)


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title)
    for col in (
        "n",
        "accuracy",
        "F1 (ALL)",
        "weighted F1",
        "balanced acc",
        "AUROC",
        "precision",
        "recall",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(metrics["n"]),
        _fmt(metrics["accuracy"]),
        _fmt(metrics["f1"]),
        _fmt(metrics["f1_weighted"]),
        _fmt(metrics["balanced_accuracy"]),
        _fmt(metrics["auroc"]),
        _fmt(metrics["precision"]),
        _fmt(metrics["recall"]),
    )
    return table


def confusion_table(metrics: dict[str, Any]) -> Table:
    classes = metrics["classes"]
    table = Table(title="confusion (rows: true, columns: predicted)")
    table.add_column("")
    for c in classes:
        table.add_column(c, justify="right")
    for c, row in zip(classes, metrics["confusion"], strict=True):
        table.add_row(c, *map(str, row))
    return table


@app.callback(invoke_without_command=True)
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        console.print(f"leukedge {__version__}")
        raise typer.Exit()


# ---------------------------------------------------------------------------- data


@data_app.command("check")
@friendly_errors
def data_check(
    path: Path = typer.Argument(
        ..., help="Dataset folder (C-NMC, ALL-IDB2, class folders, synthetic)."
    ),
    layout: str = typer.Option("auto", help="auto | cnmc | allidb2 | folders | synthetic"),
    subjects: Path | None = typer.Option(
        None, help="CSV with columns file,subject (class folders)."
    ),
    decode: bool = typer.Option(True, help="Decode every image to find corrupt files."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """What is in a dataset: counts per class and subject, image formats, problems found.

    Example: leukedge data check ~/data/C-NMC_Leukemia
    """
    from leukedge.data.check import check_dataset
    from leukedge.data.layouts import load_dataset
    from leukedge.progress import RichReporter

    ds = load_dataset(path, layout, subjects)
    if decode and not as_json:
        with RichReporter(console) as rep:
            task = rep.task("decoding images", len(ds.records))
            report = check_dataset(ds, True, lambda i, n: rep.advance(task))
    else:
        report = check_dataset(ds, decode)
    if as_json:
        _print_json(report)
        return
    console.print(
        f"[bold]{report['root']}[/]  layout [cyan]{report['layout']}[/]  "
        f"{report['images']} images, {report['usable_images']} usable"
    )
    table = Table(title="images per class")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("subjects", justify="right")
    for c in report["classes"]:
        table.add_row(c, str(report["class_counts"][c]), str(report["subjects_per_class"][c]))
    console.print(table)
    if report["images_per_subject"]:
        ips = report["images_per_subject"]
        console.print(
            f"{report['subjects']} subjects; images per subject min {ips['min']} "
            f"median {ips['median']} max {ips['max']}"
        )
    console.print(f"sizes: {report['image_sizes']}  pixels: {report['pixel_formats']}")
    for w in report["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    for p in report["problems"][:20]:
        console.print(f"[red]problem:[/] {p['path']}: {p['problem']}")
    if len(report["problems"]) > 20:
        console.print(f"... and {len(report['problems']) - 20} more (use --json for all)")


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Path = typer.Argument(
        ..., help="Output folder (created; a previous synth output is replaced)."
    ),
    n: int = typer.Option(2000, "--n", help="Number of single-cell crops."),
    frames: int = typer.Option(20, help="Number of full smear frames with ground-truth boxes."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives identical files."),
    cell_size: int = typer.Option(128, help="Side of the single-cell crops in pixels."),
) -> None:
    """Synthetic blood-smear data (cells as class folders with subjects, frames with boxes).

    For demos and tests only: never report synthetic accuracy as accuracy on real data.
    Example: leukedge data synth data/synth --n 2000 --frames 20
    """
    from leukedge.data.synth import synthesize
    from leukedge.progress import RichReporter

    with RichReporter(console) as rep:
        task = rep.task("synthesizing", n + frames)
        meta = synthesize(
            out,
            n=n,
            frames=frames,
            seed=seed,
            cell_size=cell_size,
            progress=lambda i, total: rep.advance(task),
        )
    console.print(f"wrote {meta['counts']} to {out} (cells/, frames/, synth.json)")


# ---------------------------------------------------------------------------- train


@app.command()
@friendly_errors
def train(
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder (see `leukedge data check --help`)."
    ),
    model: str = typer.Option("cnn", "--model", help="cnn | resnet50 | vit-hybrid"),
    arch: str | None = typer.Option(
        None, "--arch", help="Any timm model name (overrides --model)."
    ),
    out: Path = typer.Option(..., "--out", help="Run dir to create (runs/NAME)."),
    epochs: int = typer.Option(50, help="Maximum epochs (early stopping may end sooner)."),
    batch_size: int = typer.Option(32, help="Images per step (per process under torchrun)."),
    img_size: int = typer.Option(224, help="Model input size in pixels."),
    lr: float | None = typer.Option(
        None, help="Peak learning rate (default 1e-3 for cnn, 3e-4 for timm models)."
    ),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    optimizer: str = typer.Option("adamw", help="adamw | adam"),
    patience: int = typer.Option(
        10, help="Stop after this many epochs without a better val weighted F1."
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    pretrained: str | None = typer.Option(
        None, help="'timm' for hub weights, or a local weights file."
    ),
    split: str = typer.Option("subject", help="subject (70/15/15 by patient) | official (C-NMC)"),
    seed: int = typer.Option(0, help="Seed for the split, initialisation and augmentation."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last epoch."
    ),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    crop_style: str | None = typer.Option(
        None, help="masked | context (default: from the layout)."
    ),
    layout: str = typer.Option("auto", help="auto | cnmc | allidb2 | folders | synthetic"),
) -> None:
    """Train a classifier; writes spec.json, checkpoint.pt, split.json, history, plots, metrics.

    Example: leukedge train --model resnet50 --data ~/data/C-NMC_Leukemia --out runs/r50
    Multi-GPU: torchrun --nproc-per-node 4 -m leukedge train ... (same arguments).
    """
    from leukedge.progress import RichReporter
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import train as run_training

    cfg = TrainConfig(
        model=arch or model,
        data=str(data),
        out=str(out),
        epochs=epochs,
        batch_size=batch_size,
        img_size=img_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        patience=patience,
        device=device,
        pretrained=pretrained,
        split=split,
        seed=seed,
        workers=workers,
        crop_style=crop_style,
        layout=layout,
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    with RichReporter(console) as rep:
        result = run_training(cfg, resume=resume, reporter=rep)
    if not result:  # a non-zero rank under torchrun
        return
    if result.get("test"):
        console.print(metrics_table(f"test split ({result['split_unit']}-level)", result["test"]))
        console.print(confusion_table(result["test"]))
    console.print(
        f"best epoch {result['best_epoch']} of {result['epochs_run']}; run dir [bold]{out}[/] "
        "(spec.json, checkpoint.pt, split.json, history.csv, curves.png, confusion.png, "
        "metrics.json)"
    )
    console.print(f"next: leukedge export {out}")


@app.command()
@friendly_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run dir made by `leukedge train`."),
    data: Path | None = typer.Option(None, help="Another copy of the data, or another dataset."),
    split: str = typer.Option("test", help="train | val | test | all"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    out: Path | None = typer.Option(
        None, help="JSON output (default: RUN/eval_<layout>_<split>.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a run's best checkpoint on a split (per-subject accuracy included).

    Example: leukedge evaluate runs/r50 --split test
    """
    from leukedge.progress import Reporter, RichReporter
    from leukedge.train.evaluate_run import evaluate_run

    if as_json:
        result = evaluate_run(run, data, split, device, batch_size, workers, out, Reporter())
        _print_json(result)
        return
    with RichReporter(console) as rep:
        result = evaluate_run(run, data, split, device, batch_size, workers, out, rep)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(metrics_table(f"{result['split']} split of {result['data']}", result["metrics"]))
    console.print(confusion_table(result["metrics"]))
    if result["per_subject"]:
        table = Table(title="per subject")
        for col in ("subject", "class", "images", "accuracy"):
            table.add_column(col, justify="right")
        for s, v in result["per_subject"].items():
            table.add_row(s, v["class"], str(v["n"]), _fmt(v["accuracy"], 3))
        console.print(table)
    console.print(f"written to {result['written_to']}")


# ---------------------------------------------------------------------------- demo


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for everything the demo writes."),
    n: int = typer.Option(1200, "--n", help="Synthetic cells to generate."),
    frames: int = typer.Option(8, help="Synthetic smear frames for the pipeline."),
    epochs: int = typer.Option(4, help="Training epochs for the demo CNN."),
    seed: int = typer.Option(0, help="Seed for data and training."),
) -> None:
    """The whole path on built-in synthetic data, in a few minutes on a laptop CPU.

    synthesize -> train the CNN -> export FP32/FP16/INT8 ONNX -> run the microscope
    pipeline on synthetic frames -> bench every backend against PyTorch.
    """
    from leukedge.demo import run_demo

    run_demo(out, n=n, epochs=epochs, seed=seed, frames=frames, console=console)


# ---------------------------------------------------------------------------- run


def _run_table(summary: dict[str, Any]) -> Table:
    """The end-of-run numbers a lab reads first: counts, blast ratio, speed."""
    table = Table(title=f"leukedge run: {summary['status']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    frames, cells, br = summary["frames"], summary["cells"], summary["blast_ratio"]
    table.add_row("frames", f"{frames['processed']} processed, {frames['skipped']} skipped")
    by_class = ", ".join(f"{c} {n}" for c, n in cells["by_class"].items())
    table.add_row("cells", f"{cells['total']} ({by_class}; {cells['touching_edge']} at the edge)")
    if br["ratio"] is None:
        table.add_row("blast ratio", "-")
    else:
        lo, hi = br["ci95"]
        table.add_row("blast ratio", f"{br['ratio']:.3f}  (95% CI {lo:.3f}-{hi:.3f}, Wilson)")
    fps = summary["throughput"]["frames_per_s"]
    table.add_row("frames/s", _fmt(fps, 2))
    b = summary["backend"]
    table.add_row("backend", f"{b['chosen']} on {b['device']} ({b['reason']})")
    return table


def _latency_table(summary: dict[str, Any]) -> Table:
    table = Table(title="latency per stage (ms)")
    for col in ("stage", "n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for stage, s in summary["latency_ms"].items():
        table.add_row(
            stage, str(s["n"]), *(_fmt(s[k], 1) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        )
    return table


@app.command("run")
@friendly_errors
def run_command(
    model: Path = typer.Argument(
        ..., help="Run dir (its export/model.*.onnx and engines/), an .onnx or an .engine."
    ),
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help="Image, folder or glob of images, video file, camera:N, csi:N[:WxH@FPS], "
        "rtsp://..., gst:PIPELINE.",
    ),
    backend: str = typer.Option(
        "auto", help="auto (time every backend that runs here, keep the fastest) | ort | trt"
    ),
    precision: str = typer.Option("auto", help="auto | fp32 | fp16 | int8 (for a run dir)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: leukedge-run/<date-time>)."
    ),
    show: bool = typer.Option(
        False, "--show", help="Live window with boxes, labels and counts (q or Esc quits)."
    ),
    cell_diameter_px: float | None = typer.Option(
        None, "--cell-diameter-px", help="White-cell diameter in frame pixels (default: measured)."
    ),
    um_per_px: float | None = typer.Option(
        None, "--um-per-px", help="Microns per pixel of the camera (instead of --cell-diameter-px)."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Most cells classified in one batch."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
    annotate: bool = typer.Option(
        True, "--annotate/--no-annotate", help="Write annotated PNGs / annotated.mp4."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of tables."),
) -> None:
    """Find, classify and count white cells in frames; writes cells.jsonl, summary.json, annotated frames.

    Ctrl-C (or q in the --show window) stops cleanly with every output written.
    Exit code 1 when the source failed mid-stream (outputs up to then are kept).
    Example: leukedge run runs/r50 --source camera:0 --show --um-per-px 0.25
    """
    import time

    from leukedge.runtime.cells import CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.pipeline import run_pipeline
    from leukedge.runtime.sources import open_source

    if cell_diameter_px is not None and um_per_px is not None:
        raise typer.BadParameter("give --cell-diameter-px or --um-per-px, not both")
    if show:
        from leukedge.runtime.display import require_display

        require_display()
    out = out or Path("leukedge-run") / time.strftime("%Y%m%d-%H%M%S")
    src = open_source(source, max_frames=max_frames)
    try:
        if as_json:
            clf = Classifier.load(model, backend, device, precision, batch)
        else:
            with console.status("choosing the backend (timing each candidate)"):
                clf = Classifier.load(model, backend, device, precision, batch)
            console.print(f"backend [bold]{clf.backend.name}[/]: {clf.selection.reason}")
            for note in clf.selection.notes:
                console.print(f"[yellow]note:[/] {escape(note)}")
        finder = CellFinder.from_spec(
            clf.spec, cell_diameter_px=cell_diameter_px, um_per_px=um_per_px
        )
        with clf:
            summary = _run_with_progress(
                lambda progress: run_pipeline(
                    clf,
                    src,
                    out,
                    finder=finder,
                    batch=batch,
                    annotate=annotate,
                    show=show,
                    progress=progress,
                    model_name=str(model),
                ),
                src,
                quiet=as_json,
            )
    finally:
        src.close()
    if as_json:
        _print_json(summary)
    else:
        console.print(_run_table(summary))
        console.print(_latency_table(summary))
        for skip in summary["skipped_frames"][:10]:
            console.print(f"[yellow]skipped[/] {skip['name']}: {skip['reason']}")
        if summary["frames"]["skipped"] > 10:
            console.print(f"... {summary['frames']['skipped'] - 10} more in summary.json")
        if summary["message"]:
            console.print(f"[yellow]{summary['status']}:[/] {summary['message']}")
        console.print(f"outputs in [bold]{out}[/] (cells.jsonl, summary.json, annotated)")
    if summary["status"] == "source_error":
        raise typer.Exit(1)


def _run_with_progress(
    work: Callable[[Callable[[dict[str, Any]], None] | None], dict[str, Any]],
    source: Any,
    quiet: bool,
) -> dict[str, Any]:
    """Run ``work`` with a live line of frames, cells, ALL count and frames/s."""
    if quiet:
        return work(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]frames"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("run", total=getattr(source, "total", None), info="")

        def update(s: dict[str, Any]) -> None:
            fps = f"{s['fps']:.1f}" if s["fps"] else "-"
            info = (
                f"cells {s['cells']}  {s['positive_class'].upper()} {s['positive']}  "
                f"skipped {s['skipped']}  {fps} frames/s"
            )
            bar.update(task, completed=s["frames"], info=info)

        return work(update)


# ---------------------------------------------------------------------------- export


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
@friendly_errors
def export(
    run: Path = typer.Argument(..., help="Run dir made by `leukedge train`."),
    precision: str = typer.Option("fp32,fp16,int8", help="Comma list of fp32, fp16, int8."),
    calib_method: str = typer.Option(
        "minmax", help="INT8 calibration: minmax | entropy | percentile"
    ),
    calib_size: int | None = typer.Option(
        None, help="Calibrate on N val images (stratified by class and subject); default all."
    ),
    opset: int = typer.Option(18, help="ONNX opset (>= 18: the exporter's lowest)."),
    data: Path | None = typer.Option(None, help="The run's data, if it moved since training."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json."),
) -> None:
    """Export to ONNX: FP32, FP16 (I/O fp32) and INT8 Q/DQ calibrated on the validation split.

    Writes RUN/export/model.{fp32,fp16,int8}.onnx, calibration.json and export.json with
    each file's size, sha256 and parity against PyTorch on the validation split.
    Example: leukedge export runs/r50 --precision fp16,int8 --calib-method entropy
    """
    from leukedge.export import export_run
    from leukedge.export.onnx_export import ExportError
    from leukedge.progress import RichReporter

    if as_json:
        record = export_run(run, precision, calib_method, calib_size, opset, data)
        _print_json(record)
        return
    with RichReporter(console) as rep:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = rep.task(stage, total)
            rep.progress.update(tasks[stage], completed=done, total=total)

        try:
            record = export_run(run, precision, calib_method, calib_size, opset, data, progress)
        except ExportError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}")
            record = None
    if record is None:
        raise typer.Exit(2)
    console.print(export_table(record))
    for w in record["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    console.print(f"written to {Path(run) / 'export'} (export.json has every figure)")
    console.print(f"next: leukedge bench {run}   or on a Jetson: leukedge build-engine {run}")


def export_table(record: dict[str, Any]) -> Table:
    table = Table(
        title=f"{record['arch']} exported; parity vs PyTorch on {record['parity_images']} {record['parity_split']} images"
    )
    for col in ("precision", "MB", "agreement", "max |Δlogit|", "mean |Δlogit|", "Δ accuracy"):
        table.add_column(col, justify="right")
    for precision, entry in record["files"].items():
        parity = entry.get("parity_qdq_reference") or entry.get("parity") or {}
        table.add_row(
            precision,
            f"{entry['size_bytes'] / 1e6:.1f}",
            _fmt(parity.get("agreement")),
            _fmt_sci(parity.get("max_abs_diff")),
            _fmt_sci(parity.get("mean_abs_diff")),
            _fmt(parity.get("accuracy_delta")),
        )
    return table


def _fmt_sci(v: Any) -> str:
    return f"{v:.2e}" if isinstance(v, float) else "-"


@app.command("build-engine")
@friendly_errors
def build_engine(
    target: Path = typer.Argument(..., help="Run dir (uses its export/) or one MODEL.onnx."),
    precision: str | None = typer.Option(
        None, help="Comma list of fp16, int8, fp32 (default: every exported one)."
    ),
    max_batch: int = typer.Option(
        32, help="Largest batch of the optimization profile (min 1, opt 8)."
    ),
    workspace_mb: int | None = typer.Option(None, help="Builder workspace limit in MiB."),
    dla_core: int | None = typer.Option(
        None, help="Build for this DLA core (Jetson AGX/NX), GPU fallback on."
    ),
    out: Path | None = typer.Option(None, help="Engines root (default: RUN/engines)."),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even when a matching engine is cached."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's verbose log."),
) -> None:
    """Build TensorRT engines from the exported ONNX, on the device that will run them.

    Precision lives in the ONNX graph (FP16 weights, INT8 Q/DQ): engines are built strongly
    typed, cached by (TensorRT version, GPU, precision, ONNX sha256, flags) under
    engines/<trt>_<gpu>_sm<cc>/ with a sidecar JSON, and reused when nothing changed.
    Example (on a Jetson): leukedge build-engine runs/r50 --precision fp16,int8 --max-batch 16
    """
    from leukedge.export.engine_plan import EngineBuildError
    from leukedge.export.tensorrt import build_engines

    try:
        results = build_engines(
            target,
            _split_list(precision),
            max_batch,
            workspace_mb,
            dla_core,
            out,
            force,
            log=lambda m: err_console.print(m),
            verbose=verbose,
        )
    except (EngineBuildError, ValueError) as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    table = Table(title="TensorRT engines")
    for col in ("precision", "engine", "status", "build s"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.sidecar.precision,
            str(r.engine_path),
            "reused" if r.reused else "built",
            _fmt(r.sidecar.build_seconds, 1),
        )
    console.print(table)


# ---------------------------------------------------------------------------- bench


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--batch-sizes takes integers like 1,8,32, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"--batch-sizes takes integers >= 1, got {text!r}")
    return sizes


@app.command()
@friendly_errors
def bench(
    run: Path = typer.Argument(..., help="Run dir, exported with `leukedge export`."),
    split: str = typer.Option("test", help="train | val | test | all: the images compared."),
    data: Path | None = typer.Option(None, help="The run's data, if it moved (or on a Jetson)."),
    backends: str | None = typer.Option(
        None,
        help="Comma list of torch, ort-fp32, ort-fp16, ort-int8, trt-fp32, trt-fp16, trt-int8, "
        "ort-*-cuda, qdq-int8-exact (default: every built-in; ort-*-cuda where ONNX Runtime "
        "has CUDA).",
    ),
    batch_sizes: str = typer.Option("1,8,32", help="Comma list of batch sizes to time."),
    warmup: int = typer.Option(5, min=0, help="Untimed calls per backend and batch size."),
    iters: int = typer.Option(30, min=1, help="Least timed calls per backend and batch size."),
    min_time: float = typer.Option(0.5, help="Least measured seconds per backend and batch size."),
    max_time: float = typer.Option(
        10.0, help="Most measured seconds per backend and batch size (caps --iters)."
    ),
    threads: int | None = typer.Option(
        None, min=1, help="CPU threads for ONNX Runtime and PyTorch (default: theirs)."
    ),
    torch_device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N for PyTorch."),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N images."),
    fp32_max_abs_diff: float | None = typer.Option(None, help="Budget (default 1e-3)."),
    fp16_min_agreement: float | None = typer.Option(None, help="Budget (default 0.999)."),
    int8_min_agreement: float | None = typer.Option(None, help="Budget (default 0.99)."),
    int8_max_accuracy_drop: float | None = typer.Option(None, help="Budget (default 0.01)."),
    fail_on_budget: bool = typer.Option(
        False, "--fail-on-budget", help="Exit 1 when any backend fails its parity budget."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN/bench)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json."),
) -> None:
    """Parity and latency of every backend against PyTorch fp32 on the same images.

    Writes report.json, report.md, latency.png and parity.png. Backends that cannot run
    here are listed as skipped with the reason.
    Example: leukedge bench runs/r50 --backends torch,ort-fp32,ort-int8 --batch-sizes 1,8
    """
    from leukedge.bench import run_bench
    from leukedge.bench.tables import parity_table, skipped_table
    from leukedge.progress import Reporter, RichReporter

    kwargs: dict[str, Any] = dict(
        split=split,
        data=data,
        backends=backends,
        batch_sizes=_batch_sizes(batch_sizes),
        warmup=warmup,
        iters=iters,
        out=out,
        budgets={
            "fp32_max_abs_diff": fp32_max_abs_diff,
            "fp16_min_agreement": fp16_min_agreement,
            "int8_min_agreement": int8_min_agreement,
            "int8_max_accuracy_drop": int8_max_accuracy_drop,
        },
        min_time_s=min_time,
        max_time_s=max_time,
        threads=threads,
        torch_device=torch_device,
        limit=limit,
    )
    if as_json:
        report = run_bench(run, reporter=Reporter(), **kwargs)
        _print_json(report)
    else:
        with RichReporter(console) as rep:
            report = run_bench(run, reporter=rep, **kwargs)
        for note in report["notes"]:
            console.print(f"[yellow]note:[/] {escape(note)}")
        skipped = skipped_table(report)
        if skipped is not None:
            console.print(skipped)
        console.print(parity_table(report))
        console.print(
            f"written to {escape(str(out or Path(run) / 'bench'))} (report.json, report.md, plots)"
        )
    failed = report["summary"]["failed"]
    if failed and fail_on_budget:
        err_console.print(f"[bold red]budget failed:[/] {escape(', '.join(failed))}")
        raise typer.Exit(1)


def main() -> None:
    # Idle OpenMP threads of PyTorch otherwise spin between calls and steal the cores
    # that ONNX Runtime is being timed on (interleaved bench, demo); must be set
    # before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    main()
