"""INT8 Q/DQ ONNX calibrated on the validation split, as TensorRT's strongly typed build wants.

Settings and why:

- ``QuantFormat.QDQ``: precision lives in the graph (QuantizeLinear/DequantizeLinear
  pairs), which is the only INT8 path TensorRT 10+ keeps, and ONNX Runtime runs the
  same file on any CPU.
- Weights QInt8 symmetric, per channel along the weight's output-channel axis (axis 0
  of Conv weights, axis 1 of MatMul weights [in, out], axis 0 or 1 of Gemm weights as
  ``transB`` says), stored as INT8 initializers read by DequantizeLinear; activations
  QInt8 *symmetric* (zero point 0, per tensor): TensorRT's only forms.
- Biases stay float (``QuantizeBias: False``): ONNX Runtime's default int32 bias would
  be a DequantizeLinear with an int32 input, which TensorRT's dequantize layer refuses
  ("only activation types allowed as input to this layer"); TensorRT adds the float
  bias inside the fused int8 kernel itself.
- Placement as TensorRT fuses (:mod:`leukedge.export.qdq_placement`): Q/DQ on the
  inputs of ``Conv``, ``Gemm``, ``MatMul``, none on their outputs, so the logits stay
  float; the skip input of each residual Conv+Add is quantized, the Conv's own output
  is not. Normalizations, Softmax, GELU and the other adds stay in float. ONNX
  Runtime on an x86 CPU then runs the convolutions in float on dequantized values
  (its QLinearConv needs a Q after the Conv): the file is laid out for TensorRT.
- ViT-like models (timm ``blocks.*`` with ``patch_embed``): the patch embedding
  projection, the final norm and the classifier head stay out of INT8. For the
  hybrid the "patch embedding" is the projection of the CNN stem's features into
  tokens (``patch_embed.proj``); the ResNet stem itself is a CNN and quantizes
  like ResNet-50.
- Calibration: MinMax, Entropy or Percentile (ONNX Runtime's calibrators), on the
  validation split or a class- and subject-stratified subset of it. Histogram methods
  (Entropy, Percentile) raise on a tensor holding +-inf (timm's SAME max-pool padded
  with -inf did, before the exporter merged it into MaxPool); they then fall back to
  MinMax, and any tensor whose range is still not finite keeps the nodes around it in
  float. Both are recorded. The ranges go to ``calibration.json`` with the sha256 of
  the FP32 ONNX they belong to, and a later quantization with the same file, method,
  images and settings reuses them instead of calibrating again.
- ``quant_pre_process`` (shape inference + ORT basic optimisation) runs first; when
  symbolic shape inference fails it is retried without it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from leukedge.export import qdq_placement as placement
from leukedge.io import atomic_path, atomic_write_json, read_json, sha256_file
from leukedge.spec import INPUT_NAME

CALIBRATION_VERSION = 1
CALIB_METHODS = ("minmax", "entropy", "percentile")
QUANT_OP_TYPES = ("Conv", "Gemm", "MatMul")
RESIDUAL_OP = "Add"
# Tensors calibrated: every input and output of these ops (the residual Adds' skip inputs too).
CALIB_OP_TYPES = (*QUANT_OP_TYPES, RESIDUAL_OP)
# Output-channel axis of weights where it is fixed (Gemm's follows transB, ORT reads it).
PER_CHANNEL_AXIS = {"Conv": 0, "MatMul": 1}
# Images per calibrator pass, run as one batch: bounds the memory of histogram methods,
# which keep every activation of a pass, and keeps batch shapes equal within a pass
# (ORT's histogram collector stacks them and fails on a short last batch).
CALIB_CHUNK = 8

# Module scopes (prefix of leukedge's node names) kept in float for ViT-like models.
VIT_FLOAT_SCOPES = ("norm", "fc_norm", "head")


class Int8Error(RuntimeError):
    """Quantization that cannot be done as asked; the message says why and what to do."""


@dataclass
class Int8Result:
    path: Path
    seconds: float
    calibration_seconds: float
    calibration: dict[str, Any]
    calibration_reused: bool
    excluded_nodes: list[str]
    excluded_reasons: dict[str, list[str]]
    preprocess: str
    settings: dict[str, Any]
    residual_adds: int = 0
    warnings: list[str] = field(default_factory=list)


def settings(per_channel: bool = True) -> dict[str, Any]:
    """The quantization settings, recorded beside the ranges they produced."""
    return {
        "format": "QDQ",
        "weight_type": "QInt8",
        "activation_type": "QInt8",
        "per_channel": per_channel,
        "activation_symmetric": True,
        "weight_symmetric": True,
        "op_types": list(QUANT_OP_TYPES),
        "calibrated_op_types": list(CALIB_OP_TYPES),
        "per_channel_axis": {**PER_CHANNEL_AXIS, "Gemm": "0 if transB else 1"},
        "quantize_bias": False,
        "output_quantization": False,
        "residual_add_inputs": True,
    }


def method_enum(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in table:
        raise Int8Error(
            f"unknown calibration method {name!r}; choose one of {', '.join(CALIB_METHODS)}"
        )
    return table[name]


# --- pre-processing --------------------------------------------------------------------


@contextlib.contextmanager
def _cwd(path: str | Path) -> Iterator[None]:
    """Run in ``path``: ORT's symbolic shape inference drops debug files in the cwd on failure."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def preprocess_model(src: Path, dst: Path) -> tuple[str, list[str]]:
    """``quant_pre_process`` with symbolic shapes, or without them where that inference fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = src.resolve(), dst.resolve()
    with tempfile.TemporaryDirectory(prefix="leukedge-prep.") as tmp, _cwd(tmp), _quiet_ort():
        try:
            quant_pre_process(str(src), str(dst))
            return "symbolic+onnx shape inference, ORT basic optimisation", []
        except Exception as e:
            note = (
                f"quant_pre_process: symbolic shape inference failed ({type(e).__name__}: "
                f"{str(e)[:120]}); used ONNX shape inference only"
            )
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            return "onnx shape inference, ORT basic optimisation (symbolic skipped)", [note]


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT quantization logs advice at WARNING level on the root logger; keep it quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --- which nodes stay in float ---------------------------------------------------------


def scope_of(node_name: str) -> str:
    return node_name.split("/", 1)[0]


def is_vit_like(model: onnx.ModelProto) -> bool:
    scopes = {scope_of(n.name) for n in model.graph.node}
    return any(s.startswith("blocks.") for s in scopes) and any(
        s.startswith("patch_embed") for s in scopes
    )


def excluded_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of the quantized op types kept in float (ViTs: patch projection, final norm, head)."""
    if not is_vit_like(model):
        return []
    scopes = {scope_of(n.name) for n in model.graph.node}
    hybrid = any(s.startswith("patch_embed.backbone") for s in scopes)
    patch = ("patch_embed.proj",) if hybrid else ("patch_embed",)
    out = []
    for node in model.graph.node:
        scope = scope_of(node.name)
        if any(scope == p or scope.startswith(p + ".") for p in patch + VIT_FLOAT_SCOPES):
            out.append(node.name)
    return out


