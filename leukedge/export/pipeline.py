"""``leukedge export RUN``: FP32, FP16 and INT8 ONNX files of a run, each measured.

Writes into ``RUN/export/``::

    model.fp32.onnx   the PyTorch model, opset >= 18, dynamic batch, ModelSpec embedded
    model.fp16.onnx   fp16 weights/compute, float32 I/O (built strongly typed by TensorRT)
    model.int8.onnx   Q/DQ, calibrated on the validation split
    calibration.json  the INT8 ranges, reused while the FP32 file and settings match
    export.json       every file with size, sha256, timings, parity against PyTorch and
                      whether TensorRT's ONNX parser will take it
    parity_set.npz    val/test crops + PyTorch's logits of them: the reference on a device

Parity is measured on the run's validation split (the INT8 calibration images are
part of it, so INT8 parity there is a best case; ``leukedge bench`` measures on the
test split). Every file is written atomically. Every file is checked against the
ONNX-TensorRT parser's rules (:mod:`leukedge.export.trt_compat`) here, on the
workstation: an INT8 file TensorRT would refuse fails the export unless
``allow_incompatible`` (export.json and the files are written either way).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.artifacts import (
    PRECISIONS,
    artifact,
    onnx_name,
    parse_precisions,
    read_export_record,
    write_export_record,
)
from leukedge.budgets import FP32_MAX_ABS_DIFF, Budgets, judge
from leukedge.data.arrays import ImageSet, load_image_set, stratified_subset
from leukedge.data.records import DatasetError, Record
from leukedge.export import fp16 as fp16_mod
from leukedge.export import int8 as int8_mod
from leukedge.export import trt_compat
from leukedge.export.onnx_export import (
    EXPORTER,
    MIN_OPSET,
    ExportArgumentError,
    ExportError,
    export_onnx,
    max_opset,
)
from leukedge.export.parity import (
    batch_check,
    compare,
    onnx_logits,
    reference_logits,
    torch_logits,
)
from leukedge.export.parityset import DEFAULT_IMAGES, write_parity_set
from leukedge.io import is_disk_full, sha256_file, sweep_stale_temps
from leukedge.rundir import RunDir, RunDirError
from leukedge.runtime.shift import SHIFT_FILE, find_shift_model
from leukedge.spec import FEATURES_NAME, OUTPUT_NAME, ModelSpec
from leukedge.validate import UnsafePathError, inside_root, integer

EXPORT_JSON_VERSION = 1
PARITY_SPLIT = "val"

Progress = Callable[[str, int, int], None]
# A file of this precision that TensorRT cannot parse fails the export.
GATED_PRECISIONS = ("int8",)


class TensorRTIncompatibleError(ExportError):
    """An exported file breaks the ONNX-TensorRT parser's rules; the message lists them."""


@dataclass
class ValImages:
    """The validation split, preprocessed once and shared by parity, fp16 checks and INT8."""

    records: list[Record] = field(default_factory=list)
    images: ImageSet | None = None
    relpaths: dict[str, str] = field(default_factory=dict)

    @property
    def x(self) -> np.ndarray | None:
        return self.images.x if self.images is not None and len(self.images) else None


