"""The differential count as a lab report: what `leukedge run` prints at the end."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from leukedge.cli.common import shift_line


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def count_table(summary: dict[str, Any]) -> Table | None:
    """Cells counted once each, blasts, blast % with its interval; None without a count."""
    u = summary.get("unique_cells")
    if not u:
        return None
    positive = (u.get("positive_class") or "all").upper()
    title = "differential count"
    if u.get("target"):
        reached = "reached" if u.get("target_reached") else "not reached"
        title += f" (target {u['target']} cells: {reached})"
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    by_class = ", ".join(f"{c} {n}" for c, n in u["by_class"].items())
    table.add_row("cells counted", f"{u['cells']} ({by_class}), each counted once")
    br = u["blast_ratio"]
    table.add_row(f"blasts ({positive})", str(u["blasts"]))
    if br["ratio"] is None:
        table.add_row("blast %", "-")
    else:
        lo, hi = br["ci95"]
        table.add_row("blast %", f"{_pct(br['ratio'])}  (95% CI {_pct(lo)}-{_pct(hi)}, Wilson)")
    lo_b, hi_b = u["uncertain_band"]
    table.add_row("uncertain", f"{u['uncertain']} cells with P({positive}) in [{lo_b}, {hi_b}]")
    table.add_row("edge cells", f"{u['edge_only']} only ever cut by the frame edge (not counted)")
    if u.get("unconfirmed"):
        table.add_row(
            "unconfirmed",
            f"{u['unconfirmed']} seen whole fewer than {u['min_whole_sightings']} times "
            "(not counted)",
        )
    table.add_row("domain shift", shift_line(summary.get("domain_shift") or {}))
    frames = summary.get("frames") or {}
    motion = u.get("motion") or {}
    table.add_row(
        "frames",
        f"{frames.get('processed', 0)} read in {motion.get('fields', 0)} field(s); "
        f"{u['blurred_frames']} too blurred to classify",
    )
    table.add_row(
        "detections",
        f"{(summary.get('cells') or {}).get('total', 0)} (a cell once per frame it is in; "
        f"seen {u.get('sightings_mean') or 0}x on average)",
    )
    return table
