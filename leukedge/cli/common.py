"""Shared parts of the command line: the Typer apps, consoles, error handling, tables.

Each command is thin; the work lives in the library so the Python API does
exactly what the CLI does. Every error ends in one line saying what is wrong and
what to do (:mod:`leukedge.cli.errors`): exit code 2 for a wrong command line, 1
for a failure, never a traceback unless asked for with ``--debug``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leukedge import __version__
from leukedge.cli.errors import debug_enabled, describe

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


def _click_base(cls: type[BaseException]) -> type[BaseException]:
    """The ClickException class of the click that typer uses (vendored in typer >= 0.20)."""
    return next((c for c in cls.__mro__ if c.__name__ == "ClickException"), cls)


# Raised by typer/click for usage errors and clean exits: they report and exit themselves.
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    _click_base(typer.BadParameter),
    click.exceptions.ClickException,
    click.exceptions.Exit,
    click.exceptions.Abort,
)


class _State:
    """Options of the whole command line (set by the app callback for each invocation)."""

    debug = False


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error into one line and an exit code (2 usage, 1 failure); --debug re-raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: everything finished so far is saved")
            raise typer.Exit(130) from None
        except Exception as e:
            if debug_enabled(_State.debug):
                raise
            code, message = describe(e)
            err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


def print_json(obj: Any) -> None:
    """JSON on stdout that every strict reader accepts (non-finite numbers are null)."""
    from leukedge.io import json_safe

    sys.stdout.write(json.dumps(json_safe(obj, fallback=str), indent=2, allow_nan=False) + "\n")


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


def shift_line(shift: dict[str, Any]) -> str:
    if not shift.get("available"):
        return f"not measured ({shift.get('reason', 'no score')})"
    n, frac = shift["cells_scored"], shift["flagged_fraction"]
    if not n or frac is None:
        return "no cells scored"
    lo, hi = shift["ci95"]
    return (
        f"{shift['flagged']} of {n} cells unlike the training data ({frac:.0%}, 95% CI "
        f"{lo:.0%}-{hi:.0%}; ~5% expected on the training lab's own cells)"
    )


def print_shift_warning(shift: dict[str, Any]) -> None:
    """The domain-shift warning, loud, on stderr (also when --json keeps stdout for data)."""
    if shift.get("warning"):
        err_console.print(f"[bold red]warning:[/] {escape(shift['warning'])}")


def print_scale_warning(finder: dict[str, Any]) -> None:
    """The finder's warning that the white-cell size was a guess, on stderr (see summary.json's
    ``finder.scale``): counts on a guessed scale may be off, a calibration fixes it."""
    warning = (finder.get("scale") or {}).get("warning")
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}")


@app.callback(invoke_without_command=True)
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    debug: bool = typer.Option(
        False, "--debug", help="Show the Python traceback of an error (or LEUKEDGE_DEBUG=1)."
    ),
) -> None:
    _State.debug = debug
    if version:
        console.print(f"leukedge {__version__}")
        raise typer.Exit()
