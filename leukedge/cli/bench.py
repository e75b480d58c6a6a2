"""`leukedge bench`: parity and latency of every backend against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from leukedge.cli import params
from leukedge.cli.common import (
    app,
    console,
    err_console,
    friendly_errors,
    print_json,
)
from leukedge.validate import MAX_BATCH


def _check_backends(value: str | None) -> str | None:
    """Names the bench knows: built-in ones and those registered with register_backend."""
    if value is None:
        return None
    from leukedge.bench.backends import BenchError, parse_backends

    try:
        parse_backends(value)
    except BenchError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--batch-sizes takes integers like 1,8,32, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH:
        raise typer.BadParameter(f"--batch-sizes takes integers in [1, {MAX_BATCH}], got {text!r}")
    return sizes


@app.command()
@friendly_errors
def bench(
    run: Path = typer.Argument(..., exists=True, help="Run dir, exported with `leukedge export`."),
    split: str = typer.Option(
        "auto",
        help="train | val | test | all | parity: the images compared. parity: the export's "
        "parity set against PyTorch's logits recorded at export (no PyTorch or data needed); "
        "auto: parity where PyTorch, the checkpoint or the data is missing, else test.",
        callback=params.one_of("--split", ("auto", "train", "val", "test", "all", "parity")),
    ),
    data: Path | None = typer.Option(None, help="The run's data, if it moved (or on a Jetson)."),
    backends: str | None = typer.Option(
        None,
        callback=_check_backends,
        help="Comma list of torch, ort-fp32, ort-fp16, ort-int8, trt-fp32, trt-fp16, trt-int8, "
        "ort-*-cuda, qdq-int8-exact, triton://HOST:PORT/MODEL (a model on a Triton Inference "
        "Server, its latency with the network) (default: every built-in; ort-*-cuda where "
        "ONNX Runtime has CUDA).",
    ),
    batch_sizes: str = typer.Option("1,8,32", help="Comma list of batch sizes to time."),
    warmup: int = typer.Option(
        5, min=0, max=10_000, help="Untimed calls per backend and batch size."
    ),
    iters: int = typer.Option(
        30, min=1, max=1_000_000, help="Least timed calls per backend and batch size."
    ),
    min_time: float = typer.Option(
        0.5,
        help="Least measured seconds per backend and batch size.",
        callback=params.number("--min-time", 0.0, 86_400.0),
    ),
    max_time: float = typer.Option(
        10.0,
        help="Most measured seconds per backend and batch size (caps --iters).",
        callback=params.positive("--max-time", 86_400.0),
    ),
    threads: int | None = typer.Option(
        None, min=1, max=1024, help="CPU threads for ONNX Runtime and PyTorch (default: theirs)."
    ),
    torch_device: str = typer.Option(
        "auto", help="auto | cpu | cuda | cuda:N for PyTorch.", callback=params.device()
    ),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N images."),
    fp32_max_abs_diff: float | None = typer.Option(
        None, help="Budget (default 1e-3).", callback=params.number("--fp32-max-abs-diff", 0.0)
    ),
    fp16_min_agreement: float | None = typer.Option(
        None, help="Budget (default 0.999).", callback=params.number("--fp16-min-agreement", 0, 1)
    ),
    int8_min_agreement: float | None = typer.Option(
        None, help="Budget (default 0.99).", callback=params.number("--int8-min-agreement", 0, 1)
    ),
    int8_max_accuracy_drop: float | None = typer.Option(
        None,
        help="Budget (default 0.01).",
        callback=params.number("--int8-max-accuracy-drop", 0, 1),
    ),
    fail_on_budget: bool = typer.Option(
        False, "--fail-on-budget", help="Exit 1 when any backend fails its parity budget."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN/bench)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json."),
) -> None:
    """Parity and latency of every backend against PyTorch fp32 on the same images.

    On a device without PyTorch or data, the reference is PyTorch's logits recorded at
    export in export/parity_set.npz (--split parity); where PyTorch is installed, the bench
    also checks that it still reproduces them.

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
        print_json(report)
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
