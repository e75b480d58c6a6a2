"""PyTorch -> ONNX: one clean FP32 graph per run, the source of every other artifact.

Exporter choice (measured on the three models with torch 2.14, onnxscript 0.7):

- ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript) exports all three
  architectures with a symbolic batch dimension and sees the spatial size as a
  constant, so timm's dynamic SAME padding of ``vit_small_r26_s32_224`` becomes plain
  static pads. After full constant folding the graph is clean: no Shape/Gather/Ceil
  padding chains, no BatchNormalization at all (the weight standardisation of the
  hybrid's StdConv layers folds into constant weights) and LayerNormalization stays the
  native op. It emits opset 18 (its lowest implemented opset); a request for 17 is
  answered with 18 and recorded.
- The legacy TorchScript exporter (``dynamo=False``) is faster but leaves 16 Ceil-based
  SAME-padding chains (Shape -> Gather -> Ceil -> Pad), 29 training-mode
  BatchNormalization nodes that no constant folder removes, and ~2000 nodes for the
  hybrid instead of ~600.

Parity of the dynamo export against eager PyTorch is ~1e-6 on every architecture.
The exporter's own optimizer skips folding tensors above 8192 elements, so it is run
here with no size limit; then a ``Pad(-inf) -> MaxPool`` pair (timm's SAME max-pool)
is merged into MaxPool's own ``pads``, which removes the only tensor holding -inf (it
breaks histogram calibration) and one layer TensorRT would otherwise build. Nodes are
renamed after the module that produced them (``blocks.11.attn.qkv/MatMul``) so INT8
exclusions and TensorRT layer names can be read, and the bulky per-node provenance
(stack traces with local paths) is dropped so the file is small and reproducible.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from leukedge.io import atomic_path
from leukedge.runtime.shift import ONNX_SHIFT_KEY, ShiftModel
from leukedge.spec import FEATURES_NAME, INPUT_NAME, ONNX_METADATA_KEY, OUTPUT_NAME, ModelSpec
from leukedge.validate import UsageError

if TYPE_CHECKING:
    from torch import nn

EXPORTER = "torch.onnx dynamo (torch.export + onnxscript)"
BATCH_DIM = "batch"
# The dynamo exporter implements its ops at opset 18; lower requests cannot be met.
MIN_DYNAMO_OPSET = 18
MIN_OPSET = 17  # LayerNormalization; asked for, it is exported at MIN_DYNAMO_OPSET
SCOPE_KEY = "pkg.torch.onnx.name_scopes"
NO_FOLD_LIMIT = 1 << 40


class ExportError(RuntimeError):
    """An export that failed or produced a graph leukedge will not ship."""


class ExportArgumentError(ExportError, UsageError):
    """An export argument that can never work (a usage error: exit 2)."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and what it measured on the way."""

    path: Path
    opset: int
    seconds: float
    graph: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    opset: int = MIN_DYNAMO_OPSET,
    features: bool = True,
    shift: ShiftModel | None = None,
) -> OnnxExport:
    """Export ``model`` (eval mode, CPU, fp32) to ``path`` atomically and check the graph.

    With ``features`` the file has a second output, ``features`` (N, D): the
    penultimate features the domain-shift score is computed from, from the same pass
    as the logits. ``shift`` (the run's fitted shift model) is embedded in the file's
    metadata next to the spec, so the ``.onnx`` alone can score domain shift.
    """
    notes: list[str] = []
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    if opset > max_opset():
        raise ExportError(
            f"opset {opset} is newer than this exporter supports (at most {max_opset()})"
        )
    if opset < MIN_DYNAMO_OPSET:
        notes.append(
            f"opset {opset} requested; the dynamo exporter's lowest opset is "
            f"{MIN_DYNAMO_OPSET}, so the file is opset {MIN_DYNAMO_OPSET}"
        )
        opset = MIN_DYNAMO_OPSET
    start = time.perf_counter()
    proto = trace_to_onnx(model, spec, opset, features)
    proto = clean_graph(proto)
    own_outputs(proto)
    embed_spec(proto, spec)
    if shift is not None:
        embed_shift(proto, shift)
    onnx.checker.check_model(proto, full_check=True)
    problems = graph_problems(proto)
    if problems:
        raise ExportError(f"exported graph of {spec.arch} is not deployable: {'; '.join(problems)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    seconds = time.perf_counter() - start
    return OnnxExport(path, onnx_opset(proto), seconds, graph_summary(proto), notes)


def max_opset() -> int:
    """The newest opset both the installed torch exporter and the onnx package know."""
    import onnx.defs

    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as torch_max
    except ImportError:  # a torch without the constant: the last one it was known to have
        torch_max = 23
    return int(min(torch_max, onnx.defs.onnx_opset_version()))


def trace_to_onnx(
    model: nn.Module, spec: ModelSpec, opset: int, features: bool = False
) -> onnx.ModelProto:
    """Run the dynamo exporter with a dynamic batch and fold every constant subgraph.

    With ``features`` the graph answers the logits and the penultimate features.
    """
    model = model.eval().float().cpu()
    if features:
        from leukedge.train.features import answering_features

        with answering_features(model):
            return _trace(model, spec, opset, [OUTPUT_NAME, FEATURES_NAME])
    return _trace(model, spec, opset, [OUTPUT_NAME])


def _trace(model: nn.Module, spec: ModelSpec, opset: int, outputs: list[str]) -> onnx.ModelProto:
    import onnxscript
    import torch

    example = torch.zeros(2, *spec.input_shape, dtype=torch.float32)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=4096)
    arg_name = _first_arg_name(model)
    log = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")  # deprecation chatter of torch and timm
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_shapes={arg_name: {0: batch}},
                optimize=False,
                external_data=False,
            )
    except Exception as e:
        tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
        raise ExportError(f"torch.onnx.export failed for {spec.arch}: {e}\n{tail}") from e
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    onnxscript.optimizer.optimize(
        program.model, input_size_limit=NO_FOLD_LIMIT, output_size_limit=NO_FOLD_LIMIT
    )
    return program.model_proto


