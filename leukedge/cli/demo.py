"""`leukedge demo`: the whole path on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from leukedge.cli.common import app, console, friendly_errors


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(
        Path("demo-out"),
        help="Folder for everything the demo writes: new, empty, or an earlier demo's.",
    ),
    n: int = typer.Option(1200, "--n", min=100, max=1_000_000, help="Synthetic cells to generate."),
    frames: int = typer.Option(
        8, min=1, max=10_000, help="Synthetic smear frames for the pipeline."
    ),
    epochs: int = typer.Option(4, min=1, max=10_000, help="Training epochs for the demo CNN."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for data and training."),
) -> None:
    """The whole path on built-in synthetic data, in a few minutes on a laptop CPU.

    synthesize -> train the CNN -> export FP32/FP16/INT8 ONNX -> run the microscope
    pipeline on synthetic frames -> bench every backend against PyTorch.
    """
    from leukedge.demo import run_demo

    run_demo(out, n=n, epochs=epochs, seed=seed, frames=frames, console=console)
