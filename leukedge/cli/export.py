"""`leukedge export` and `leukedge build-engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from leukedge.cli import params
from leukedge.cli.common import (
    app,
    console,
    err_console,
    fmt,
    friendly_errors,
    print_json,
)
from leukedge.validate import MAX_BATCH


def _check_opset(value: int) -> int:
    """17 up to the newest opset the onnx package knows (torch's exporter may stop earlier)."""
    import onnx.defs

    newest = int(onnx.defs.onnx_opset_version())
    if not 17 <= value <= newest:
        raise typer.BadParameter(f"--opset must be in [17, {newest}], got {value}")
    return value


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
@friendly_errors
def export(
    run: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Run dir made by `leukedge train`."
    ),
    precision: str = typer.Option(
        "fp32,fp16,int8", help="Comma list of fp32, fp16, int8.", callback=params.precisions()
    ),
    calib_method: str = typer.Option(
        "minmax",
        help="INT8 calibration: minmax | entropy | percentile",
        callback=params.one_of("--calib-method", ("minmax", "entropy", "percentile")),
    ),
    calib_size: int | None = typer.Option(
        None,
        min=1,
        help="Calibrate on N val images (stratified by class and subject); default all.",
    ),
    opset: int = typer.Option(
        18,
        help="ONNX opset (>= 18: the exporter's lowest; at most what it supports).",
        callback=_check_opset,
    ),
    data: Path | None = typer.Option(None, help="The run's data, if it moved since training."),
    allow_incompatible: bool = typer.Option(
        False,
        "--allow-incompatible",
        help="Keep going when TensorRT's ONNX parser would refuse the INT8 file.",
    ),
    parity_images: int = typer.Option(
        256,
        min=0,
        help="Val/test crops in export/parity_set.npz with PyTorch's logits of them, the "
        "reference a device checks itself against (0: none).",
    ),
    parity_side: int | None = typer.Option(
        None, min=8, help="Short side of the stored crops (default 128, at least the input size)."
    ),
    triton_repo: Path | None = typer.Option(
        None,
        "--triton-repo",
        help="Also write a Triton Inference Server model repository here (ONNX files and the "
        "TensorRT engines under RUN/engines, each with its config.pbtxt). An exported run is "
        "not exported again: the repository is written from RUN/export.",
    ),
    triton_max_batch: int = typer.Option(
        32, "--triton-max-batch", min=1, max=4096, help="max_batch_size of the Triton models."
    ),
    triton_queue_delay_us: int = typer.Option(
        500,
        "--triton-queue-delay-us",
        min=0,
        max=10_000_000,
        help="How long Triton's dynamic batcher waits for more requests (microseconds).",
    ),
    triton_instances: int = typer.Option(
        1, "--triton-instances", min=1, max=64, help="Instances of each Triton model."
    ),
    triton_name: str | None = typer.Option(
        None, "--triton-name", help="Prefix of the Triton model names (default leukedge-<arch>)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print export.json."),
) -> None:
    """Export to ONNX: FP32, FP16 (I/O fp32) and INT8 Q/DQ calibrated on the validation split.

    Writes RUN/export/model.{fp32,fp16,int8}.onnx, calibration.json, parity_set.npz (val/test
    crops with PyTorch's logits of them, for devices without PyTorch or data) and export.json
    with each file's size, sha256, parity against PyTorch on the validation split and whether
    TensorRT's ONNX parser will take it. An INT8 file it would refuse is an error (exit 1)
    unless --allow-incompatible.
    Example: leukedge export runs/r50 --precision fp16,int8 --calib-method entropy
    """
    from leukedge.export import export_run
    from leukedge.progress import RichReporter
    from leukedge.rundir import RunDir

    if triton_repo is not None:
        from leukedge.artifacts import export_record_path
        from leukedge.inference_server.repository import RepoOptions, check_target

        repo_options = RepoOptions(
            triton_max_batch, triton_queue_delay_us, triton_instances, triton_name
        )
        check_target(triton_repo)  # before anything is exported or written
        if export_record_path(run).is_file():
            _write_triton_repo(run, triton_repo, repo_options, as_json)
            return
    RunDir(run).require("spec.json", "checkpoint.pt")  # before torch is imported

    args = (run, precision, calib_method, calib_size, opset, data)
    parity: dict[str, Any] = {"parity_images": parity_images, "parity_side": parity_side}
    if as_json:
        print_json(export_run(*args, allow_incompatible=allow_incompatible, **parity))
        if triton_repo is not None:
            _write_triton_repo(run, triton_repo, repo_options, as_json=False, quiet=True)
        return
    with RichReporter(console) as rep:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = rep.task(stage, total)
            rep.progress.update(tasks[stage], completed=done, total=total)

        record = export_run(*args, progress, allow_incompatible=allow_incompatible, **parity)
    console.print(export_table(record))
    entry = record.get("parity_set")
    if entry:
        console.print(
            f"parity set: {entry['images']} crops ({entry['size_bytes'] / 1e6:.1f} MB) with "
            "PyTorch's logits, the reference `leukedge check` and `leukedge bench` use on a device"
        )
    for w in record["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    console.print(f"written to {Path(run) / 'export'} (export.json has every figure)")
    console.print(f"next: leukedge bench {run}   or on a Jetson: leukedge build-engine {run}")
    if triton_repo is not None:
        _write_triton_repo(run, triton_repo, repo_options, as_json=False)


def _write_triton_repo(
    run: Path, out: Path, options: Any, as_json: bool, quiet: bool = False
) -> None:
    """Write the Triton model repository and say what is in it."""
    from leukedge.inference_server.repository import write_repository

    result = write_repository(run, out, options)
    if quiet:
        return
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"Triton model repository {escape(str(out))}")
    for col in ("model", "platform", "precision", "max batch"):
        table.add_column(col)
    for m in result.models:
        table.add_row(m["name"], m["platform"], m["precision"], str(m["max_batch"]))
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    first = result.models[0]["name"]
    console.print(
        f"start it: tritonserver --model-repository {escape(str(out))}   (README.md inside)\n"
        f"then: leukedge run {escape(str(run))} --backend triton://HOST:8001/{first} --source ..."
    )