def _first_arg_name(model: nn.Module) -> str:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    if not params:
        raise ExportError(f"{type(model).__name__}.forward takes no input")
    return params[0]


def clean_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Graph rewrites that keep the function and help quantization and TensorRT."""
    fuse_pad_into_maxpool(proto)
    drop_unused_initializers(proto)
    name_nodes_by_scope(proto)
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    proto.producer_name = "leukedge"
    return proto


def _constant_arrays(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def fuse_pad_into_maxpool(proto: onnx.ModelProto) -> int:
    """Merge ``Pad(constant -inf or 0-width) -> MaxPool`` into MaxPool's ``pads``.

    MaxPool ignores padded cells, which is what padding with -inf achieves, so the
    result is identical. Returns the number of pairs merged.
    """
    graph = proto.graph
    consts = _constant_arrays(proto)
    consumers: Counter[str] = Counter(i for n in graph.node for i in n.input)
    producer = {o: n for n in graph.node for o in n.output}
    merged = 0
    for pool in graph.node:
        if pool.op_type != "MaxPool" or pool.input[0] not in producer:
            continue
        pad = producer[pool.input[0]]
        pads = _spatial_pads_for_maxpool(pad, consts)
        if pads is None or consumers[pad.output[0]] != 1:
            continue
        attrs = {a.name: a for a in pool.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [a + b for a, b in zip(old, pads, strict=True)]
        if "pads" in attrs:
            pool.attribute.remove(attrs["pads"])
        pool.attribute.append(onnx.helper.make_attribute("pads", new))
        pool.input[0] = pad.input[0]
        graph.node.remove(pad)
        merged += 1
    return merged


def _spatial_pads_for_maxpool(
    pad: onnx.NodeProto, consts: dict[str, np.ndarray]
) -> list[int] | None:
    """MaxPool ``pads`` (h0, w0, h1, w1) equivalent to a 4-D Pad node, or None."""
    if pad.op_type != "Pad" or len(pad.input) < 2 or pad.input[1] not in consts:
        return None
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    if mode != b"constant" or (len(pad.input) > 3 and pad.input[3]):
        return None
    amounts = [int(v) for v in consts[pad.input[1]].ravel()]
    if len(amounts) != 8 or min(amounts) < 0 or any(amounts[i] for i in (0, 1, 4, 5)):
        return None
    value = float(consts[pad.input[2]].ravel()[0]) if len(pad.input) > 2 and pad.input[2] else 0.0
    if len(pad.input) > 2 and pad.input[2] and pad.input[2] not in consts:
        return None
    if not (value == -math.inf or not any(amounts)):
        return None
    return [amounts[2], amounts[3], amounts[6], amounts[7]]


def own_outputs(proto: onnx.ModelProto) -> int:
    """Give each graph output that other nodes also read its own Identity node.

    The ``features`` output is also the classifier head's input, which INT8
    quantizes; a graph output must not be written by a Q/DQ node (TensorRT keeps
    network outputs float), so the output is a copy taken beside the head's input.
    Returns the number of outputs given an Identity.
    """
    graph = proto.graph
    read = {i for n in graph.node for i in n.input}
    done = 0
    for out in graph.output:
        if out.name not in read:
            continue
        inner = f"{out.name}/inner"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        graph.node.append(
            onnx.helper.make_node("Identity", [inner], [out.name], f"{out.name}/Identity")
        )
        done += 1
    return done


def drop_unused_initializers(proto: onnx.ModelProto) -> None:
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    unused = [t for t in proto.graph.initializer if t.name not in used]
    for t in unused:
        proto.graph.initializer.remove(t)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its producers (the ONNX checker and TensorRT require it).

    Graph rewriters (the fp16 converter among them) append nodes at the end.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError(f"graph has a cycle or a missing input near {pending[0].name}")
        ready_ids = {id(n) for n in ready}
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def node_scope(node: onnx.NodeProto) -> str:
    """The module path (``blocks.3.attn.qkv``) the exporter recorded for ``node``, or ''."""
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            # The last entry names the aten call; the one before it the innermost module.
            modules = [s for s in scopes[:-1] if s and not s.startswith("_")]
            return modules[-1] if modules else ""
    return ""


def name_nodes_by_scope(proto: onnx.ModelProto) -> None:
    """Rename nodes ``<module path>/<OpType>[_k]``; unnamed scopes become ``model``."""
    seen: Counter[str] = Counter()
    for node in proto.graph.node:
        base = f"{node_scope(node) or 'model'}/{node.op_type}"
        seen[base] += 1
        node.name = base if seen[base] == 1 else f"{base}_{seen[base] - 1}"


def embed_spec(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Put the ModelSpec JSON in ``metadata_props`` so the file describes itself."""
    kept = [p for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in kept}, ONNX_METADATA_KEY: spec.to_json()}
    )
    proto.doc_string = f"leukedge {spec.arch} classifier, classes {spec.classes}"


