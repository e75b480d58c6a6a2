"""``report.md``: a bench report as Markdown, made from report.json alone.

The headline table first (one row per backend: accuracy, agreement, latency,
speed-up, budget), then the details a person looks up: every metric with its
change, latency per batch size, the machine, disagreements and skipped backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukedge.machine import markdown_machine


def _num(v: Any, fmt: str = ".4f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def _signed(v: Any, fmt: str = "+.4f") -> str:
    return _num(v, fmt)


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _budget_mark(row: dict[str, Any]) -> str:
    status = row["budget"]["status"]
    if status == "reference":
        return "reference"
    if status == "none":
        return "– (no budget)"
    mark = "✅" if status == "pass" else "❌"
    return f"{mark} {'; '.join(row['budget']['reasons'])}"


def _latency(row: dict[str, Any], batch: int) -> dict[str, Any] | None:
    entry = row["latency"].get(str(batch))
    return entry if entry and "skipped" not in entry else None


def summary_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """The headline table as text cells: report.md's first table, benchmark suite summaries."""
    sizes = report["settings"]["batch_sizes"]
    first, largest = min(sizes), max(sizes)
    rows = []
    for name, row in report["backends"].items():
        parity, delta = row["parity"], row["delta"] or {}
        small, big = _latency(row, first), _latency(row, largest)
        sp = row["speedup"].get(str(first)) or {}
        spl = row["speedup"].get(str(largest)) or {}
        rows.append(
            {
                "backend": name + (" (reference)" if row["is_reference"] else ""),
                "device": row["device"] or "–",
                "accuracy": _num((row["metrics"] or {}).get("accuracy")),
                "Δacc": "–" if row["is_reference"] else _signed(delta.get("accuracy")),
                "agreement": _num(parity["agreement"]),
                "max|Δlogit|": _num(parity["max_abs_diff"], ".2e"),
                f"p50 b{first} (ms)": _num(small["host_ms"]["p50"], ".3f") if small else "–",
                f"img/s b{largest}": _num(big["images_per_s"], ".1f") if big else "–",
                f"speed-up b{first}": _num(sp.get("p50"), ".2f", "–")
                + ("×" if sp.get("p50") else ""),
                f"speed-up b{largest}": _num(spl.get("throughput"), ".2f", "–")
                + ("×" if spl.get("throughput") else ""),
                "budget": _budget_mark(row),
            }
        )
    return rows


