"""The schema of ``report.json`` (below), checked by :func:`validate_report`.

The report answers "what did compiling for the edge cost me in accuracy, and
what did it buy me in speed?" for one run dir on one machine. Reports of
different machines (a 2-core CPU, a Jetson) share this schema so they can be
compared side by side.

Schema, version 1 (``"format": "leukedge.bench"``). Numbers are floats unless
said; a figure that is undefined (AUROC with one class present, a percentile of
no samples) is ``null``, never NaN. Times are milliseconds.

```
format      "leukedge.bench"
version     1
created     ISO 8601 UTC time the report was made
run         {path, name, arch, input_size, classes, positive_class}
data        {root, split ("train"|"val"|"test"|"all"|"parity"), images (int),
             class_counts {class: int}, unreadable [{path, reason}]}; for "parity" the
            root is export/parity_set.npz and the images are its stored crops
reference   {backend, device, reason, speed_baseline}   the backend every other one is
            compared with: "torch" (PyTorch fp32), "torch (recorded at export)" (the parity
            set's logits, a parity-only row), or "ort-fp32" where PyTorch cannot run (reason
            says why); speed_baseline: the row speed-ups are relative to (null: none timed)
settings    {backends [requested names], batch_sizes [int], warmup (int),
             stop_rule {min_iters, min_time_s, max_time_s, max_iters},
             threads (int|null), torch_device, parity_batch (int),
             idle_threads {onnxruntime_spinning (bool), OMP_WAIT_POLICY}, budgets
             {fp32_min_agreement, fp32_max_abs_diff, fp16_min_agreement,
              int8_min_agreement, int8_max_accuracy_drop}}
machine     leukedge.machine.describe_machine(): cpu, cpu_cores, cpu_flags,
            gpus, jetson (power mode), versions, ...
runtimes    {onnxruntime {version, providers}, torch {version, cuda}|null,
             tensorrt {version|null, available (bool), detail}}
backends    {name: row}, the reference first, in the order measured
  row.name, row.kind            "measured" (parity and latency) | "parity-only"
  row.precision                 "fp32" | "fp16" | "int8" | null
  row.device, row.artifact      e.g. "cpu", "cuda:0"; the ONNX/engine file (null for torch)
  row.is_reference              true for exactly one row
  row.metrics                   leukedge.metrics.classification_metrics of the row (null if
                                its logits are not finite): accuracy, precision, recall,
                                f1_weighted, balanced_accuracy, auroc, confusion, ...
  row.delta                     row.metrics - reference metrics for accuracy, precision, recall,
                                f1_weighted, balanced_accuracy, auroc
  row.parity                    leukedge.metrics.logit_parity + accuracy(_reference/_delta):
                                n, agreement, agreement_ci95 [lo, hi] (Wilson),
                                disagreements (int), max_abs_diff, mean_abs_diff,
                                p99_abs_diff (per-image max |Δlogit|), cosine_min,
                                cosine_mean, all_finite
  row.disagreements             [{index, path, subject, label, reference {class, prob,
                                prob_<positive>}, backend {...}}]
  row.budget                    {status "pass"|"fail"|"none"|"reference",
                                 checks [{name, value, op ">="|"<=", limit, passed}],
                                 reasons [str]}
  row.latency                   {"<batch>": entry}; empty for parity-only rows. entry is
                                {batch, skipped: reason} or {batch, warmup, stopped
                                ("enough"|"max_time"|"max_iters"), host_ms stats,
                                device_ms stats|null (CUDA events), ms_per_image (p50/batch),
                                images_per_s (batch / mean)}; stats = {n, mean, std, min,
                                max, p50, p90, p99}
  row.speedup                   {"<batch>": {p50, throughput}}: reference p50 / row p50 and
                                row images/s / reference images/s, same run, same batch
  row.notes                     [str]
skipped     [{name, stage ("open"|"parity"|"latency"), reason}]: asked for, not measured
preprocess  {n, decode_ms stats, preprocess_ms stats, total_ms stats}: per image
parity_set  null, or the export's parity set: {file, sha256, images, side, class_counts,
            split_counts, recorded {created, device, checkpoint_sha256, versions},
            role ("reference"|"reproduction check"), images_used, preprocess_mismatches
            (crops whose tensor differs from the export machine's), version_changes
            {package: [at export, here]}, torch_reproduces (parity + verdict, or null
            where PyTorch did not run)}
notes       [str]
summary     {budget_passed (bool), failed [names], largest_batch (int)}
files       [names written beside report.json]
```
"""

