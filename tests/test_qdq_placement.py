"""Q/DQ placement as TensorRT fuses it, on hand-built residual blocks (no torch).

A ResNet block in miniature: ``stem Conv -> Relu`` feeds both a main branch
(``Conv -> Relu -> Conv``) and the skip connection, which is either the Relu output
itself (identity) or a 1x1 ``Conv`` (downsampling shortcut); ``Add -> Relu -> pool ->
Gemm`` finishes it. TensorRT fuses the main branch's last Conv with the Add, so that
Conv's output must not be quantized and the skip input must.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leukedge.export import int8 as int8_mod
from leukedge.export import qdq_placement as placement
from leukedge.export import trt_compat

pytest.importorskip("onnxruntime")


def conv(name: str, src: str, dst: str, cin: int, cout: int, k: int = 3) -> onnx.NodeProto:
    return helper.make_node(
        "Conv", [src, f"{name}.w", f"{name}.b"], [dst], f"{name}/Conv", pads=[k // 2] * 4
    )


def residual_block(path: Path, shortcut: bool) -> Path:
    rng = np.random.default_rng(0)
    shapes = {"stem": (8, 3, 3), "a": (8, 8, 3), "b": (8, 8, 3), "down": (8, 8, 1)}
    inits = []
    for name, (cout, cin, k) in shapes.items():
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.3
        inits += [numpy_helper.from_array(w, f"{name}.w")]
        inits += [
            numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}.b")
        ]
    inits += [
        numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "head.w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "head.b"),
    ]
    nodes = [
        conv("stem", "input", "s", 3, 8),
        helper.make_node("Relu", ["s"], ["r0"], "stem/Relu"),
        conv("a", "r0", "ca", 8, 8),
        helper.make_node("Relu", ["ca"], ["ra"], "a/Relu"),
        conv("b", "ra", "main", 8, 8),
    ]
    skip = "r0"
    if shortcut:
        nodes.append(conv("down", "r0", "short", 8, 8, k=1))
        skip = "short"
    nodes += [
        helper.make_node("Add", ["main", skip], ["sum"], "block/Add"),
        helper.make_node("Relu", ["sum"], ["r1"], "block/Relu"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], "pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], "pool/Flatten"),
        helper.make_node("Gemm", ["f", "head.w", "head.b"], ["logits"], "head/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(("shortcut", "skip"), [(False, "r0"), (True, "short")])
def test_residual_adds_name_the_fused_main_branch(
    tmp_path: Path, shortcut: bool, skip: str
) -> None:
    model = onnx.load(str(residual_block(tmp_path / "m.onnx", shortcut)))
    assert placement.residual_adds(model) == {"block/Add": "main"}
    assert placement.non_residual_adds(model, ["block/Add"]) == []


def test_adds_without_a_conv_or_with_a_constant_are_not_residual() -> None:
    """Transformer residuals (x + MatMul(x)), bias adds and Conv -> Add(., f(Conv)) are not."""
    h = helper
    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), n) for n in ("w", "bias")]
    inits.append(numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "cw"))
    nodes = [
        h.make_node("MatMul", ["input", "w"], ["mm"], "attn/MatMul"),
        h.make_node("Add", ["mm", "bias"], ["mmb"], "attn/BiasAdd"),
        h.make_node("Add", ["input", "mmb"], ["x1"], "block/Add"),
        h.make_node("Unsqueeze", ["x1", "axes"], ["x4"], "u/Unsqueeze"),
        h.make_node("Conv", ["x4", "cw"], ["c"], "c/Conv"),
        h.make_node("Sigmoid", ["c"], ["g"], "c/Sigmoid"),
        h.make_node("Add", ["c", "g"], ["out"], "gate/Add"),
    ]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    graph = h.make_graph(
        nodes,
        "t",
        [h.make_tensor_value_info("input", TensorProto.FLOAT, [4, 4])],
        [h.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    assert placement.residual_adds(model) == {}
    assert placement.non_residual_adds(model, []) == ["attn/BiasAdd", "block/Add", "gate/Add"]


def producer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


@pytest.mark.parametrize("shortcut", [False, True])
def test_quantized_block_is_laid_out_for_conv_add_fusion(tmp_path: Path, shortcut: bool) -> None:
    src = residual_block(tmp_path / "m.onnx", shortcut)
    x = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    r = int8_mod.quantize_int8(
        src,
        tmp_path / "m.int8.onnx",
        tmp_path / "calibration.json",
        images=lambda: (x, [str(i) for i in range(len(x))]),
        image_count=len(x),
        images_id="random",
    )
    assert r.residual_adds == 1
    q = onnx.load(str(r.path))
    add = next(n for n in q.graph.node if n.op_type == "Add")
    main, skip = (producer_of(q, i) for i in add.input)
    assert main is not None and main.op_type == "Conv" and main.name == "b/Conv"  # fused input
    assert skip is not None and skip.op_type == "DequantizeLinear"  # the skip, quantized
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert producer_of(q, node.input[0]).op_type == "DequantizeLinear", node.name
            assert producer_of(q, node.input[1]).op_type == "DequantizeLinear", node.name
            assert node.input[2] in {t.name for t in q.graph.initializer}  # float bias
            consumers = [c.op_type for c in q.graph.node if node.output[0] in c.input]
            assert "QuantizeLinear" not in consumers or node.name == "down/Conv", node.name
    assert producer_of(q, "logits").op_type == "Gemm"  # no Q/DQ on the network output
    dq_inputs = {
        t.data_type
        for n in q.graph.node
        if n.op_type == "DequantizeLinear"
        for t in q.graph.initializer
        if t.name == n.input[0]
    }
    assert dq_inputs == {TensorProto.INT8}
    assert trt_compat.check_model(q) == []


def test_drop_keeps_a_pair_that_other_nodes_read(tmp_path: Path) -> None:
    """The identity skip's Q/DQ also feeds conv a: only the fused input's pair goes."""
    src = residual_block(tmp_path / "m.onnx", shortcut=False)
    x = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    r = int8_mod.quantize_int8(
        src,
        tmp_path / "m.int8.onnx",
        tmp_path / "calibration.json",
        images=lambda: (x, [str(i) for i in range(len(x))]),
        image_count=len(x),
        images_id="random",
    )
    q = onnx.load(str(r.path))
    dq = producer_of(q, next(n for n in q.graph.node if n.op_type == "Add").input[1])
    readers = sorted(n.name for n in q.graph.node if dq.output[0] in n.input)
    assert readers == ["a/Conv", "block/Add"]
    assert not [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "main"]
