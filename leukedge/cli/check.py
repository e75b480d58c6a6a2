"""`leukedge check`: every backend here against PyTorch's logits recorded at export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from leukedge.cli.common import app, console, friendly_errors, print_json

MARKS = {
    "pass": "[green]PASS[/]",
    "fail": "[bold red]FAIL[/]",
    "none": "[yellow]----[/]",
    "unavailable": "[dim]skip[/]",
}


@app.command()
@friendly_errors
def check(
    run: Path = typer.Argument(..., help="Run dir with spec.json and export/ (engines/ if built)."),
    backends: str | None = typer.Option(
        None, help="Comma list of backends (default: every built-in that could run here)."
    ),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N crops."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for ONNX Runtime."),
    gpu: int = typer.Option(0, min=0, help="GPU index for TensorRT and ONNX Runtime CUDA."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check every backend on this machine against PyTorch, with no PyTorch or data here.

    Runs the export's parity set (export/parity_set.npz: crops and the logits PyTorch gave
    for them at export) through this machine's preprocessing and every backend that can
    run here, and prints one pass/fail line per backend against its parity budget. Run it
    after installing or updating JetPack, ONNX Runtime or OpenCV. Exit code 1 when any
    available backend fails; backends that cannot run here are listed, not failed.
    Example (on a Jetson): leukedge check runs/r50
    """
    from leukedge.bench.check import check_run

    result = check_run(run, backends=backends, threads=threads, gpu=gpu, limit=limit)
    if as_json:
        print_json(result)
    else:
        for line in summary_lines(result):
            console.print(line)
    if not result["passed"]:
        raise typer.Exit(1)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The parity set in one line, then one line per backend, then the notes."""
    info = result["parity_set"]
    rec = info["recorded"]
    versions = rec.get("versions") or {}
    out = [
        f"{escape(result['run'])}: {info['images_used']} crops of {escape(info['file'])} "
        f"(sha256 {(info.get('sha256') or '')[:12]}…) against PyTorch's logits recorded "
        f"{escape(str(rec.get('created')))} (torch {versions.get('torch')}, timm "
        f"{versions.get('timm')})"
    ]
    width = max(len(line["name"]) for line in result["backends"]) if result["backends"] else 8
    skipped: dict[str, list[str]] = {}
    for line in result["backends"]:
        mark = MARKS.get(line["status"], line["status"])
        name = escape(line["name"].ljust(width))
        parity = line["parity"]
        if line["status"] == "unavailable":
            skipped.setdefault(line["reason"], []).append(line["name"])
            continue
        if parity is None:
            out.append(f"{mark}  {name}  error: {escape(line['reason'])}")
            continue
        acc = (
            f"  accuracy {parity['accuracy']:.3f} ({parity['accuracy_delta']:+.3f})"
            if "accuracy" in parity
            else ""
        )
        out.append(
            f"{mark}  {name}  agreement {parity['agreement']:.4f}  max|Δlogit| "
            f"{parity['max_abs_diff']:.1e}{acc}  {escape(line['reason'])}"
        )
    for reason, names in skipped.items():
        out.append(f"{MARKS['unavailable']}  {escape(', '.join(names))}: {escape(reason)}")
    out += [f"[yellow]note:[/] {escape(n)}" for n in result["notes"]]
    failed = result["failed"]
    out.append(
        "[green]every available backend is within its budget[/]"
        if not failed
        else f"[bold red]outside the budget:[/] {escape(', '.join(failed))}"
    )
    return out