from __future__ import annotations

import math
from typing import Any

REPORT_FORMAT = "leukedge.bench"
REPORT_VERSION = 1
FILES = ("report.json", "report.md", "latency.png", "parity.png")
KINDS = ("measured", "parity-only")
BUDGET_STATUS = ("pass", "fail", "none", "reference")
STOP_REASONS = ("enough", "max_time", "max_iters")
SKIP_STAGES = ("open", "parity", "latency")
STATS_KEYS = ("n", "mean", "std", "min", "max", "p50", "p90", "p99")
PARITY_KEYS = (
    "n",
    "agreement",
    "agreement_ci95",
    "disagreements",
    "max_abs_diff",
    "mean_abs_diff",
    "p99_abs_diff",
    "cosine_min",
    "cosine_mean",
    "all_finite",
)


class ReportError(ValueError):
    """A report that does not follow the schema; the message lists every problem."""


NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))

TOP_LEVEL: dict[str, Any] = {
    "format": str,
    "version": int,
    "created": str,
    "run": dict,
    "data": dict,
    "reference": dict,
    "settings": dict,
    "machine": dict,
    "runtimes": dict,
    "backends": dict,
    "skipped": list,
    "preprocess": dict,
    "notes": list,
    "summary": dict,
    "files": list,
}
RUN = {"path": str, "name": str, "arch": str, "input_size": int, "classes": list}
DATA = {"root": str, "split": str, "images": int, "class_counts": dict, "unreadable": list}
REFERENCE = {"backend": str, "device": OPT_STR, "reason": str}
SETTINGS = {
    "backends": list,
    "batch_sizes": list,
    "warmup": int,
    "stop_rule": dict,
    "parity_batch": int,
    "budgets": dict,
}
ROW = {
    "name": str,
    "kind": str,
    "precision": OPT_STR,
    "device": OPT_STR,
    "artifact": OPT_STR,
    "is_reference": bool,
    "metrics": (dict, type(None)),
    "delta": (dict, type(None)),
    "parity": dict,
    "disagreements": list,
    "budget": dict,
    "latency": dict,
    "speedup": dict,
    "notes": list,
}
SUMMARY = {"budget_passed": bool, "failed": list, "largest_batch": int}


def _types(
    obj: Any, spec: dict[str, Any], where: str, problems: list[str]
) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return None
    for key, kind in spec.items():
        if key not in obj:
            problems.append(f"{where}.{key}: missing")
        elif isinstance(obj[key], bool) and kind in (NUM, OPT_NUM, int):
            problems.append(f"{where}.{key}: expected a number, got a boolean")
        elif not isinstance(obj[key], kind):
            problems.append(f"{where}.{key}: expected {_kind_name(kind)}, got {obj[key]!r:.60}")
    return obj


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _stats(obj: Any, where: str, problems: list[str]) -> None:
    _types(obj, dict.fromkeys(STATS_KEYS, OPT_NUM), where, problems)


def _check_latency(entry: Any, where: str, problems: list[str]) -> None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object")
        return
    if "skipped" in entry:
        _types(entry, {"batch": int, "skipped": str}, where, problems)
        return
    spec = {
        "batch": int,
        "warmup": int,
        "stopped": str,
        "host_ms": dict,
        "device_ms": (dict, type(None)),
        "ms_per_image": OPT_NUM,
        "images_per_s": OPT_NUM,
    }
    if _types(entry, spec, where, problems) is None:
        return
    if entry.get("stopped") not in STOP_REASONS:
        problems.append(f"{where}.stopped: {entry.get('stopped')!r} not in {STOP_REASONS}")
    _stats(entry.get("host_ms"), f"{where}.host_ms", problems)
    if entry.get("device_ms") is not None:
        _stats(entry["device_ms"], f"{where}.device_ms", problems)


