"""Shared parts of the command line: the Typer apps, consoles, error handling, tables.

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
    from leukedge.bench.schema import ReportError
    from leukedge.data.records import DatasetError
    from leukedge.imaging.images import ImageReadError
    from leukedge.rundir import RunDirError
    from leukedge.runtime.backends.base import BackendError
    from leukedge.runtime.display import DisplayUnavailable
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
    from leukedge.predictions import PredictionsError

    known.append(PredictionsError)
    try:
        from leukedge.compare.runs import CompareError

        known.append(CompareError)
    except ImportError:  # scipy/statsmodels missing: the runtime-only install
        pass
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


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def fmt(v: Any, digits: int = 4) -> str:
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
        fmt(metrics["accuracy"]),
        fmt(metrics["f1"]),
        fmt(metrics["f1_weighted"]),
        fmt(metrics["balanced_accuracy"]),
        fmt(metrics["auroc"]),
        fmt(metrics["precision"]),
        fmt(metrics["recall"]),
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
