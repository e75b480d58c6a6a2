"""Will TensorRT's ONNX parser take this file? Checked on the workstation, before the Jetson.

A pure ``onnx`` re-statement of the onnx-tensorrt parser's rules that leukedge's
files can break, so that a file TensorRT would refuse is caught at ``leukedge export``
rather than at ``leukedge build-engine`` on the device. Sources:

- Opsets: onnx-tensorrt ``docs/operators.md`` of the 10.0 and 10.1 releases: "TensorRT
  10.0 supports operators in the inclusive range of opset 9 to opset 20" (10.15 extends
  it to 24). JetPack 6 ships TensorRT 10.3, so 9-20 is the range every TensorRT 10 takes.
- Q/DQ: ``QuantDequantLinearHelper`` in onnx-tensorrt's ``onnxOpImporters.cpp`` (10.x):
  scales must be constant and all > 0; zero points all 0 (symmetric only); a scale
  with more than one value is per-channel weight quantization, its length equal to the
  quantized axis; the dequantize layer takes quantized types only (INT8, and FP8/INT4
  which a Jetson Orin, SM 8.7, cannot compute: left out here), never the int32 of an
  ONNX Runtime bias ("only activation types allowed as input to this layer",
  onnx/onnx-tensorrt#850). A QuantizeLinear without a zero point quantizes to uint8 in
  ONNX but to int8 in TensorRT, so it is refused too.
- Per-channel axis: TensorRT computes per-channel weight scales along the output
  channels: axis 0 of a Conv weight [K, C, R, S], 1 of a ConvTranspose weight, the
  last axis of a MatMul weight [in, out], and 0 or 1 of a Gemm weight as ``transB``
  says. Activations are quantized per tensor only.
- Ops: a conservative allow-list, every entry marked supported in onnx-tensorrt 10.0's
  operator matrix: what leukedge's three models produce (FP32, FP16, INT8) and common
  neighbours. An op outside it, or outside the default ONNX domain, is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

TARGET = "TensorRT 10.x ONNX parser"
OPSET_RANGE = (9, 20)
DEFAULT_DOMAINS = ("", "ai.onnx")
DQ_INPUT_TYPES = (TensorProto.INT8,)
SCALE_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
SUPPORTED_OPS = frozenset(
    {
        # leukedge's cnn, resnet50 and vit-hybrid, in FP32, FP16 and INT8
        *("Add", "Cast", "Concat", "Conv", "DequantizeLinear", "Div", "Erf", "Expand"),
        *("Gather", "Gemm", "InstanceNormalization", "LayerNormalization", "MatMul"),
        *("MaxPool", "Mul", "QuantizeLinear", "ReduceMean", "Relu", "Reshape", "Shape"),
        *("Slice", "Softmax", "Squeeze", "Transpose"),
        # common neighbours (other timm models, other exporters)
        *("AveragePool", "BatchNormalization", "Clip", "Constant", "ConstantOfShape"),
        *("Dropout", "Elu", "Equal", "Exp", "Flatten", "Gelu", "GlobalAveragePool"),
        *("GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity"),
        *("LeakyRelu", "Max", "Min", "Neg", "Pad", "Pow", "Range", "Reciprocal"),
        *("ReduceMax", "ReduceSum", "Resize", "Sigmoid", "Softplus", "Split", "Sqrt"),
        *("Sub", "Sum", "Tanh", "Tile", "Unsqueeze", "Where"),
    }
)
# Inputs the parser needs as build-time constants ("`axes` must be an initializer").
CONSTANT_INPUTS = {
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceSum": (1,),
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
}
MAX_NAMES = 3


@dataclass
class Issue:
    """One rule broken, by one or more nodes."""

    code: str
    message: str
    nodes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.nodes:
            return self.message
        names = ", ".join(self.nodes[:MAX_NAMES]) + (", ..." if len(self.nodes) > MAX_NAMES else "")
        count = f"{len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''}"
        return f"{self.message} ({count}: {names})"


class _Graph:
    """Constants, producers and consumers of a graph, looked up by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output
        }
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.value_types = {
            v.name: v.type.tensor_type.elem_type
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.HasField("tensor_type")
        }

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (through Identity), else None."""
        for _ in range(4):
            if name in self.initializers:
                return numpy_helper.to_array(self.initializers[name])
            if name in self.constant_nodes:
                attr = next(
                    (a for a in self.constant_nodes[name].attribute if a.name == "value"), None
                )
                return numpy_helper.to_array(attr.t) if attr is not None else None
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def elem_type(self, name: str) -> int | None:
        """The element type of a tensor, where the graph states it."""
        if name in self.initializers:
            return self.initializers[name].data_type
        if name in self.constant_nodes:
            attr = next((a for a in self.constant_nodes[name].attribute if a.name == "value"), None)
            return attr.t.data_type if attr is not None else None
        node = self.producer.get(name)
        if node is not None and node.op_type == "QuantizeLinear":
            return _quantized_type(self, node)
        return self.value_types.get(name)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _quantized_type(g: _Graph, q: onnx.NodeProto) -> int:
    """What a QuantizeLinear writes: its zero point's type, ``output_dtype``, else uint8."""
    if len(q.input) > 2 and q.input[2]:
        zp_type = g.elem_type(q.input[2])
        if zp_type is not None:
            return zp_type
    return int(_attr(q, "output_dtype", 0)) or TensorProto.UINT8