def _check_row(name: str, row: Any, batch_keys: set[str], problems: list[str]) -> None:
    where = f"backends.{name}"
    if _types(row, ROW, where, problems) is None:
        return
    if row.get("name") != name:
        problems.append(f"{where}.name: {row.get('name')!r} differs from its key")
    if row.get("kind") not in KINDS:
        problems.append(f"{where}.kind: {row.get('kind')!r} not in {KINDS}")
    _types(row.get("parity"), dict.fromkeys(PARITY_KEYS, object), f"{where}.parity", problems)
    agreement = (row.get("parity") or {}).get("agreement")
    if isinstance(agreement, NUM) and not 0.0 <= agreement <= 1.0:
        problems.append(f"{where}.parity.agreement: {agreement} outside [0, 1]")
    budget = _types(
        row.get("budget"), {"status": str, "checks": list, "reasons": list}, where, problems
    )
    if budget is not None and budget.get("status") not in BUDGET_STATUS:
        problems.append(f"{where}.budget.status: {budget.get('status')!r} not in {BUDGET_STATUS}")
    latency = row.get("latency") or {}
    if row.get("kind") == "parity-only" and latency:
        problems.append(f"{where}.latency: a parity-only row has no latency")
    if row.get("kind") == "measured" and set(latency) != batch_keys:
        problems.append(f"{where}.latency: batches {sorted(latency)} != {sorted(batch_keys)}")
    for key, entry in latency.items():
        _check_latency(entry, f"{where}.latency.{key}", problems)


def validate_report(report: Any) -> None:
    """Raise :class:`ReportError` listing every way ``report`` departs from the schema."""
    problems: list[str] = []
    if _types(report, TOP_LEVEL, "report", problems) is None:
        raise ReportError("; ".join(problems))
    if report.get("format") != REPORT_FORMAT:
        problems.append(f"report.format: {report.get('format')!r} is not {REPORT_FORMAT!r}")
    if report.get("version") != REPORT_VERSION:
        problems.append(f"report.version: {report.get('version')!r} is not {REPORT_VERSION}")
    _types(report.get("run"), RUN, "run", problems)
    _types(report.get("data"), DATA, "data", problems)
    _types(report.get("reference"), REFERENCE, "reference", problems)
    settings = _types(report.get("settings"), SETTINGS, "settings", problems) or {}
    _types(report.get("summary"), SUMMARY, "summary", problems)
    batch_keys = {str(b) for b in settings.get("batch_sizes") or []}
    rows = report.get("backends") if isinstance(report.get("backends"), dict) else {}
    for name, row in rows.items():
        _check_row(name, row, batch_keys, problems)
    refs = [n for n, r in rows.items() if isinstance(r, dict) and r.get("is_reference")]
    ref_name = (report.get("reference") or {}).get("backend")
    if refs != [ref_name]:
        problems.append(f"backends: reference rows {refs} != reference.backend {ref_name!r}")
    for i, s in enumerate(report.get("skipped") or []):
        _types(s, {"name": str, "stage": str, "reason": str}, f"skipped[{i}]", problems)
        if isinstance(s, dict) and s.get("stage") not in SKIP_STAGES:
            problems.append(f"skipped[{i}].stage: {s.get('stage')!r} not in {SKIP_STAGES}")
    pre = _types(report.get("preprocess"), {"n": int}, "preprocess", problems) or {}
    for key in ("decode_ms", "preprocess_ms", "total_ms"):
        _stats(pre.get(key), f"preprocess.{key}", problems)
    if _has_nan(report):
        problems.append("report: holds NaN or infinity (use null)")
    if problems:
        raise ReportError(f"{len(problems)} problem(s): " + "; ".join(problems))


def _has_nan(obj: Any) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_nan(v) for v in obj)
    return False


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None and tuples made lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy scalars
        return finite_or_none(obj.item())
    return obj
