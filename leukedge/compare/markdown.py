"""report.md of a comparison, written to read like a paper's results section.

It leads with what is and is not significant, then the tables the claims rest
on. The reading at the end is mechanical and stated as a rule: the best model
by weighted F1; the models no test tells apart from it (after Holm); of those,
the cheapest to run.
"""

from __future__ import annotations

from typing import Any

from leukedge.stats import METRICS

TESTS = {"mcnemar": "McNemar", "f1_weighted": "Δ weighted F1", "auroc": "Δ AUROC"}


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _ci(entry: dict[str, Any], signed: bool = False) -> str:
    lo, hi = entry["ci95"]
    est = entry["estimate"]
    if est is None:
        return "–"
    spec = "+.3f" if signed else ".3f"
    return f"{est:{spec}} [{_f(lo)}, {_f(hi)}]"


def _mcnemar(m: dict[str, Any]) -> str:
    how = "exact" if m["exact"] else "χ²"
    return f"{m['b']} vs {m['c']} images, p = {_p(m['p_value'])} ({how}), Holm {_p(m['p_holm'])}"


def best_model(report: dict[str, Any]) -> str:
    """Highest weighted F1; ties broken by AUROC."""

    def key(name: str) -> tuple[float, float]:
        m = report["metrics"][name]
        return (m["f1_weighted"]["estimate"] or -1.0, m["auroc"]["estimate"] or -1.0)

    return max(report["metrics"], key=key)


def significant_winners(pair: dict[str, Any]) -> dict[str, str]:
    """For each test significant after Holm's correction, the model it favours."""
    a, b = pair["a"], pair["b"]
    out = {}
    for key in TESTS:
        if not pair[key]["significant"]:
            continue
        if key == "mcnemar":  # b: images only A got right, c: only B
            out[key] = a if pair[key]["b"] > pair[key]["c"] else b
        else:  # the estimate is A - B
            out[key] = a if (pair[key]["estimate"] or 0.0) > 0 else b
    return out


def tied_with(report: dict[str, Any], best: str) -> list[str]:
    """``best`` and every model the tests do not rank below it (Holm-corrected): no
    significant test, or significant tests that disagree."""
    tied = [best]
    for p in report["pairs"]:
        if best in (p["a"], p["b"]) and set(significant_winners(p).values()) != {best}:
            tied.append(p["b"] if p["a"] == best else p["a"])
    return tied


def cheapest(report: dict[str, Any], names: list[str]) -> tuple[str, str]:
    """The cheapest of ``names``: by batch-1 latency where all were benched on one machine,
    else by FLOPs, else by parameters; returns (name, why)."""
    cost = report["cost"]
    lat = {n: [r["batch1_p50_ms"] for r in cost[n]["latency"] if r["batch1_p50_ms"]] for n in names}
    if all(lat.values()) and not report.get("latency_mixed_machines"):
        n = min(names, key=lambda k: min(lat[k]))
        row = min(
            (r for r in cost[n]["latency"] if r["batch1_p50_ms"]),
            key=lambda r: r["batch1_p50_ms"],
        )
        return n, f"{row['batch1_p50_ms']:.1f} ms per image at batch 1 on {row['backend']}"
    if all(cost[n]["gflops"] is not None for n in names):
        n = min(names, key=lambda k: cost[k]["gflops"])
        return n, f"{cost[n]['gflops']:.2f} GFLOPs per image"
    n = min(names, key=lambda k: cost[k]["parameters"] or float("inf"))
    params = cost[n]["parameters"]
    return n, f"{params / 1e6:.1f} M parameters" if params else "no cost figures"


