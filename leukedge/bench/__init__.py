"""Parity and latency of every compiled form of a model against the PyTorch original.

``run_bench(run_dir, ...)`` is what ``leukedge bench`` calls; see
:mod:`leukedge.bench.schema` for the report.json schema. Names are resolved on
first use, so ``import leukedge.machine`` (which the runtime does) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BenchError": "leukedge.bench.backends",
    "register_backend": "leukedge.bench.backends",
    "unregister_backend": "leukedge.bench.backends",
    "Budgets": "leukedge.budgets",
    "ReportError": "leukedge.bench.schema",
    "validate_report": "leukedge.bench.schema",
    "run_bench": "leukedge.bench.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'leukedge.bench' has no attribute {name!r}")