# --- calibration -----------------------------------------------------------------------


class ArrayReader:
    """A ``CalibrationDataReader`` over a slice of preprocessed images, in small batches."""

    def __init__(self, x: np.ndarray, batch: int = CALIB_CHUNK) -> None:
        self.x = x
        self.batch = batch
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            return None
        chunk = np.ascontiguousarray(self.x[self.i : self.i + self.batch], dtype=np.float32)
        self.i += self.batch
        return {INPUT_NAME: chunk}

    def __iter__(self) -> ArrayReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)


def _is_nonfinite_range_error(e: Exception) -> bool:
    return isinstance(e, ValueError) and "finite" in str(e)


def run_calibration(
    model_path: Path,
    x: np.ndarray,
    method: str,
    work: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """ORT's calibrator for ``method`` over ``x`` in chunks; returns its ``TensorsData``."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        model_path,
        list(CALIB_OP_TYPES),
        augmented_model_path=str(work / f"augmented.{method}.onnx"),
        calibrate_method=method_enum(method),
    )
    try:
        for start in range(0, len(x), CALIB_CHUNK):
            calibrator.collect_data(ArrayReader(x[start : start + CALIB_CHUNK]))
            if progress:
                progress(min(start + CALIB_CHUNK, len(x)), len(x))
        return calibrator.compute_data()
    finally:
        del calibrator


def calibrate(
    model_path: Path,
    x: np.ndarray,
    method: str,
    work: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, str, list[str]]:
    """Calibrate; a histogram method that meets +-inf falls back to MinMax (recorded)."""
    with _quiet_ort(), warnings.catch_warnings():
        # All-NaN tensors warn inside numpy; they are reported as non-finite ranges instead.
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        try:
            return run_calibration(model_path, x, method, work, progress), method, []
        except Exception as e:
            if method == "minmax" or not _is_nonfinite_range_error(e):
                raise
            note = (
                f"{method} calibration failed: a calibrated tensor holds non-finite values "
                f"({e}); fell back to minmax calibration"
            )
            return run_calibration(model_path, x, "minmax", work, progress), "minmax", [note]


def ranges_of(tensors: Any) -> dict[str, list[float]]:
    """tensor name -> [min, max] from an ORT ``TensorsData``."""
    out = {}
    for name, td in tensors.items():
        lo, hi = td.range_value
        out[name] = [float(np.min(lo)), float(np.max(hi))]
    return out


def ort_payload(tensors: Any) -> dict[str, Any]:
    """ORT's own serialisation of the ranges, so reuse hands it back exactly."""
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    return json.loads(json.dumps(tensors, cls=CalibrationCacheEncoder))


def nonfinite(ranges: dict[str, list[float]]) -> list[str]:
    return sorted(k for k, (lo, hi) in ranges.items() if not (np.isfinite(lo) and np.isfinite(hi)))


def calibration_key(
    onnx_sha256: str,
    method: str,
    images: int | None,
    images_digest: str | None,
    per_channel: bool,
) -> dict[str, Any]:
    """What calibration ranges depend on: a stored file is reused only when all of it matches."""
    return {
        "onnx_sha256": onnx_sha256,
        "requested_method": method,
        "images": images,
        "images_digest": images_digest,
        "settings": settings(per_channel),
    }


def images_digest(paths: list[str]) -> str:
    """Identity of a calibration set, independent of order."""
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def load_matching_calibration(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored calibration if it was made for ``key`` (digest checked only when known)."""
    if not path.is_file():
        return None
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return None
    if stored.get("version") != CALIBRATION_VERSION or "ort_tensors_data" not in stored:
        return None
    for k, v in key.items():
        if v is None:  # unknown here (no data at hand): not checked
            continue
        if stored.get(k) != v:
            return None
    return stored


# --- quantization ----------------------------------------------------------------------


def quantize_int8(
    fp32_path: str | Path,
    dst: str | Path,
    calibration_path: str | Path,
    method: str = "minmax",
    images: Callable[[], tuple[np.ndarray, list[str]]] | None = None,
    image_count: int | None = None,
    images_id: str | None = None,
    per_channel: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Int8Result:
    """Write ``dst`` (INT8 Q/DQ) from the FP32 ONNX, calibrating or reusing ``calibration_path``.

    ``images`` loads the calibration images lazily (they are not read at all when stored
    ranges match); ``image_count``/``images_id`` identify the set for that match.
    """
    fp32_path, dst, calibration_path = Path(fp32_path), Path(dst), Path(calibration_path)
    method_enum(method)
    start = time.perf_counter()
    notes: list[str] = []
    key = calibration_key(sha256_file(fp32_path), method, image_count, images_id, per_channel)
    stored = load_matching_calibration(calibration_path, key)
    with tempfile.TemporaryDirectory(prefix="leukedge-int8.") as tmp:
        work = Path(tmp)
        pre = work / "preprocessed.onnx"
        how, pre_notes = preprocess_model(fp32_path, pre)
        notes += pre_notes
        pre_model = onnx.load(str(pre))
        calib_start = time.perf_counter()
        reused = stored is not None
        if stored is None:
            stored, _ = _calibrate_and_store(
                pre, work, key, method, images, calibration_path, progress
            )
        calib_seconds = time.perf_counter() - calib_start
        reasons = {
            "float_scopes": excluded_nodes(pre_model),
            "nonfinite": nodes_touching(pre_model, stored.get("nonfinite_tensors", [])),
        }
        exclude = sorted(set(reasons["float_scopes"]) | set(reasons["nonfinite"]))
        residual = _quantize(
            pre,
            pre_model,
            dst,
            stored["ort_tensors_data"],
            method_enum(stored["method"]),
            exclude,
            per_channel,
            work,
        )
    return Int8Result(
        path=dst,
        seconds=time.perf_counter() - start,
        calibration_seconds=calib_seconds,
        calibration=summary(stored),
        calibration_reused=reused,
        excluded_nodes=exclude,
        excluded_reasons={k: v for k, v in reasons.items() if v},
        preprocess=how,
        settings=settings(per_channel),
        residual_adds=residual,
        warnings=notes + list(stored.get("warnings", [])),
    )


def _calibrate_and_store(
    pre: Path,
    work: Path,
    key: dict[str, Any],
    method: str,
    images: Callable[[], tuple[np.ndarray, list[str]]] | None,
    calibration_path: Path,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, Any], list[str]]:
    if images is None:
        raise Int8Error(
            "INT8 needs calibration images and no stored calibration matches this model; "
            "make the run's data folder available (or pass --data PATH)"
        )
    x, paths = images()
    if len(x) == 0:
        raise Int8Error("no calibration images: the validation split is empty or unreadable")
    tensors, used, notes = calibrate(pre, x, method, work, progress)
    ranges = ranges_of(tensors)
    bad = nonfinite(ranges)
    payload = ort_payload(tensors)
    for name in bad:  # strict JSON has no inf; these tensors stay in float (see excluded)
        ranges.pop(name)
        payload["data"].pop(name, None)
    if bad:
        notes.append(
            f"{len(bad)} tensor(s) hold inf/NaN on the calibration images "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "the nodes reading or writing them stay in float"
        )
    record = {
        "version": CALIBRATION_VERSION,
        **key,
        "images": key["images"] if key["images"] is not None else len(paths),
        "images_read": len(x),
        "images_digest": key["images_digest"] or images_digest(paths),
        "method": used,
        "warnings": notes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime": _ort_version(),
        "nonfinite_tensors": bad,
        "ranges": ranges,
        "ort_tensors_data": payload,
    }
    atomic_write_json(calibration_path, record)
    return record, notes


def nodes_touching(model: onnx.ModelProto, tensors: list[str]) -> list[str]:
    """Nodes that read or write any of ``tensors``."""
    wanted = set(tensors)
    return [n.name for n in model.graph.node if wanted & (set(n.input) | set(n.output))]


def _quantize(
    pre: Path,
    float_model: onnx.ModelProto,
    dst: Path,
    payload: dict[str, Any],
    method: Any,
    exclude: list[str],
    per_channel: bool,
    work: Path,
) -> int:
    """``quantize_static`` on stored ranges (its calibration cache), atomically into ``dst``.

    Returns the number of residual Adds whose skip input was quantized.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise Int8Error("this onnxruntime is too old: quantize_static has no calibration cache")
    cache = work / "ranges.json"
    cache.write_text(json.dumps(payload))
    fused = {
        add: tensor
        for add, tensor in placement.residual_adds(float_model).items()
        if add not in exclude
    }
    with atomic_path(dst) as tmp, _quiet_ort():
        quantize_static(
            str(pre),
            str(tmp),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[*QUANT_OP_TYPES, RESIDUAL_OP] if fused else list(QUANT_OP_TYPES),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude + placement.non_residual_adds(float_model, fused),
            calibrate_method=method,
            calibration_cache_path=str(cache),
            extra_options=extra_options(),
        )
        model = onnx.load(str(tmp))
        placement.drop_non_residual_qdq(model, fused)
        _carry_metadata(float_model, model)
        onnx.save_model(model, str(tmp))
        check_quantized(tmp, exclude, dst.name)  # before the file takes its final name
    return len(placement.quantized_skips(model, fused))


def extra_options() -> dict[str, Any]:
    """ONNX Runtime's options for TensorRT's Q/DQ rules (see the module docstring)."""
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": [*QUANT_OP_TYPES, RESIDUAL_OP],
        "QDQOpTypePerChannelSupportToAxis": dict(PER_CHANNEL_AXIS),
    }


def _carry_metadata(source: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Keep the ModelSpec and doc string: the quantizer does not promise to."""
    have = {p.key for p in model.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in have:
            model.metadata_props.append(prop)
    model.doc_string = model.doc_string or source.doc_string


def check_quantized(path: Path, exclude: list[str], name: str | None = None) -> dict[str, int]:
    """Refuse a file without Q/DQ, with a quantized output or an excluded node fed by a DQ."""
    name = name or path.name
    model = onnx.load(str(path))
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for n in model.graph.node:
        if n.op_type in counts:
            counts[n.op_type] += 1
    if not counts["QuantizeLinear"] or not counts["DequantizeLinear"]:
        raise Int8Error(
            f"{name} has no QuantizeLinear/DequantizeLinear nodes: nothing was quantized"
        )
    quantized = placement.quantized_outputs(model)
    if quantized:
        raise Int8Error(f"{name}: the network output {', '.join(quantized)} is quantized")
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    wanted = set(exclude)
    leaked = [n.name for n in model.graph.node if n.name in wanted and set(n.input) & dq_outputs]
    if leaked:
        raise Int8Error(f"nodes meant to stay in float were quantized: {', '.join(leaked[:5])}")
    return counts


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """calibration.json without the bulky ranges, for export.json."""
    return {
        k: record.get(k)
        for k in (
            "method",
            "requested_method",
            "images",
            "images_read",
            "images_digest",
            "onnx_sha256",
            "created",
            "nonfinite_tensors",
        )
    } | {"tensors": len(record.get("ranges", {}))}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