def export_table(record: dict[str, Any]) -> Table:
    table = Table(
        title=f"{record['arch']} exported; parity vs PyTorch on {record['parity_images']} {record['parity_split']} images"
    )
    for col in (
        "precision",
        "MB",
        "agreement",
        "max |Δlogit|",
        "mean |Δlogit|",
        "Δ accuracy",
        "TensorRT",
    ):
        table.add_column(col, justify="right")
    for precision, entry in record["files"].items():
        parity = entry.get("parity_qdq_reference") or entry.get("parity") or {}
        table.add_row(
            precision,
            f"{entry['size_bytes'] / 1e6:.1f}",
            fmt(parity.get("agreement")),
            _fmt_sci(parity.get("max_abs_diff")),
            _fmt_sci(parity.get("mean_abs_diff")),
            fmt(parity.get("accuracy_delta")),
            _fmt_tensorrt(entry),
        )
    return table


def _fmt_tensorrt(entry: dict[str, Any]) -> str:
    """Whether TensorRT's parser takes the file; the reasons are printed as notes."""
    ok = entry.get("tensorrt_compatible")
    if ok is None:
        return "-"
    issues = len(entry.get("tensorrt_issues") or [])
    return "parses" if ok else f"[red]refused[/] ({issues} issue{'s' if issues != 1 else ''})"


def _fmt_sci(v: Any) -> str:
    return f"{v:.2e}" if isinstance(v, float) else "-"


