"""`leukedge compare`: models side by side on the same images, with intervals and paired tests."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from leukedge.cli.common import app, console, friendly_errors, print_json


@app.command()
@friendly_errors
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run dirs (their predictions.csv) or k-fold runs (their oof.csv)."
    ),
    out: Path = typer.Option(Path("compare"), help="Folder for report.md, report.json, PNGs."),
    align: bool = typer.Option(
        False, "--align", help="Runs scored on different images: compare the common ones."
    ),
    resamples: int = typer.Option(2000, help="Bootstrap resamples for intervals and tests."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of tables."),
) -> None:
    """Which model should a lab use? Metrics with 95% intervals, paired tests, cost, latency.

    Intervals are bootstrap over subjects where the data has them, else over images;
    pairs are tested with McNemar and paired bootstrap, Holm-corrected.

    Example: leukedge compare runs/cnn runs/r50 runs/vit --out compare/
    """
    from leukedge.compare import compare_runs
    from leukedge.compare.markdown import best_model
    from leukedge.progress import Reporter
    from leukedge.stats import METRICS

    if resamples < 100:
        raise typer.BadParameter("--resamples must be at least 100")
    report = compare_runs(runs, out, align, resamples, seed, reporter=Reporter())
    if as_json:
        print_json(report)
        return
    res = report["resampling"]
    table = Table(
        title=f"{report['images']['n']} images; 95% intervals over {res['units']} {res['unit']}s"
    )
    table.add_column("metric")
    for name in report["metrics"]:
        table.add_column(name, justify="right")
    for key, label in METRICS.items():
        table.add_row(label, *(_ci(m[key]) for m in report["metrics"].values()))
    console.print(table)
    pairs = Table(title="paired tests (Holm-corrected p)")
    for col in ("A vs B", "McNemar", "Δ weighted F1", "Δ AUROC", "significant"):
        pairs.add_column(col, justify="right")
    for p in report["pairs"]:
        pairs.add_row(
            f"{p['a']} vs {p['b']}",
            f"{p['mcnemar']['b']}:{p['mcnemar']['c']} p={_p(p['mcnemar']['p_holm'])}",
            f"{_ci(p['f1_weighted'], True)} p={_p(p['f1_weighted']['p_holm'])}",
            f"{_ci(p['auroc'], True)} p={_p(p['auroc']['p_holm'])}",
            "yes" if p["significant"] else "no",
        )
    console.print(pairs)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(
        f"highest weighted F1: {best_model(report)}. Written to {out}/ "
        f"({', '.join(report['files'])})"
    )


def _ci(entry: dict, signed: bool = False) -> str:
    est, (lo, hi) = entry["estimate"], entry["ci95"]
    if est is None:
        return "-"
    f = "+.3f" if signed else ".3f"
    return f"{est:{f}} [{_num(lo)}, {_num(hi)}]"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _p(v: float | None) -> str:
    return "-" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")
