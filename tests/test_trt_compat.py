"""The TensorRT parser rules checked at export, on hand-built ONNX graphs (no torch, no TensorRT).

Each graph is a correct Q/DQ Conv model with exactly one rule broken, so every test
proves one specific reason and that a clean file gets none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leukedge.export import trt_compat

F32, I8, I32, U8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT32, TensorProto.UINT8


def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def qdq_conv(
    *,
    weight_axis: int = 0,
    weight_scales: int = 4,
    act_zero_point: int = 0,
    act_scale: float = 0.05,
    int32_bias: bool = False,
    extra: list[onnx.NodeProto] | None = None,
    opset: int = 18,
    act_zero_point_type: int = I8,
) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv(DQ(int8 weight, per channel), bias) -> Relu -> output."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        tensor("w_q", w),
        tensor("w_scale", np.full(weight_scales, 0.01, np.float32)),
        tensor("w_zp", np.zeros(weight_scales, np.int8)),
        tensor("x_scale", np.array(act_scale, np.float32)),
        tensor(
            "x_zp",
            np.array(act_zero_point, helper.tensor_dtype_to_np_dtype(act_zero_point_type)),
        ),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["x_q"], "x/Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], "x/DQ"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], "w/DQ", axis=weight_axis
        ),
    ]
    if int32_bias:
        inits += [
            tensor("b_q", np.arange(4, dtype=np.int32)),
            tensor("b_scale", np.full(4, 5e-4, np.float32)),
            tensor("b_zp", np.zeros(4, np.int32)),
        ]
        nodes.append(
            helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], "b/DQ", axis=0)
        )
    else:
        inits.append(tensor("b", np.zeros(4, np.float32)))
    nodes += [
        helper.make_node("Conv", ["x_dq", "w", "b"], ["c"], "conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["output"], "conv/Relu"),
        *(extra or []),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("input", F32, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", F32, ["batch", 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def codes(model: onnx.ModelProto) -> set[str]:
    return {i.code for i in trt_compat.check_model(model)}


def reasons(model: onnx.ModelProto) -> str:
    return " | ".join(str(i) for i in trt_compat.check_model(model))


def test_a_clean_qdq_model_has_no_issue() -> None:
    model = qdq_conv()
    onnx.checker.check_model(model, full_check=True)
    assert trt_compat.check_model(model) == []
    assert trt_compat.verdict([]) == {"tensorrt_compatible": True, "tensorrt_issues": []}


def test_int32_bias_dequantize_is_refused() -> None:
    """ONNX Runtime's default bias quantization: TensorRT's dequantize takes no int32."""
    model = qdq_conv(int32_bias=True)
    issues = trt_compat.check_model(model)
    dq_type = next(i for i in issues if i.code == "dq-input-type")
    assert dq_type.nodes == ["b/DQ"]
    assert "INT32" in str(dq_type) and "INT8 only" in str(dq_type)
    assert trt_compat.verdict(issues)["tensorrt_compatible"] is False


def test_non_zero_zero_point_is_refused() -> None:
    issues = trt_compat.check_model(qdq_conv(act_zero_point=3))
    assert [i.code for i in issues] == ["zero-point", "zero-point"]  # the Q and the DQ
    assert "must all be 0" in str(issues[0]) and "x/Q" in str(issues[0])


def test_uint8_zero_point_and_missing_zero_point_are_refused() -> None:
    assert "not INT8" in reasons(qdq_conv(act_zero_point_type=U8))
    model = qdq_conv()
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    del q.input[2]
    assert "quantizes to uint8" in reasons(model)


def test_per_channel_axis_other_than_output_channels_is_refused() -> None:
    """Scales along Conv's input channels (axis 1, 3 of them): the sizes match, the axis not."""
    text = reasons(qdq_conv(weight_axis=1, weight_scales=3))
    assert "per-channel axis 1 is not the output-channel axis 0 of the Conv weight" in text
    assert "w/DQ" in text
    assert "do not match" in reasons(qdq_conv(weight_axis=0, weight_scales=3))


@pytest.mark.parametrize(("trans_b", "axis", "ok"), [(1, 0, True), (1, 1, False), (0, 1, True)])
def test_gemm_axis_follows_trans_b(trans_b: int, axis: int, ok: bool) -> None:
    w = np.ones((2, 6) if trans_b else (6, 2), np.int8)
    inits = [
        tensor("w_q", w),
        tensor("w_scale", np.full(w.shape[axis], 0.01, np.float32)),
        tensor("w_zp", np.zeros(w.shape[axis], np.int8)),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], "w/DQ", axis=axis),
        helper.make_node("Gemm", ["input", "w"], ["logits"], "head/Gemm", transB=trans_b),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("input", F32, ["batch", 6])],
        [helper.make_tensor_value_info("logits", F32, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert (trt_compat.check_model(model) == []) is ok, reasons(model)


def test_per_channel_activation_is_refused() -> None:
    model = qdq_conv()
    for t in model.graph.initializer:
        if t.name == "x_scale":
            t.CopyFrom(tensor("x_scale", np.full(3, 0.05, np.float32)))
        if t.name == "x_zp":
            t.CopyFrom(tensor("x_zp", np.zeros(3, np.int8)))
    for node in model.graph.node:
        if node.name in ("x/Q", "x/DQ"):
            node.attribute.append(helper.make_attribute("axis", 1))
    assert "activations are quantized per tensor only" in reasons(model)


@pytest.mark.parametrize("scale", [0.0, -0.1, float("inf")])
def test_scales_must_be_finite_and_positive(scale: float) -> None:
    assert "finite and > 0" in reasons(qdq_conv(act_scale=scale))


def test_unsupported_op_and_foreign_domain_are_named() -> None:
    extra = [
        helper.make_node("Unique", ["output"], ["u"], "odd/Unique"),
        helper.make_node("FusedConv", ["output"], ["f"], "ort/FusedConv", domain="com.microsoft"),
    ]
    issues = {i.code: str(i) for i in trt_compat.check_model(qdq_conv(extra=extra))}
    assert (
        "Unique is not on the list of ops TensorRT 10 parses (1 node: odd/Unique)" in issues["op"]
    )
    assert "com.microsoft::FusedConv" in issues["domain"]


@pytest.mark.parametrize(("opset", "ok"), [(18, True), (20, True), (21, False), (8, False)])
def test_opset_range(opset: int, ok: bool) -> None:
    found = codes(qdq_conv(opset=opset))
    assert ("opset" not in found) is ok
    if not ok:
        assert f"opset {opset} is outside 9-20" in reasons(qdq_conv(opset=opset))


def test_reduce_axes_must_be_constant() -> None:
    extra = [
        helper.make_node("Shape", ["output"], ["s"], "s/Shape"),
        helper.make_node("ReduceMean", ["output", "s"], ["m"], "m/ReduceMean"),
    ]
    assert "ReduceMean: input 1 must be a constant" in reasons(qdq_conv(extra=extra))


def test_many_nodes_breaking_one_rule_make_one_reason(tmp_path: Path) -> None:
    extra = [helper.make_node("Unique", ["output"], [f"u{i}"], f"odd{i}/Unique") for i in range(5)]
    path = tmp_path / "m.onnx"
    onnx.save_model(qdq_conv(extra=extra), str(path))
    verdict = trt_compat.file_verdict(path)
    assert verdict["tensorrt_compatible"] is False
    (reason,) = verdict["tensorrt_issues"]
    assert reason.endswith("(5 nodes: odd0/Unique, odd1/Unique, odd2/Unique, ...)")