def findings(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    best = best_model(report)
    bm = report["metrics"][best]
    lines.append(
        f"- **{best}** has the highest weighted F1, {_ci(bm['f1_weighted'])} "
        f"(AUROC {_ci(bm['auroc'])})."
    )
    for p in report["pairs"]:
        d = p["f1_weighted"]
        parts = (
            f"Δ weighted F1 {_ci(d, signed=True)} (p = {_p(d['p_value'])}, Holm {_p(d['p_holm'])}); "
            f"Δ AUROC {_ci(p['auroc'], signed=True)} (Holm {_p(p['auroc']['p_holm'])}); "
            f"McNemar {_mcnemar(p['mcnemar'])}"
        )
        if p["significant"]:
            winners = significant_winners(p)
            which = ", ".join(f"{TESTS[k]}: {w}" for k, w in winners.items())
            if len(set(winners.values())) == 1:
                verdict = f"{next(iter(winners.values()))} is better"
            else:
                verdict = "the tests disagree on which is better"
            lines.append(f"- {p['a']} vs {p['b']}: **significant** ({which}); {verdict}. {parts}.")
        else:
            lines.append(f"- {p['a']} vs {p['b']}: not significant. {parts}.")
    tied = tied_with(report, best)
    name, why = cheapest(report, tied)
    if len(tied) == 1:
        lines.append(
            f"- Reading: {best} is significantly better than every other model by at least "
            "one test; "
            f"its cost: {why}."
        )
    else:
        lines.append(
            f"- Reading: no test shows {best} better than {', '.join(tied[1:])} after Holm's "
            f"correction; these data cannot rank them. The cheapest of them is **{name}** "
            f"({why})."
        )
    return lines


def _metrics_table(report: dict[str, Any]) -> list[str]:
    head = "| model | " + " | ".join(METRICS.values()) + " |"
    lines = [head, "|---" * (len(METRICS) + 1) + "|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(_ci(m[k]) for k in METRICS) + " |")
    return lines


def _pairs_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| A vs B | only A right | only B right | McNemar p (Holm) | Δ weighted F1 [95 %] | "
        "p (Holm) | Δ AUROC [95 %] | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in report["pairs"]:
        m, f, a = p["mcnemar"], p["f1_weighted"], p["auroc"]
        lines.append(
            f"| {p['a']} vs {p['b']} | {m['b']} | {m['c']} | {_p(m['p_value'])} "
            f"({_p(m['p_holm'])}) | {_ci(f, True)} | {_p(f['p_value'])} ({_p(f['p_holm'])}) | "
            f"{_ci(a, True)} | {_p(a['p_value'])} ({_p(a['p_holm'])}) |"
        )
    return lines


def _cost_tables(report: dict[str, Any]) -> list[str]:
    lines = [
        "| model | arch | input px | parameters | GFLOPs (batch 1) | checkpoint MB | "
        "ONNX fp32 MB | ONNX int8 MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in report["cost"].items():
        s = c["sizes_mb"]
        params = f"{c['parameters'] / 1e6:.2f} M" if c["parameters"] else "–"
        lines.append(
            f"| {name} | {c['arch']} | {c['input_size'] or '–'} | {params} | "
            f"{_f(c['gflops'], 3)} | {_f(s.get('checkpoint'), 1)} | "
            f"{_f(s.get('onnx_fp32'), 1)} | {_f(s.get('onnx_int8'), 1)} |"
        )
    rows = [(n, r) for n, c in report["cost"].items() for r in c["latency"]]
    if rows:
        lines += [
            "",
            "| model | backend | batch-1 p50 ms | p90 ms | images/s (batch) | agreement with torch |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in rows:
            lines.append(
                f"| {n} | {r['backend']} | {_f(r['batch1_p50_ms'], 2)} | "
                f"{_f(r['batch1_p90_ms'], 2)} | {_f(r['images_per_s'], 1)} "
                f"({r['throughput_batch']}) | {_f(r['agreement'], 4)} |"
            )
    else:
        lines += ["", "No bench report in any run: no latency (run `leukedge bench RUN`)."]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    data, res, corr = report["images"], report["resampling"], report["correction"]
    counts = ", ".join(f"{v} {k}" for k, v in data["class_counts"].items())
    oof = any(r["kind"] == "kfold" for r in report["runs"])
    lines = [
        "# Model comparison",
        "",
        f"{len(report['runs'])} models on the same {data['n']} images ({counts})"
        + (
            f", {res['units']} subjects"
            if res["unit"] == "subject"
            else ", no subject ids (images are the unit)"
        )
        + (
            "; k-fold runs score every image out of fold (by the fold model that held it out)"
            if oof
            else ""
        )
        + ". 95 % intervals: percentile bootstrap over "
        f"{res['units']} {res['unit']}s ({res['resamples']} resamples, stratified by class, "
        "the same resamples for every model and metric). Pairs: McNemar on per-image right/wrong "
        "(exact binomial under 25 discordant images), paired bootstrap of the weighted-F1 and "
        f"AUROC differences; p-values Holm-corrected over the {corr['pairs']} pair(s), "
        f"α = {corr['alpha']}.",
        "",
        "## Findings",
        "",
        *findings(report),
        "",
        "## Metrics",
        "",
        *_metrics_table(report),
        "",
        "Sensitivity and specificity are of the positive class "
        f"({report['positive_class']}); ECE is the top-label expected calibration error "
        "(15 bins; lower is better).",
        "",
        "## Paired tests",
        "",
        *_pairs_table(report),
        "",
        "## Cost",
        "",
        *_cost_tables(report),
        "",
        "## Figures",
        "",
    ]
    for f, alt in (
        ("pareto.png", "weighted F1 against batch-1 latency"),
        ("roc.png", "ROC curves"),
        ("confusion.png", "confusion matrices"),
    ):
        if f in report["files"]:
            lines.append(f"![{alt}]({f})")
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"
