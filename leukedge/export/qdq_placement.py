"""Where Q/DQ pairs go so that TensorRT fuses the quantized graph as NVIDIA recommends.

TensorRT's Q/DQ placement guidance (and TensorRT Model Optimizer's ONNX PTQ, whose
rules these follow without depending on it):

- Quantize the inputs of weighted ops (Conv, Gemm, MatMul); do not quantize their
  outputs: the next weighted op's input Q is fused back into the producer, and the
  network output (the logits) stays float.
- A residual ``Add`` where one input comes straight from a Conv (through ops TensorRT
  fuses into the Conv's epilogue: bias, scale, BatchNorm, Relu) is fused as
  Conv+Add when the *other* input - the skip connection - is quantized and the
  Conv's own output is not. Where both inputs come from Convs (a downsampling
  shortcut), the one on the longer path from their common ancestor is the main
  branch that fuses; the shortcut is the residual input.

:func:`residual_adds` finds those Adds on the float graph; ONNX Runtime then quantizes
both inputs of each and :func:`drop_non_residual_qdq` removes the pair on the fused
input again, as Model Optimizer does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import onnx

CONV_TYPES = frozenset({"Conv", "ConvTranspose"})
# Ops between a Conv and the Add that TensorRT folds into the Conv kernel.
EPILOGUE_TYPES = frozenset({"Relu", "BatchNormalization"})
SCALE_OR_BIAS_TYPES = frozenset({"Add", "Mul"})
MAX_EPILOGUE = 4


class GraphIndex:
    """Producers, consumers and constants of a graph, looked up by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants = {t.name for t in graph.initializer}
        self.constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def variable_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.constants]

    def parents(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [self.producer[i] for i in self.variable_inputs(node) if i in self.producer]


def _is_scale_or_bias(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """An Add/Mul with one constant operand: a bias or scale TensorRT folds into a Conv."""
    return node.op_type in SCALE_OR_BIAS_TYPES and len(index.variable_inputs(node)) == 1


def conv_backbone(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The Conv whose output reaches ``tensor`` through fusible epilogue ops only."""
    node = index.producer.get(tensor)
    for _ in range(MAX_EPILOGUE + 1):
        if node is None:
            return None
        if node.op_type in CONV_TYPES:
            return node
        if node.op_type not in EPILOGUE_TYPES and not _is_scale_or_bias(index, node):
            return None
        inputs = index.variable_inputs(node)
        node = index.producer.get(inputs[0]) if inputs else None
    return None


def _ancestors(index: GraphIndex, start: onnx.NodeProto) -> dict[str, int]:
    """Node name -> shortest distance from ``start`` going towards the graph inputs."""
    seen = {start.name: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for parent in index.parents(node):
            if parent.name not in seen:
                seen[parent.name] = seen[node.name] + 1
                queue.append(parent)
    return seen


def _lowest_common_ancestor(
    index: GraphIndex, a: onnx.NodeProto, b: onnx.NodeProto
) -> tuple[str | None, int, int]:
    """The common ancestor closest to ``a`` and its distances from ``a`` and ``b``."""
    from_a, from_b = _ancestors(index, a), _ancestors(index, b)
    common = set(from_a) & set(from_b)
    if not common:
        return None, -1, -1
    best = min(common, key=lambda name: (from_a[name], from_b[name], name))
    return best, from_a[best], from_b[best]


def residual_adds(model: onnx.ModelProto) -> dict[str, str]:
    """Residual Add node name -> the input TensorRT fuses into its Conv (no Q/DQ there).

    Adds with a constant or graph-input operand, or without a Conv on either side,
    are not Conv+Add fusions and are left out (they stay in float).
    """
    index = GraphIndex(model)
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if a in index.constants or b in index.constants:
            continue
        if a not in index.producer or b not in index.producer:
            continue
        conv_a, conv_b = conv_backbone(index, a), conv_backbone(index, b)
        lca, dist_a, dist_b = _lowest_common_ancestor(index, index.producer[a], index.producer[b])
        if conv_a is not None and conv_b is not None:
            if conv_a.name == conv_b.name:
                continue
            out[node.name] = a if dist_a > dist_b else b
        elif conv_a is not None and lca != conv_a.name:
            out[node.name] = a
        elif conv_b is not None and lca != conv_b.name:
            out[node.name] = b
    return out


def non_residual_adds(model: onnx.ModelProto, residual: Iterable[str]) -> list[str]:
    """Every other Add: kept out of quantization so it stays a float op."""
    keep = set(residual)
    return [n.name for n in model.graph.node if n.op_type == "Add" and n.name not in keep]


def drop_non_residual_qdq(model: onnx.ModelProto, fused_inputs: dict[str, str]) -> int:
    """Wire each residual Add's fused input past its Q/DQ pair; returns the pairs removed.

    ``fused_inputs`` is :func:`residual_adds` of the float graph. A pair that still feeds
    other nodes is kept for them; initializers nobody reads any more are dropped.
    """
    index = GraphIndex(model)
    by_name = {n.name: n for n in model.graph.node}
    dead: set[int] = set()
    removed = 0
    for add_name, tensor in fused_inputs.items():
        add = by_name.get(add_name)
        if add is None:
            continue
        for slot, name in enumerate(add.input):
            dq = index.producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = index.producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] != tensor:
                continue
            add.input[slot] = tensor
            removed += 1
            index.consumers[name].remove(add)
            if not index.consumers[name]:
                dead.add(id(dq))
                index.consumers[dq.input[0]].remove(dq)
                if not index.consumers[dq.input[0]]:
                    dead.add(id(q))
    if dead:
        kept = [n for n in model.graph.node if id(n) not in dead]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        _drop_unused_initializers(model)
    return removed


def quantized_skips(model: onnx.ModelProto, fused_inputs: dict[str, str]) -> list[str]:
    """The residual Adds of the quantized graph whose skip input comes from a DequantizeLinear."""
    index = GraphIndex(model)
    out = []
    for node in model.graph.node:
        if node.name not in fused_inputs:
            continue
        skips = [i for i in node.input if i != fused_inputs[node.name]]
        made_by = [index.producer.get(i) for i in skips]
        if made_by and all(p is not None and p.op_type == "DequantizeLinear" for p in made_by):
            out.append(node.name)
    return out


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantized_outputs(model: onnx.ModelProto) -> list[str]:
    """Graph outputs written by a QuantizeLinear/DequantizeLinear (the logits must stay float)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [
        o.name
        for o in model.graph.output
        if o.name in producer and producer[o.name].op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
