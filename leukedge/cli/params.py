"""Checks of command-line values at the edge, before a command imports or writes anything.

Each factory returns a Typer callback that turns a bad value into a usage error
(exit 2) naming the option; the rules themselves live in :mod:`leukedge.validate`
so the Python API refuses the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import typer

from leukedge import validate

Check = Callable[[Any], Any]


def _edge(name: str, check: Callable[[Any], Any]) -> Check:
    """A callback that lets None through and reports a UsageError as a bad parameter."""

    def callback(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except (validate.UsageError, ValueError) as e:
            message = str(e).removeprefix(f"{name} ").removeprefix(f"{name}: ")
            raise typer.BadParameter(message) from None  # click names the option itself

    return callback


def number(name: str, lo: float | None = None, hi: float | None = None) -> Check:
    """A finite float within [lo, hi] (typer accepts 'nan' and 'inf' for floats)."""
    return _edge(name, lambda v: validate.finite(v, name, lo, hi))


def positive(name: str, hi: float | None = None) -> Check:
    return _edge(name, lambda v: validate.positive(v, name, hi))


def one_of(name: str, options: Sequence[str]) -> Check:
    return _edge(name, lambda v: validate.choice(v, name, tuple(options)))


def device(name: str = "--device") -> Check:
    return _edge(name, lambda v: validate.device_name(v, name))


def _parsed_by(name: str, parse: Callable[[str], Any]) -> Check:
    """Text that ``parse`` accepts, kept as text (the library parses it again)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as e:
            raise validate.UsageError(str(e)) from None
        return text

    return _edge(name, check)


def precisions(name: str = "--precision") -> Check:
    """A comma list of fp32, fp16, int8."""
    from leukedge.artifacts import parse_precisions

    return _parsed_by(name, parse_precisions)


def backend(name: str = "--backend") -> Check:
    """One backend name as ``leukedge bench`` names them (auto, ort, trt, ort-int8, ...)."""
    from leukedge.artifacts import parse_backend

    return _parsed_by(name, parse_backend)


def cell_diameter(name: str = "--cell-diameter-px") -> Check:
    return number(name, validate.MIN_CELL_DIAMETER_PX, validate.MAX_CELL_DIAMETER_PX)


def um_per_px(name: str = "--um-per-px") -> Check:
    return number(name, validate.MIN_UM_PER_PX, validate.MAX_UM_PER_PX)
