"""`leukedge run`: the microscope pipeline from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from leukedge.cli import params
from leukedge.cli.common import (
    app,
    console,
    fmt,
    friendly_errors,
    print_json,
    print_scale_warning,
    print_shift_warning,
    shift_line,
)
from leukedge.cli.count_report import count_table
from leukedge.validate import FINDER_STAINS, MAX_BATCH


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
    adj = summary.get("blast_ratio_adjusted") or {}
    if adj.get("ratio") is not None:
        lo, hi = adj["ci95"]
        caveat = "; does not hold for these cells, see domain shift" if adj.get("note") else ""
        table.add_row(
            "adjusted",
            f"{adj['ratio']:.3f}  (95% CI {lo:.3f}-{hi:.3f}; corrected for sensitivity "
            f"{adj['tpr']:.2f} and false-positive rate {adj['fpr']:.2f}{caveat})",
        )
    elif adj.get("reason"):
        table.add_row("adjusted", f"- ({adj['reason']})")
    cal = summary.get("calibration") or {}
    if cal:
        lo_b, hi_b = cal["uncertain_band"]
        n = cal["uncertain"]
        table.add_row("unsure", f"{n} cell{'' if n == 1 else 's'} with P(ALL) in [{lo_b}, {hi_b}]")
    table.add_row("domain shift", shift_line(summary.get("domain_shift") or {}))
    fps = summary["throughput"]["frames_per_s"]
    table.add_row("frames/s", fmt(fps, 2))
    b = summary["backend"]
    table.add_row("backend", f"{b['chosen']} on {b['device']} ({b['reason']})")
    return table


def _latency_table(summary: dict[str, Any]) -> Table:
    table = Table(title="latency per stage (ms)")
    for col in ("stage", "n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for stage, s in summary["latency_ms"].items():
        table.add_row(
            stage, str(s["n"]), *(fmt(s[k], 1) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        )
    return table


@app.command("run")
@friendly_errors
def run_command(
    model: Path = typer.Argument(
        ...,
        exists=True,
        help="Run dir (its export/model.*.onnx and engines/), an .onnx or an .engine.",
    ),
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help="Image, folder or glob of images, video file, camera:N, csi:N[:WxH@FPS], "
        "rtsp://..., gst:PIPELINE.",
    ),
    backend: str = typer.Option(
        "auto",
        callback=params.backend(),
        help="auto (time every backend that runs here, keep the fastest within its parity "
        "budget) | ort | trt (any precision of one runtime) | one backend, named as "
        "`leukedge bench` names them: ort-fp32, ort-int8, ort-fp16-cuda, trt-fp16, trt-int8... | "
        "triton://HOST:PORT/MODEL (gRPC) or triton+http://HOST:PORT/MODEL: classify on a Triton "
        "Inference Server, find cells and preprocess here.",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N", callback=params.device()),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output folder (default: a new leukedge-run/<date-time>-<id>). A folder another "
        "run is writing is refused.",
    ),
    show: bool = typer.Option(
        False, "--show", help="Live window with boxes, labels and counts (q or Esc quits)."
    ),
    cell_diameter_px: float | None = typer.Option(
        None,
        "--cell-diameter-px",
        help="White-cell diameter in frame pixels (default: measured).",
        callback=params.cell_diameter(),
    ),
    um_per_px: float | None = typer.Option(
        None,
        "--um-per-px",
        help="Microns per pixel of the camera (instead of --cell-diameter-px).",
        callback=params.um_per_px(),
    ),
    finder_stain: str = typer.Option(
        "adaptive",
        "--finder-stain",
        help="How the cell finder tells nuclei from red cells: adaptive (each frame read "
        "through its own red-cell stain, brought back to the two labs' stains the finder "
        "was tuned on when its stain, lamp or camera lies far from them) | fixed (every "
        "frame read as it is; see benchmarks/results/finder_casts.md).",
        callback=params.one_of("--finder-stain", FINDER_STAINS),
    ),
    batch: int = typer.Option(
        8, "--batch", min=1, max=MAX_BATCH, help="Most cells classified in one batch."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
    count: int | None = typer.Option(
        None,
        "--count",
        min=1,
        max=1_000_000,
        help="Differential count: stop once N white cells are counted, each cell once "
        "however many frames it is in (100-200 is usual).",
    ),
    annotate: bool = typer.Option(
        True,
        "--annotate/--no-annotate",
        help="Write annotated frames (annotated/*.jpg for images, annotated.mp4 for video).",
    ),
    frame_format: str = typer.Option(
        "jpg",
        "--frame-format",
        help="Annotated frames of image sources: jpg (fast) or png (lossless, ~13x slower).",
        callback=params.one_of("--frame-format", ("jpg", "png")),
    ),
    serve: str | None = typer.Option(
        None,
        "--serve",
        metavar="[HOST:]PORT",
        help="Live page in the browser (stream, counts, speed, pause/reset/snapshot) at "
        "http://HOST:PORT/ while the run lasts; HOST 127.0.0.1 unless given, port 0 picks a "
        "free one. Needs the [serve] extra.",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="LEUKEDGE_TOKEN",
        help="Secret the live page asks for (?token= or the X-Leukedge-Token header); "
        "required when --serve listens beyond this machine.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of tables."),
) -> None:
    """Find, classify and count white cells in frames; writes cells.jsonl, summary.json, report.html.

    Each cell is counted once across frames (stage motion, matched positions);
    report.html shows every counted cell's picture for review.

    Ctrl-C (or q in the --show window) stops cleanly with every output written.
    Exit code 1 when the source failed mid-stream or the disk filled up (outputs up
    to then are kept).
    Example: leukedge run runs/r50 --source camera:0 --show --um-per-px 0.25
    """
    from leukedge.runtime.cells import CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.outfolder import new_run_folder
    from leukedge.runtime.pipeline import run_pipeline
    from leukedge.runtime.sources import open_source
    from leukedge.runtime.threads import plan_threads
    from leukedge.serve.server import live_page

    if cell_diameter_px is not None and um_per_px is not None:
        raise typer.BadParameter("give --cell-diameter-px or --um-per-px, not both")
    bind = _serve_bind(serve, token)
    threads = plan_threads()
    if show:
        from leukedge.runtime.display import require_display

        require_display()
    src = open_source(source, max_frames=max_frames)
    try:
        options = threads.open_options(device)
        if as_json:
            clf = Classifier.load(model, backend, device, batch, options=options)
        else:
            with console.status("choosing the backend (timing each candidate)"):
                clf = Classifier.load(model, backend, device, batch, options=options)
            console.print(f"backend [bold]{clf.backend.name}[/]: {clf.selection.reason}")
            for note in clf.selection.notes:
                console.print(f"[yellow]note:[/] {escape(note)}")
        finder = CellFinder.from_spec(
            clf.spec, cell_diameter_px=cell_diameter_px, um_per_px=um_per_px, stain=finder_stain
        )
        out_dir = out if out is not None else new_run_folder()
        announce = (lambda url: typer.echo(f"live page: {url}", err=True)) if as_json else None
        with clf, live_page(bind, token, out_dir, src.fps, announce or _announce) as feed:
            summary = _run_with_progress(
                lambda progress: run_pipeline(
                    clf,
                    src,
                    out_dir,
                    finder=finder,
                    batch=batch,
                    annotate=annotate,
                    show=show,
                    progress=progress,
                    model_name=str(model),
                    frame_format=frame_format,
                    live=feed,
                    threads=threads,
                    count=count,
                ),
                src,
                quiet=as_json,
            )
    finally:
        src.close()
    if as_json:
        print_scale_warning(summary.get("finder") or {})
        print_shift_warning(summary.get("domain_shift") or {})  # stderr: stdout stays JSON
        print_json(summary)
    else:
        console.print(_run_table(summary))
        console.print(_latency_table(summary))
        counted = count_table(summary)
        if counted is not None:
            console.print(counted)
        for skip in summary["skipped_frames"][:10]:
            console.print(f"[yellow]skipped[/] {escape(skip['name'])}: {escape(skip['reason'])}")
        if summary["frames"]["skipped"] > 10:
            console.print(f"... {summary['frames']['skipped'] - 10} more in summary.json")
        for warning in summary["source"].get("warnings", []):
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        if summary["message"]:
            console.print(f"[yellow]{summary['status']}:[/] {escape(summary['message'])}")
        report = " report.html," if summary["outputs"].get("report") else ""
        console.print(
            f"outputs in [bold]{escape(str(out_dir))}[/] (cells.jsonl, summary.json,{report} "
            "annotated)"
        )
        print_scale_warning(summary.get("finder") or {})
        if summary["outputs"].get("report_error"):
            console.print(
                f"[yellow]report.html not written:[/] {summary['outputs']['report_error']}"
            )
        print_shift_warning(summary.get("domain_shift") or {})  # last, where it is seen
    if summary["status"] in ("source_error", "backend_error", "failed"):
        raise typer.Exit(1)


def _serve_bind(serve: str | None, token: str | None) -> Any:
    """--serve and --token checked before anything loads (exit 2 when they cannot work)."""
    if serve is None:
        return None
    from leukedge.serve.bind import check_access, parse_bind
    from leukedge.serve.server import require_serve

    bind = parse_bind(serve)
    check_access(bind, token)
    require_serve()
    return bind


def _announce(url: str) -> None:
    console.print(f"live page: [bold]{escape(url)}[/] (until the run ends)")


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