def export_run(
    run_dir: str | Path,
    precisions: Sequence[str] | str = PRECISIONS,
    calib_method: str = "minmax",
    calib_size: int | None = None,
    opset: int = 18,
    data: str | Path | None = None,
    progress: Progress | None = None,
    allow_incompatible: bool = False,
    parity_images: int = DEFAULT_IMAGES,
    parity_side: int | None = None,
) -> dict[str, Any]:
    """Export a run to ONNX in ``precisions``; returns what was written to export.json.

    Raises :class:`TensorRTIncompatibleError` (after writing everything) when the INT8
    file breaks TensorRT's parser rules, unless ``allow_incompatible``.
    ``parity_images`` val/test crops (short side ``parity_side``) and PyTorch's logits of
    them go to ``parity_set.npz`` (:mod:`leukedge.export.parityset`); 0 writes none.
    """
    calib_method = calib_method.strip().lower()
    wanted = _check_args(precisions, calib_method, calib_size, opset)
    run = RunDir(run_dir)
    run.require("spec.json", "checkpoint.pt")
    spec = run.spec()
    out_dir = run.export_dir
    tell = progress or (lambda stage, done, total: None)
    warnings: list[str] = []
    errors: dict[str, str] = {}

    tell("load model", 0, 1)
    from leukedge.train.models import load_run_model

    model = load_run_model(run)
    out_dir.mkdir(parents=True, exist_ok=True)  # once the checkpoint has loaded
    sweep_stale_temps(out_dir)  # what a killed export left
    checkpoint_sha = sha256_file(run.checkpoint_path)
    tell("load model", 1, 1)
    val = _load_val(run, spec, data, warnings, tell)
    ref = torch_logits(model, val.x) if val.x is not None else None
    previous = _previous(out_dir, checkpoint_sha)
    files: dict[str, dict[str, Any]] = {}

    fp32_path = out_dir / onnx_name("fp32")
    todo = [p for p in PRECISIONS if p in wanted or (p == "fp32" and "fp32" not in previous)]
    if "fp32" not in todo:
        files["fp32"] = previous["fp32"]
    for precision in todo:
        path = out_dir / onnx_name(precision)
        try:
            if precision == "fp32":
                tell("export fp32", 0, 1)
                files["fp32"] = _export_fp32(
                    model, spec, fp32_path, opset, warnings, run, checkpoint_sha
                )
                tell("export fp32", 1, 1)
            elif precision == "fp16":
                tell("convert fp16", 0, 1)
                files["fp16"] = _convert_fp16(fp32_path, path, val.x, warnings)
                tell("convert fp16", 1, 1)
            else:
                files["int8"] = _quantize(
                    fp32_path, path, out_dir, val, calib_method, calib_size, warnings, tell
                )
            if ref is not None:
                tell(f"parity {precision}", 0, 1)
                files[precision].update(_parity(precision, path, val, ref, spec))
                tell(f"parity {precision}", 1, 1)
            files[precision].update(_file_facts(path, precision))
            if precision != "fp32":
                files[precision]["source_sha256"] = files["fp32"]["sha256"]
        except Exception as e:  # recorded in export.json, raised after the other files
            if precision == "fp32" or is_disk_full(e):  # a full disk stops the export at once
                raise
            errors[precision] = f"{type(e).__name__}: {e}"
    warnings += _budget_warnings(files)
    record = _record(run, spec, checkpoint_sha, files, previous, val, warnings, errors)
    tell("check for TensorRT", 0, 1)
    blocked = _tensorrt_verdicts(out_dir, record, allow_incompatible)
    tell("check for TensorRT", 1, 1)
    write_parity_set(run, spec, model, record, parity_images, parity_side, data, tell)
    tell("write export.json", 0, 1)
    record_path = write_export_record(out_dir, record)
    tell("write export.json", 1, 1)
    if errors:
        raise ExportError(
            "; ".join(f"{p}: {m}" for p, m in errors.items())
            + f" (the other files and {record_path} were written)"
        )
    if blocked:
        raise TensorRTIncompatibleError(
            "TensorRT's ONNX parser would refuse "
            + "; ".join(f"{name}: {'; '.join(reasons)}" for name, reasons in blocked.items())
            + f" (written anyway, see {record_path}; pass --allow-incompatible to accept it)"
        )
    return record


def _tensorrt_verdicts(
    out_dir: Path, record: dict[str, Any], allow_incompatible: bool
) -> dict[str, list[str]]:
    """Add each file's TensorRT verdict to ``record``; the gated files TensorRT refuses."""
    blocked: dict[str, list[str]] = {}
    for precision, entry in record["files"].items():
        entry.update(trt_compat.file_verdict(out_dir / entry["file"]))
        if entry["tensorrt_compatible"]:
            continue
        reasons = entry["tensorrt_issues"]
        if precision in GATED_PRECISIONS and not allow_incompatible:
            blocked[entry["file"]] = reasons
        else:
            record["warnings"].append(
                f"{precision}: TensorRT's ONNX parser would refuse {entry['file']}: "
                + "; ".join(reasons)
            )
    return blocked


