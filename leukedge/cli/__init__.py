"""The `leukedge` command line: one module per group of commands, registered on one app.

`leukedge.cli.common` holds the Typer app, the consoles and the error handling
every command shares; importing the command modules below registers them.
"""

from __future__ import annotations

import importlib
import os

from leukedge.cli.common import app

# Registered in the order `leukedge --help` lists them: the order of the work.
COMMAND_MODULES = (
    "data",
    "train",
    "export",
    "run",
    "bench",
    "check",
    "serve",
    "compare",
    "demo",
)
for _name in COMMAND_MODULES:
    importlib.import_module(f"leukedge.cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    # Idle OpenMP threads of PyTorch otherwise spin between calls and steal the cores
    # that ONNX Runtime is being timed on (interleaved bench, demo); must be set
    # before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
