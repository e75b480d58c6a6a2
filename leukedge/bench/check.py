"""``leukedge check RUN``: does every backend on this machine still answer like PyTorch?

The command a lab runs after installing or updating JetPack (or ONNX Runtime,
OpenCV, a driver): every artifact of the run that can run here is loaded, the
export's parity set goes through this machine's preprocessing and each backend,
and each answer is compared with PyTorch's logits recorded at export, judged by
the same budgets as ``leukedge bench``. No PyTorch, no dataset, no timing: it
takes seconds and needs only ``spec.json`` and ``export/`` (and ``engines/``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.artifacts import QDQ_EXACT, TORCH, read_export_record
from leukedge.bench.backends import (
    BenchContext,
    BenchError,
    artifact_of,
    default_backends,
    int8_kernels_saturate,
    onnx_path,
    open_backend,
    parse_backends,
    precision_of,
)
from leukedge.bench.recorded import drift_notes, parity_set_info
from leukedge.budgets import Budgets, judge
from leukedge.export.parity import compare
from leukedge.machine import describe_machine
from leukedge.rundir import RunDir
from leukedge.runtime.backends.base import infer_in_batches
from leukedge.runtime.parityset import REFERENCE_NAME, ParitySet, ParitySetError, load_parity_set
from leukedge.spec import ModelSpec

CHECK_FORMAT = "leukedge.check"
CHECK_VERSION = 1
BATCH = 32
STATUSES = ("pass", "fail", "none", "unavailable")


def check_run(
    run_dir: str | Path,
    backends: str | Sequence[str] | None = None,
    budgets: Budgets | None = None,
    threads: int | None = None,
    gpu: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """One line per backend: its parity on the parity set against the recorded logits.

    ``status`` is pass/fail against the backend's budget, ``unavailable`` (with the
    reason) where it cannot run here, ``fail`` too where it opens but errors.
    ``passed`` is False when any available backend failed.
    """
    run = RunDir(run_dir)
    spec = run.spec()
    limits = budgets or Budgets()
    try:
        ps = load_parity_set(run.path, spec).head(limit)
    except ParitySetError as e:
        raise BenchError(str(e)) from None
    names = parse_backends(backends) if backends else default_backends()
    machine = describe_machine()
    x = ps.inputs(spec)
    ctx = BenchContext(run.path, spec, threads=threads, gpu=gpu, idle_spinning=False)
    lines: list[dict[str, Any]] = []
    torch_logits = None
    for name in names:
        if name == QDQ_EXACT:
            continue
        line, z = _check_one(name, ctx, ps, x, spec, limits)
        lines.append(line)
        if name == TORCH and z is not None:
            torch_logits = z
    ort_int8 = next((line for line in lines if line["name"] == "ort-int8"), None)
    automatic = ort_int8 is not None and ort_int8["status"] != "unavailable"
    if QDQ_EXACT in names or (automatic and int8_kernels_saturate(machine)):
        lines.append(_check_exact(ctx, ps, x, spec, limits))
    info = parity_set_info(ps, "reference", x, torch_logits, spec, limits)
    _attach_export_figures(lines, run.path)
    notes = drift_notes(info) + _int8_notes(lines)
    failed = [line["name"] for line in lines if line["status"] == "fail"]
    return {
        "format": CHECK_FORMAT,
        "version": CHECK_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path),
        "reference": REFERENCE_NAME,
        "parity_set": info,
        "budgets": limits.to_dict(),
        "machine": {k: machine.get(k) for k in ("cpu", "machine", "gpus", "jetson")},
        "backends": lines,
        "notes": notes,
        "passed": not failed,
        "failed": failed,
    }


def _line(name: str, precision: str | None, artifact: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "precision": precision,
        "artifact": artifact,
        "status": "unavailable",
        "reason": "",
        "parity": None,
        "budget": None,
    }


def _judged(line: dict[str, Any], parity: dict[str, Any], limits: Budgets) -> dict[str, Any]:
    verdict = judge(line["precision"], parity, limits)
    line.update(status=verdict["status"], parity=parity, budget=verdict)
    line["reason"] = "; ".join(verdict["reasons"])
    return line


def _check_one(
    name: str, ctx: BenchContext, ps: ParitySet, x: np.ndarray, spec: ModelSpec, limits: Budgets
) -> tuple[dict[str, Any], np.ndarray | None]:
    line = _line(name, precision_of(name), None)
    try:
        backend = open_backend(name, ctx)
    except Exception as e:  # not exported, no TensorRT/GPU, no PyTorch: not available here
        line["reason"] = str(e) or type(e).__name__
        return line, None
    line["artifact"] = artifact_of(backend)
    line["precision"] = getattr(backend, "precision", None) or line["precision"]
    line["device"] = getattr(backend, "device", None)
    try:
        z = infer_in_batches(backend, x, BATCH)
    except Exception as e:  # it opened, so it is expected to run: a failure
        line.update(status="fail", reason=f"{type(e).__name__}: {e}")
        return line, None
    finally:
        backend.close()
    return _judged(line, compare(ps.logits, z, ps.labels, spec), limits), z


def _check_exact(
    ctx: BenchContext, ps: ParitySet, x: np.ndarray, spec: ModelSpec, limits: Budgets
) -> dict[str, Any]:
    """The INT8 file's exact Q/DQ arithmetic (what TensorRT and ARM/VNNI kernels compute)."""
    from leukedge.export.parity import reference_logits

    line = _line(QDQ_EXACT, "int8", None)
    try:
        path = onnx_path(ctx, "int8")
    except Exception as e:  # not exported
        line["reason"] = str(e)
        return line
    line["artifact"] = str(path)
    line["device"] = "cpu"
    z = reference_logits(path, x, BATCH)
    return _judged(line, compare(ps.logits, z, ps.labels, spec), limits)


def _int8_notes(lines: list[dict[str, Any]]) -> list[str]:
    status = {line["name"]: line["status"] for line in lines}
    if status.get("ort-int8") == "fail" and status.get(QDQ_EXACT) == "pass":
        return [
            "ort-int8 fails on this CPU while the INT8 file's exact Q/DQ arithmetic passes: "
            "ONNX Runtime's int8 kernels saturate on x86 without VNNI; TensorRT and ARM do not "
            "(--backend auto leaves ort-int8 out when its export parity failed)"
        ]
    return []


def _attach_export_figures(lines: list[dict[str, Any]], run_dir: Path) -> None:
    """The training machine's figures of the same ONNX files on the same crops, beside ours."""
    recorded = (read_export_record(run_dir).get("parity_set") or {}).get("parity") or {}
    for line in lines:
        precision = line["precision"]
        if line["name"] == f"ort-{precision}" and precision in recorded and line["parity"]:
            at_export = recorded[precision]
            line["at_export"] = at_export
            line["same_as_export"] = all(line["parity"].get(k) == v for k, v in at_export.items())