def _parity(
    precision: str, path: Path, val: ValImages, ref: np.ndarray, spec: ModelSpec
) -> dict[str, Any]:
    """Parity through the runtime backend; for INT8 also the exact Q/DQ arithmetic."""
    assert val.x is not None and val.images is not None
    labels = val.images.labels
    out = {"parity": compare(ref, onnx_logits(path, val.x, spec), labels, spec)}
    if precision == "int8":
        out["parity_qdq_reference"] = compare(ref, reference_logits(path, val.x), labels, spec)
    return out


def _check_args(
    precisions: Sequence[str] | str, calib_method: str, calib_size: int | None, opset: int
) -> list[str]:
    """Refuse what cannot be exported before anything is loaded or written."""
    try:
        wanted = parse_precisions(precisions if isinstance(precisions, str) else tuple(precisions))
        if calib_size is not None:
            integer(calib_size, "--calib-size", 1)
        integer(opset, "--opset", MIN_OPSET, max_opset())
    except ValueError as e:  # UsageError included
        raise ExportArgumentError(str(e)) from None
    int8_mod.method_enum(calib_method)
    return wanted


def _load_val(
    run: RunDir, spec: ModelSpec, data: str | Path | None, warnings: list[str], tell: Progress
) -> ValImages:
    """The validation split's images, or an empty set with a warning when data is absent."""
    try:
        dataset, split = run.dataset_and_split(data)
    except (RunDirError, DatasetError, OSError) as e:
        warnings.append(f"no validation images ({e}): parity not measured, fp16 ranges not checked")
        return ValImages()
    records = split.records(dataset, PARITY_SPLIT)
    if not records:
        warnings.append("the validation split is empty: parity not measured")
        return ValImages()
    images = load_image_set(records, spec, progress=lambda i, n: tell("read images", i, n))
    if images.skipped:
        warnings.append(f"{len(images.skipped)} validation image(s) unreadable and skipped")
    return ValImages(records, images, {r.path: dataset.relpath(r.path) for r in records})