def _type_name(t: int | None) -> str:
    return "unknown" if t is None else TensorProto.DataType.Name(t)


def check_model(model: onnx.ModelProto) -> list[Issue]:
    """Every parser rule ``model`` breaks; [] when TensorRT 10 can parse it."""
    g = _Graph(model)
    issues: dict[tuple[str, str], Issue] = {}

    def report(code: str, message: str, node: onnx.NodeProto | None = None) -> None:
        issue = issues.setdefault((code, message), Issue(code, message))
        if node is not None:
            issue.nodes.append(node.name or node.op_type)

    _check_opset(model, report)
    for node in model.graph.node:
        _check_op(g, node, report)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(g, node, report)
    return list(issues.values())


def _check_opset(model: onnx.ModelProto, report: Any) -> None:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    lo, hi = OPSET_RANGE
    if not versions:
        report("opset", "the model imports no default ONNX opset")
    elif not lo <= versions[0] <= hi:
        report("opset", f"opset {versions[0]} is outside {lo}-{hi}, what TensorRT 10 parses")


def _check_op(g: _Graph, node: onnx.NodeProto, report: Any) -> None:
    if node.domain not in DEFAULT_DOMAINS:
        report("domain", f"{node.domain}::{node.op_type} is not a standard ONNX op", node)
        return
    if node.op_type not in SUPPORTED_OPS:
        report("op", f"{node.op_type} is not on the list of ops TensorRT 10 parses", node)
        return
    for slot in CONSTANT_INPUTS.get(node.op_type, ()):
        if len(node.input) > slot and node.input[slot] and g.constant(node.input[slot]) is None:
            report("constant-input", f"{node.op_type}: input {slot} must be a constant", node)
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        report("maxpool-indices", "MaxPool: the Indices output is not supported", node)


def _check_qdq(g: _Graph, node: onnx.NodeProto, report: Any) -> None:
    op = node.op_type
    if len(node.input) < 2:
        report("qdq-scale", f"{op} has no scale", node)
        return
    scale = g.constant(node.input[1])
    if scale is None:
        report("qdq-scale", f"{op}: the scale must be a constant", node)
        return
    if g.elem_type(node.input[1]) not in SCALE_TYPES:
        report("qdq-scale", f"{op}: the scale must be float32, float16 or bfloat16", node)
    elif scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        report("qdq-scale", f"{op}: every scale must be finite and > 0", node)
    _check_zero_point(g, node, scale.size, report)
    if op == "DequantizeLinear":
        dtype = g.elem_type(node.input[0])
        if dtype not in DQ_INPUT_TYPES:
            report(
                "dq-input-type",
                f"DequantizeLinear input is {_type_name(dtype)}; TensorRT dequantizes INT8 only",
                node,
            )
    if scale.size > 1:
        _check_per_channel(g, node, scale, report)


