"""The `leukedge` command line: parse, call the library, show progress and results.

Each command is thin; the work lives in the library so the Python API does
exactly what the CLI does. Errors leukedge anticipates (bad data, missing run
files, unavailable backends) end with a one-paragraph message and exit code 2,
not a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
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
    from leukedge.data.records import DatasetError
    from leukedge.rundir import RunDirError
    from leukedge.runtime.backends.base import BackendError
    from leukedge.runtime.images import ImageReadError
    from leukedge.spec import SpecError

    known: list[type[BaseException]] = [
        DatasetError,
        RunDirError,
        BackendError,
        ImageReadError,
        SpecError,
        FileExistsError,
        FileNotFoundError,
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
            err_console.print(f"[bold red]error:[/] {e}")
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
        console.print(f"[yellow]note:[/] {w}")
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
        console.print(f"[yellow]note:[/] {note}")
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
    n: int = typer.Option(1600, "--n", help="Synthetic cells to generate."),
    epochs: int = typer.Option(4, help="Training epochs for the demo CNN."),
    seed: int = typer.Option(0, help="Seed for data and training."),
) -> None:
    """The whole path on built-in synthetic data, in a few minutes on a laptop CPU."""
    from leukedge.demo import run_demo

    run_demo(out, n=n, epochs=epochs, seed=seed, console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