def _table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return ["(none)"]
    head = list(rows[0])
    out = ["| " + " | ".join(map(_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(r[h]) for h in head) + " |" for r in rows]
    return out


LATENCY_COLUMNS = (
    "backend",
    "batch",
    "n",
    "p50",
    "p90",
    "p99",
    "mean",
    "device p50",
    "ms/image",
    "img/s",
    "speed-up p50",
    "stopped",
)


def _latency_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, row in report["backends"].items():
        for key, entry in row["latency"].items():
            cells = dict.fromkeys(LATENCY_COLUMNS, "–")
            cells.update(backend=name, batch=key)
            if "skipped" in entry:
                cells["stopped"] = f"not run: {entry['skipped']}"
                rows.append(cells)
                continue
            h, d = entry["host_ms"], entry["device_ms"]
            cells.update(
                {
                    "n": str(h["n"]),
                    "p50": _num(h["p50"], ".3f"),
                    "p90": _num(h["p90"], ".3f"),
                    "p99": _num(h["p99"], ".3f"),
                    "mean": _num(h["mean"], ".3f"),
                    "device p50": _num(d["p50"], ".3f") if d else "–",
                    "ms/image": _num(entry["ms_per_image"], ".3f"),
                    "img/s": _num(entry["images_per_s"], ".1f"),
                    "speed-up p50": _num(row["speedup"].get(key, {}).get("p50"), ".2f"),
                    "stopped": entry["stopped"],
                }
            )
            rows.append(cells)
    return rows


def _metric_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, row in report["backends"].items():
        m, d, p = row["metrics"] or {}, row["delta"] or {}, row["parity"]
        cells = {"backend": name}
        for key, label in (
            ("accuracy", "accuracy"),
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1_weighted", "weighted F1"),
            ("balanced_accuracy", "balanced acc"),
            ("auroc", "AUROC"),
        ):
            delta = "" if row["is_reference"] else f" ({_signed(d.get(key))})"
            cells[label] = _num(m.get(key)) + delta
        lo, hi = p["agreement_ci95"]
        cells["agreement (95% CI)"] = f"{p['agreement']:.4f} ({_num(lo)}–{_num(hi)})"
        cells["mean|Δ|"] = _num(p["mean_abs_diff"], ".2e")
        cells["p99|Δ|"] = _num(p["p99_abs_diff"], ".2e")
        cells["cos min"] = _num(p["cosine_min"], ".6f")
        rows.append(cells)
    return rows


def _disagreement_rows(report: dict[str, Any], limit: int) -> tuple[list[dict[str, str]], int]:
    rows: list[dict[str, str]] = []
    total = 0
    for name, row in report["backends"].items():
        for d in row["disagreements"]:
            total += 1
            if len(rows) >= limit:
                continue
            rows.append(
                {
                    "backend": name,
                    "image": Path(d["path"]).name,
                    "subject": d["subject"] or "–",
                    "label": d["label"],
                    "reference": f"{d['reference']['class']} ({d['reference']['prob']:.3f})",
                    "backend answer": f"{d['backend']['class']} ({d['backend']['prob']:.3f})",
                }
            )
    return rows, total


def to_markdown(report: dict[str, Any], max_disagreements: int = 50) -> str:
    """report.md: the headline table first, then details a person looks up."""
    run, data, ref = report["run"], report["data"], report["reference"]
    budgets = report["settings"]["budgets"]
    lines = [
        f"# leukedge bench: {run['name']} ({run['arch']}, {run['input_size']} px)",
        "",
        f"{data['images']} images of the **{data['split']}** split of `{data['root']}`; "
        f"reference **{ref['backend']}** on {ref['device']} ({ref['reason']}). "
        f"Made {report['created']}.",
        "",
        *_table(summary_rows(report)),
        "",
        "Budgets: "
        f"FP32 agreement ≥ {budgets['fp32_min_agreement']:g} and max |Δlogit| ≤ "
        f"{budgets['fp32_max_abs_diff']:g}; FP16 agreement ≥ {budgets['fp16_min_agreement']:g}; "
        f"INT8 agreement ≥ {budgets['int8_min_agreement']:g} and accuracy drop ≤ "
        f"{budgets['int8_max_accuracy_drop']:g}. Speed-up: "
        f"{ref.get('speed_baseline') or ref['backend']} p50 / backend p50 at the "
        "smallest batch, and throughput ratio at the largest, measured interleaved in this run.",
        "",
    ]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {_cell(n)}" for n in report["notes"]], ""]
    lines += _parity_set_lines(report.get("parity_set"))
    lines += ["## Accuracy and parity", "", *_table(_metric_rows(report)), ""]
    lines += [
        "## Latency (host wall time, ms per batch)",
        "",
        *_table(_latency_rows(report)),
        "",
        _preprocess_line(report["preprocess"]),
        "",
        "## Machine",
        "",
        markdown_machine(report["machine"]),
        *_runtime_lines(report["runtimes"]),
        "",
    ]
    rows, total = _disagreement_rows(report, max_disagreements)
    lines += ["## Disagreements with the reference", ""]
    lines += _table(rows) if rows else ["None: every backend gives the reference's answer."]
    if total > len(rows):
        lines.append(f"\n… {total - len(rows)} more in report.json.")
    lines += ["", "## Skipped backends", ""]
    skipped = grouped_skips(report)
    lines += _table(skipped) if skipped else ["None."]
    return "\n".join(lines) + "\n"


def _parity_set_lines(info: dict[str, Any] | None) -> list[str]:
    """The parity set recorded at export: what it is, and whether PyTorch still reproduces it."""
    if not info:
        return []
    rec = info["recorded"]
    versions = ", ".join(f"{k} {v}" for k, v in (rec.get("versions") or {}).items() if v)
    repro = info.get("torch_reproduces")
    if repro is None:
        again = "PyTorch is not run here: the recorded logits are taken as they are."
    else:
        status = repro["verdict"]["status"]
        again = (
            f"Today's PyTorch on the same crops: max |Δlogit| {_num(repro['max_abs_diff'], '.2e')}, "
            f"agreement {_num(repro['agreement'])} ({'reproduces' if status == 'pass' else 'does NOT reproduce'})."
        )
    changes = info.get("version_changes") or {}
    changed = "; ".join(f"{p}: {old} → {new}" for p, (old, new) in changes.items())
    mismatched = info.get("preprocess_mismatches")
    return [
        "## Parity set",
        "",
        f"`{_cell(info['file'])}` (sha256 `{(info.get('sha256') or '')[:16]}…`, "
        f"{info['images']} crops of {', '.join(f'{n} {s}' for s, n in info['split_counts'].items())}, "
        f"short side ≤ {info.get('side')} px), used as the {info['role']}. PyTorch logits recorded "
        f"{rec.get('created')} on {rec.get('device')} with {versions}.",
        "",
        again + (f" Versions changed since: {changed}." if changed else ""),
        ""
        if mismatched is None
        else f"Preprocessing here reproduces the export machine's tensors on "
        f"{info['images_used'] - mismatched} of {info['images_used']} crops.",
        "",
    ]


def grouped_skips(report: dict[str, Any]) -> list[dict[str, str]]:
    """Skipped backends, those with the same stage and reason on one row."""
    groups: dict[tuple[str, str], list[str]] = {}
    for s in report["skipped"]:
        groups.setdefault((s["stage"], s["reason"]), []).append(s["name"])
    return [
        {"backend": ", ".join(names), "stage": stage, "reason": reason}
        for (stage, reason), names in groups.items()
    ]


def _preprocess_line(pre: dict[str, Any]) -> str:
    if not pre["n"]:
        return "Preprocessing: not measured."
    d, p, t = pre["decode_ms"], pre["preprocess_ms"], pre["total_ms"]
    return (
        f"Preprocessing per image (before any backend, {pre['n']} images): decode p50 "
        f"{_num(d['p50'], '.3f')} ms, preprocess p50 {_num(p['p50'], '.3f')} ms, "
        f"total p50 {_num(t['p50'], '.3f')} ms / p99 {_num(t['p99'], '.3f')} ms."
    )


def _runtime_lines(runtimes: dict[str, Any]) -> list[str]:
    ort, trt, torch = runtimes.get("onnxruntime"), runtimes.get("tensorrt"), runtimes.get("torch")
    lines = []
    if ort:
        lines.append(
            f"- ONNX Runtime {ort.get('version')}: {', '.join(ort.get('providers') or [])}"
        )
    if trt:
        lines.append(f"- TensorRT: {trt.get('detail')}")
    if torch:
        lines.append(f"- PyTorch {torch.get('version')}, CUDA {torch.get('cuda') or 'none'}")
    return lines