def _check_zero_point(g: _Graph, node: onnx.NodeProto, size: int, report: Any) -> None:
    op = node.op_type
    if len(node.input) < 3 or not node.input[2]:
        if op == "QuantizeLinear" and not _attr(node, "output_dtype", 0):
            report(
                "zero-point",
                "QuantizeLinear without a zero point quantizes to uint8 in ONNX; "
                "give it an int8 zero point of 0",
                node,
            )
        return
    zero = g.constant(node.input[2])
    if zero is None:
        report("zero-point", f"{op}: the zero point must be a constant", node)
        return
    if g.elem_type(node.input[2]) != TensorProto.INT8:
        report(
            "zero-point",
            f"{op}: the zero point is {_type_name(g.elem_type(node.input[2]))}, not INT8",
            node,
        )
    if np.any(zero != 0):
        report("zero-point", f"{op}: zero points must all be 0 (symmetric only)", node)
    if zero.size != size:
        report("zero-point", f"{op}: the scale and zero point differ in size", node)


def _check_per_channel(g: _Graph, node: onnx.NodeProto, scale: np.ndarray, report: Any) -> None:
    """Per-channel is weight quantization along the consumer's output-channel axis."""
    op = node.op_type
    if scale.ndim != 1:
        report("per-channel", f"{op}: a per-channel scale must be one-dimensional", node)
        return
    weight = g.constant(node.input[0])
    if weight is None and op == "DequantizeLinear":
        q = g.producer.get(node.input[0])
        weight = g.constant(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    if weight is None:
        report("per-channel", f"{op}: activations are quantized per tensor only", node)
        return
    axis = int(_attr(node, "axis", 1))
    axis = axis + weight.ndim if axis < 0 else axis
    if not 0 <= axis < weight.ndim or weight.shape[axis] != scale.size:
        report("per-channel", f"{op}: {scale.size} scales do not match the axis {axis}", node)
        return
    dq_out = node.output[0]
    if op == "QuantizeLinear":
        dqs = [n for n in g.consumers.get(dq_out, []) if n.op_type == "DequantizeLinear"]
        users = [u for dq in dqs for u in g.consumers.get(dq.output[0], [])]
    else:
        users = g.consumers.get(dq_out, [])
    for user in users:
        expected = _output_channel_axis(user, weight.ndim)
        reads_as_weight = len(user.input) > 1 and _feeds(g, dq_out, user.input[1], op)
        if expected is None or not reads_as_weight:
            report(
                "per-channel",
                f"{op}: per-channel scales must feed the weight input of a Conv, "
                "ConvTranspose, Gemm or MatMul",
                node,
            )
        elif axis != expected:
            report(
                "per-channel-axis",
                f"{op}: per-channel axis {axis} is not the output-channel axis "
                f"{expected} of the {user.op_type} weight",
                node,
            )


def _feeds(g: _Graph, start: str, target: str, op: str) -> bool:
    """``target`` is ``start`` (DQ) or the output of the DQ that reads ``start`` (Q)."""
    if op == "DequantizeLinear":
        return target == start
    dq = g.producer.get(target)
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] == start


def _output_channel_axis(node: onnx.NodeProto, rank: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None


# --- per file, for export.json -------------------------------------------------------


def check_file(path: str | Path) -> list[Issue]:
    """:func:`check_model` of an ONNX file."""
    return check_model(onnx.load(str(path)))


def verdict(issues: Iterable[Issue]) -> dict[str, Any]:
    """The ``export.json`` fields of one file."""
    reasons = [str(i) for i in issues]
    return {"tensorrt_compatible": not reasons, "tensorrt_issues": reasons}


def file_verdict(path: str | Path) -> dict[str, Any]:
    return verdict(check_file(path))
