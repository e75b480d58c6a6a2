"""Writing a bench report: ``report.json``, ``report.md`` and the plots, each atomically.

The schema lives in :mod:`leukedge.bench.schema`, the Markdown in
:mod:`leukedge.bench.markdown`, the pictures in :mod:`leukedge.bench.plots`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from leukedge.bench.markdown import to_markdown
from leukedge.bench.plots import latency_png, parity_png
from leukedge.bench.schema import validate_report
from leukedge.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sweep_stale_temps,
)


def write_report(
    report: dict[str, Any],
    out_dir: str | Path,
    plotters: dict[str, Callable[[dict[str, Any]], bytes]] | None = None,
) -> dict[str, Path]:
    """Validate, then write report.json, report.md and the plots, each atomically."""
    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out)
    if plotters is None:
        plotters = {"latency.png": latency_png, "parity.png": parity_png}
    written = {
        "report.json": atomic_write_json(out / "report.json", report),
        "report.md": atomic_write_text(out / "report.md", to_markdown(report)),
    }
    for name, plot in plotters.items():
        written[name] = atomic_write_bytes(out / name, plot(report))
    return written