@app.command("build-engine")
@friendly_errors
def build_engine(
    target: Path = typer.Argument(
        ..., exists=True, help="Run dir (uses its export/) or one MODEL.onnx."
    ),
    precision: str | None = typer.Option(
        None,
        help="Comma list of fp16, int8, fp32 (default: every exported one).",
        callback=params.precisions(),
    ),
    max_batch: int | None = typer.Option(
        None,
        min=1,
        max=MAX_BATCH,
        help="Largest batch of the optimization profile (default 32; min 1).",
    ),
    opt_batch: int | None = typer.Option(
        None,
        min=1,
        max=MAX_BATCH,
        help="Batch size TensorRT tunes for (default min(8, --max-batch)).",
    ),
    batch: int | None = typer.Option(
        None,
        min=1,
        max=MAX_BATCH,
        help="A static engine for exactly this batch (min = opt = max); DLA needs one "
        "(default 1 with --dla-core).",
    ),
    workspace_mb: int | None = typer.Option(
        None, min=1, max=1 << 20, help="Builder workspace limit in MiB."
    ),
    dla_core: int | None = typer.Option(
        None,
        min=0,
        max=15,
        help="Build for this DLA core (Jetson AGX/NX Orin, Xavier): FP16/INT8 only, static "
        "shape, GPU fallback for what DLA cannot run.",
    ),
    tf32: bool = typer.Option(
        False, "--tf32", help="Allow TF32 in fp32 layers (off: an fp32 engine computes in fp32)."
    ),
    builder_optimization_level: int | None = typer.Option(
        None,
        min=0,
        max=5,
        help="0..5, TensorRT's default 3: higher builds longer for faster engines.",
    ),
    out: Path | None = typer.Option(None, help="Engines root (default: RUN/engines)."),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even when a matching engine is cached."
    ),
    timing_cache: str = typer.Option(
        "auto", help="The run's timing cache: auto (beside the engines), none, or a file."
    ),
    shared_timing_cache: str = typer.Option(
        "auto",
        help="This machine's timing cache: auto (~/.cache/leukedge/tensorrt/<target>/, "
        "$LEUKEDGE_CACHE_DIR), none, or a file.",
    ),
    parity: bool = typer.Option(
        True,
        "--parity/--no-parity",
        help="Run each new engine on the export's parity set (or, without one, the "
        "validation images).",
    ),
    parity_images: int | None = typer.Option(
        None,
        min=1,
        help="Measure parity on the first N parity-set crops (stratified); default all.",
    ),
    data: Path | None = typer.Option(
        None, help="The run's data, if it moved (only for an export without a parity set)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="TensorRT's verbose log in the build log file."
    ),
) -> None:
    """Build TensorRT engines from the exported ONNX, on the device that will run them.

    Precision lives in the ONNX graph (FP16 weights, INT8 Q/DQ): engines are built strongly
    typed, cached by (TensorRT version, GPU, precision, ONNX sha256, flags) under
    engines/<trt>_<gpu>_sm<cc>/ with a sidecar JSON and TensorRT's build log, and reused when
    nothing changed. Each new engine runs on the export's parity set against PyTorch's logits
    recorded at export (no PyTorch or data needed here; an older export without a parity set:
    the validation images against ONNX Runtime fp32); one that fails its parity budget is
    kept but left out of --backend auto. A precision that
    fails does not stop the others; the exit code is 1 when any failed.
    Example (on a Jetson): leukedge build-engine runs/r50 --precision fp16,int8 --max-batch 16
    """
    from leukedge.export.tensorrt import build_engines
    from leukedge.runtime.backends.engine_plan import BuildFlags, EngineBuildError

    try:
        flags = BuildFlags.create(
            max_batch, workspace_mb, dla_core, opt_batch, batch, tf32, builder_optimization_level
        )
        outcomes = build_engines(
            target,
            _split_list(precision),
            out=out,
            force=force,
            timing_cache=timing_cache,
            log=lambda m: err_console.print(escape(m)),
            verbose=verbose,
            flags=flags,
            shared_timing_cache=shared_timing_cache,
            parity=parity,
            parity_images=parity_images,
            data=data,
        )
    except (EngineBuildError, ValueError) as e:  # flags that cannot build: a usage error
        err_console.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    console.print(_engines_table(outcomes))
    for line in _engine_notes(outcomes):
        console.print(line)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def _engines_table(outcomes: list[Any]) -> Table:
    table = Table(title="TensorRT engines")
    for col in ("precision", "status", "engine", "build s", "parity"):
        table.add_column(col)
    for o in outcomes:
        r = o.result
        table.add_row(
            o.precision,
            o.status,
            escape(str(r.engine_path)) if r else "(below)",
            fmt(r.sidecar.build_seconds, 1) if r and not r.reused else "-",
            _parity_cell(r.sidecar.parity) if r else "-",
        )
    return table


def _parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity or not parity.get("measured"):
        return "not measured"
    status = parity["verdict"]["status"]
    mark = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]"}.get(status, status)
    return f"{mark}: agreement {parity['agreement']:.4f}, max |Δ| {parity['max_abs_diff']:.2g}"


def _engine_notes(outcomes: list[Any]) -> list[str]:
    """Why an engine is left out of --backend auto, DLA placement, failures, the build logs."""
    notes = []
    for o in outcomes:
        r = o.result
        if o.status == "failed":
            notes.append(f"[bold red]{o.precision} failed:[/] {escape(o.message)}")
            continue
        if r is None:
            notes.append(f"[yellow]{o.precision} skipped:[/] {escape(o.message)}")
            continue
        side = r.sidecar
        if side.parity_failed:
            notes.append(
                f"[yellow]{o.precision}: left out of --backend auto[/], its parity "
                f"({escape(str((side.parity or {}).get('reference')))}) failed the budget "
                f"({escape('; '.join(side.parity_failed))}); "
                f"run it by name with --backend trt-{o.precision}"
            )
        elif side.parity and not side.parity.get("measured"):
            notes.append(f"{o.precision}: parity not measured: {escape(side.parity['reason'])}")
        for w in side.warnings:
            notes.append(f"[yellow]{o.precision}:[/] {escape(w)}")
        if r.build_log is not None and not r.reused:
            notes.append(f"{o.precision}: TensorRT build log {escape(str(r.build_log))}")
    return notes
