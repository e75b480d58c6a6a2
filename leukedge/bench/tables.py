"""The bench's headline table for a terminal (``leukedge bench``, the end of ``make demo``).

The same cells as report.md's first table (:func:`leukedge.bench.report.summary_rows`),
so what a person reads on screen and in the file never disagree.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from leukedge.bench.report import grouped_skips, summary_rows


def parity_table(report: dict[str, Any]) -> Table:
    """One row per backend: accuracy, Δacc, agreement, max |Δlogit|, latency, speed-up, budget."""
    data, ref = report["data"], report["reference"]
    table = Table(
        title=f"{report['run']['name']}: parity vs {ref['backend']} on {data['images']} "
        f"{data['split']} images, latency interleaved"
    )
    rows = summary_rows(report)
    if not rows:
        return table
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("backend", "device", "budget") else "right")
    for row in rows:
        cells = [escape(v) for v in row.values()]
        budget = row["budget"]
        style = "green" if budget.startswith("✅") else "red" if budget.startswith("❌") else None
        cells[-1] = f"[{style}]{cells[-1]}[/]" if style else cells[-1]
        table.add_row(*cells)
    return table


def skipped_table(report: dict[str, Any]) -> Table | None:
    """Backends asked for and not measured, with the reason (None when there are none)."""
    if not report["skipped"]:
        return None
    table = Table(title="skipped backends")
    for col in ("backend", "stage", "reason"):
        table.add_column(col)
    for s in grouped_skips(report):
        table.add_row(escape(s["backend"]), s["stage"], escape(s["reason"]))
    return table