def embed_shift(proto: onnx.ModelProto, shift: ShiftModel) -> None:
    """Put the domain-shift model in ``metadata_props`` (base64 of its ``.npz``)."""
    props = {p.key: p.value for p in proto.metadata_props if p.key != ONNX_SHIFT_KEY}
    props[ONNX_SHIFT_KEY] = shift.to_text()
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)


def onnx_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def graph_problems(proto: onnx.ModelProto) -> list[str]:
    """What would break dynamic batch, TensorRT or leukedge's runtime contract."""
    g = proto.graph
    problems = []
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    outputs = [o.name for o in g.output]
    if [i.name for i in inputs] != [INPUT_NAME] or outputs not in (
        [OUTPUT_NAME],
        [OUTPUT_NAME, FEATURES_NAME],
    ):
        problems.append(
            f"I/O must be {INPUT_NAME} -> {OUTPUT_NAME}[, {FEATURES_NAME}], got "
            f"{[i.name for i in inputs]} -> {[o.name for o in g.output]}"
        )
    for vi in list(inputs) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            problems.append(f"{vi.name} has a fixed batch dimension")
        if any(d.dim_param for d in list(dims)[1:]):
            problems.append(f"{vi.name} has symbolic non-batch dimensions")
    ops = Counter(n.op_type for n in g.node)
    if ops.get("Ceil"):
        problems.append(f"{ops['Ceil']} Ceil node(s): shape-dependent SAME padding left in")
    for node in g.node:
        if node.op_type == "BatchNormalization" and any(
            a.name == "training_mode" and a.i for a in node.attribute
        ):
            problems.append(f"training-mode BatchNormalization {node.name}")
    return problems


def graph_summary(proto: onnx.ModelProto) -> dict[str, Any]:
    """Node counts and the figures that show the graph is clean (recorded in export.json)."""
    ops = Counter(n.op_type for n in proto.graph.node)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    return {
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items())),
        "parameters": params,
        "batch_norm_nodes": ops.get("BatchNormalization", 0),
        "shape_nodes": ops.get("Shape", 0),
        "ceil_nodes": ops.get("Ceil", 0),
        "pad_nodes": ops.get("Pad", 0),
        "layer_norm_nodes": ops.get("LayerNormalization", 0),
    }
