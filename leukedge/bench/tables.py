"""A bench report as rich tables for a terminal (``leukedge bench``, the end of ``make demo``).

:func:`parity_table` shows the figures of report.md's first table
(:func:`leukedge.bench.markdown.summary_rows`) in fewer columns and shorter
numbers, so it fits 80 characters: the smallest batch only, the reasons of a
failed budget in the caption. :func:`skipped_table` lists the backends not
measured, grouped as in report.md. Both read report.json's content alone.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from leukedge.bench.markdown import grouped_skips


def _short(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def parity_table(report: dict[str, Any]) -> Table:
    """One row per backend, narrow enough for an 80-column terminal.

    Accuracy, its change, agreement, max |Δlogit|, p50 latency at the smallest batch,
    speed-up there and pass/fail; the reasons of a failed budget go in the caption.
    report.md has every column (:func:`leukedge.bench.markdown.summary_rows`).
    """
    data, ref = report["data"], report["reference"]
    first = min(report["settings"]["batch_sizes"])
    table = Table(
        title=f"{report['run']['name']}: parity vs {ref['backend']} on {data['images']} "
        f"{data['split']} images; latency at batch {first}"
    )
    for col in ("backend", "acc", "Δacc", "agree", "max|Δ|", "p50 ms", "speed-up", "budget"):
        table.add_column(col, justify="left" if col in ("backend", "budget") else "right")
    reasons = []
    for name, row in report["backends"].items():
        parity, delta = row["parity"], row["delta"] or {}
        lat = row["latency"].get(str(first)) or {}
        p50 = (lat.get("host_ms") or {}).get("p50") if "skipped" not in lat else None
        speed = (row["speedup"].get(str(first)) or {}).get("p50")
        status = row["budget"]["status"]
        mark = {"pass": "[green]✅ pass[/]", "fail": "[red]❌ fail[/]"}.get(status, status)
        if status == "fail":
            reasons.append(f"{name}: {'; '.join(row['budget']['reasons'])}")
        table.add_row(
            escape(name),
            _short((row["metrics"] or {}).get("accuracy"), ".3f"),
            "–" if row["is_reference"] else _short(delta.get("accuracy"), "+.3f"),
            _short(parity["agreement"], ".3f"),
            _short(parity["max_abs_diff"], ".1e"),
            _short(p50, ".2f"),
            "–" if speed is None else f"{speed:.1f}×",
            mark,
        )
    if reasons:
        table.caption = escape("  ".join(reasons))
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