def _previous(out_dir: Path, checkpoint_sha: str) -> dict[str, dict[str, Any]]:
    """Entries of an earlier export.json of the same checkpoint whose files are unchanged."""
    old = read_export_record(out_dir)
    if old.get("checkpoint_sha256") != checkpoint_sha:
        return {}
    kept = {}
    files = old.get("files")
    for precision, entry in (files if isinstance(files, dict) else {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        try:  # a name in export.json must not point outside the export folder
            f = inside_root(out_dir, entry["file"], "file")
        except UnsafePathError:
            continue
        if f.is_file() and sha256_file(f) == entry.get("sha256"):
            kept[precision] = entry
    return kept


def _export_fp32(
    model: Any,
    spec: ModelSpec,
    path: Path,
    opset: int,
    warnings: list[str],
    run: RunDir,
    checkpoint_sha: str,
) -> dict[str, Any]:
    shift = find_shift_model(run.path)
    if shift is not None and shift.info.get("checkpoint_sha256") != checkpoint_sha:
        warnings.append(
            f"{SHIFT_FILE} was fitted on another checkpoint: not embedded, so the runtime "
            "reports no domain-shift score (retrain to refit it)"
        )
        shift = None
    result = export_onnx(model, spec, path, opset, shift=shift)
    warnings += result.warnings
    batches = batch_check(path, model, spec)
    worst = max(batches.values())
    if worst > FP32_MAX_ABS_DIFF:
        warnings.append(f"fp32 ONNX differs from PyTorch by {worst:.2e} on random batches")
    return {
        "exporter": EXPORTER,
        "requested_opset": opset,
        "export_seconds": round(result.seconds, 3),
        "graph": result.graph,
        "batch_check_max_abs_diff": batches,
        "outputs": [OUTPUT_NAME, FEATURES_NAME],
        "domain_shift_embedded": shift is not None,
    }


def _convert_fp16(
    src: Path, dst: Path, x: np.ndarray | None, warnings: list[str]
) -> dict[str, Any]:
    result = fp16_mod.convert_fp16(src, dst, x)
    warnings += [f"fp16: {w}" for w in result.warnings]
    return {"convert_seconds": round(result.seconds, 3), **result.record()}


def _quantize(
    src: Path,
    dst: Path,
    out_dir: Path,
    val: ValImages,
    method: str,
    calib_size: int | None,
    warnings: list[str],
    tell: Progress,
) -> dict[str, Any]:
    chosen = stratified_subset(val.records, calib_size) if calib_size else list(val.records)
    rel = [val.relpaths[r.path] for r in chosen]

    def images() -> tuple[np.ndarray, list[str]]:
        assert val.images is not None
        index = {p: i for i, p in enumerate(val.images.paths)}
        keep = [index[r.path] for r in chosen if r.path in index]
        return val.images.x[keep], [val.relpaths[val.images.paths[i]] for i in keep]

    have_images = val.x is not None and bool(chosen)
    result = int8_mod.quantize_int8(
        src,
        dst,
        out_dir / "calibration.json",
        method=method,
        images=images if have_images else None,
        image_count=len(chosen) if have_images else calib_size,
        images_id=int8_mod.images_digest(rel) if have_images else None,
        progress=lambda i, n: tell("calibrate int8", i, n),
    )
    warnings += [f"int8: {w}" for w in result.warnings]
    return {
        "quantize_seconds": round(result.seconds, 3),
        "calibration_seconds": round(result.calibration_seconds, 3),
        "calibration_reused": result.calibration_reused,
        "calibration": result.calibration,
        "excluded_nodes": result.excluded_nodes,
        "excluded_reasons": result.excluded_reasons,
        "preprocess": result.preprocess,
        "settings": result.settings,
        "residual_adds_quantized": result.residual_adds,
    }


def _file_facts(path: Path, precision: str) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "file": path.name,
        "precision": precision,
        "opset": opset,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _budget_warnings(files: dict[str, dict[str, Any]]) -> list[str]:
    """DESIGN.md's parity budgets, checked on the file's own arithmetic.

    INT8 is judged on the exact Q/DQ run; a much worse optimised ONNX Runtime run on
    this CPU is reported separately, as a property of the CPU kernels.
    """
    out = []
    budgets = Budgets()
    for precision, entry in files.items():
        parity = entry.get("parity_qdq_reference") or entry.get("parity")
        if not parity:
            continue
        verdict = judge(artifact(precision).budget_key, parity, budgets)
        if verdict["status"] == "fail":
            out += [f"{precision}: {reason}" for reason in verdict["reasons"]]
        if precision == "int8":
            out += _int8_cpu_warning(parity, entry["parity"])
    return out


def _int8_cpu_warning(exact: dict[str, Any], cpu: dict[str, Any]) -> list[str]:
    if (
        cpu["agreement"] < exact["agreement"]
        or cpu["max_abs_diff"] > 2 * exact["max_abs_diff"] + 0.1
    ):
        return [
            f"int8: ONNX Runtime's optimised int8 kernels on this CPU deviate more "
            f"(max |Δlogit| {cpu['max_abs_diff']:.3g}, agreement {cpu['agreement']:.4f}) than "
            f"the Q/DQ arithmetic ({exact['max_abs_diff']:.3g}, {exact['agreement']:.4f}): "
            "x86 CPUs without VNNI saturate int16 sums; TensorRT, VNNI and ARM do not"
        ]
    return []


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in ("leukedge", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _record(
    run: RunDir,
    spec: ModelSpec,
    checkpoint_sha: str,
    files: dict[str, dict[str, Any]],
    previous: dict[str, dict[str, Any]],
    val: ValImages,
    warnings: list[str],
    errors: dict[str, str],
) -> dict[str, Any]:
    source = files["fp32"].get("sha256")
    merged = {
        p: previous[p]
        for p in PRECISIONS
        if p in previous and p not in files and previous[p].get("source_sha256") == source
    }
    merged.update({p: e for p, e in files.items() if p not in errors})
    return {
        "version": EXPORT_JSON_VERSION,
        "run": str(run.path),
        "arch": spec.arch,
        "input_size": spec.input_size,
        "classes": spec.classes,
        "checkpoint_sha256": checkpoint_sha,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "parity_split": PARITY_SPLIT,
        "parity_images": len(val.images) if val.images is not None else 0,
        "files": {p: merged[p] for p in PRECISIONS if p in merged},
        "warnings": warnings,
        "errors": errors,
    }
