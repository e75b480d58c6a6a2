"""FP16 ONNX: fp16 weights and compute, float32 input and output, some ops kept in fp32.

TensorRT builds this file strongly typed, so the types written here are the types it
computes in. Which ops stay in fp32 was decided by running each normalization and
reduction op of the three models on its real inputs (the intermediate tensors of the
FP32 graph on preprocessed cells; the CNN at 32 px, ``resnet50`` and
``vit_small_r26_s32_224`` at 64 px, trained briefly) in fp16 arithmetic against fp32:

- ``InstanceNormalization`` (the GroupNorm of the hybrid's ResNet stem; exported as
  Reshape -> InstanceNormalization): its inputs are the outputs of weight-standardised
  convolutions and reach |x| ~ 200, so sum((x - mean)^2) over a feature map exceeds
  65504 and the fp16 result is inf/garbage (max error 9.1 on outputs of unit scale).
  ``GroupNormalization`` is the same computation under its opset-18+ name.
- ``LayerNormalization``: no overflow on these inputs (|x| <= 9.4), but mean and
  variance over 384 channels accumulated in fp16 err by 4e-3, four times the rounding
  of storing the result in fp16 (1e-3 at |y| ~ 3.5); trained ViTs also grow residual
  outliers that make x^2 overflow. It is a memory-bound op: fp32 costs little.
- Not kept: ``Softmax`` (error 2e-4, the fp16 rounding of a probability; exponents
  are taken after the max is subtracted), ``ReduceMean`` (the global pools of the CNN
  and ResNet-50, 5e-4 relative: fp16's own precision), ``Erf``/GELU and
  Conv/MatMul/Gemm (largest activation measured ~200, far from 65504). End to end on
  ONNX Runtime, blocking these too changed nothing (max |Δlogit| 3.7e-4 vs 3.2e-4).

On top of that list, every node that reads or writes a tensor above half the fp16
range on the export's own images is kept in fp32 (``activation_peaks``), so a model
with larger activations than these is still safe; the nodes are listed in export.json.
ONNX Runtime on CPU casts ops without fp16 kernels to fp32, so CPU parity measures
fp16 weights and fp16 tensors between ops; the reduction inside an op is what the
list above protects on the GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from leukedge.export.onnx_export import sort_topologically
from leukedge.io import atomic_path
from leukedge.spec import INPUT_NAME

KEEP_FP32_OP_TYPES: tuple[str, ...] = (
    "InstanceNormalization",
    "GroupNormalization",
    "LayerNormalization",
)
KEEP_FP32_REASONS: dict[str, str] = {
    "InstanceNormalization": "variance of weight-standardised conv outputs (|x|~200) overflows",
    "GroupNormalization": "same computation as InstanceNormalization",
    "LayerNormalization": "fp16 mean/variance 4x the fp16 rounding error; outliers overflow x^2",
}
FP16_MAX = 65504.0
HEADROOM = 0.5  # a tensor above half the fp16 range on the export images is kept in fp32
PEAK_IMAGES = 16
PEAK_BATCH = 4


@dataclass
class Fp16Result:
    path: Path
    seconds: float
    keep_op_types: list[str]
    keep_nodes: list[str]
    peak_abs_activation: float | None
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "keep_fp32_policy": list(KEEP_FP32_OP_TYPES),
            "keep_fp32_op_types": self.keep_op_types,
            "keep_fp32_reasons": {k: KEEP_FP32_REASONS.get(k, "") for k in self.keep_op_types},
            "keep_fp32_nodes": self.keep_nodes,
            "peak_abs_activation": self.peak_abs_activation,
            "io_dtype": "float32",
        }


def activation_peaks(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """Largest |value| of every float tensor the graph computes, over the images ``x``."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    float_outputs = _float_node_outputs(probe)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in float_outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    peaks = dict.fromkeys(float_outputs, 0.0)
    for i in range(0, len(x), PEAK_BATCH):
        batch = np.ascontiguousarray(x[i : i + PEAK_BATCH], dtype=np.float32)
        for name, value in zip(
            float_outputs, session.run(float_outputs, {INPUT_NAME: batch}), strict=True
        ):
            peak = float(np.max(np.abs(value))) if value.size else 0.0
            peaks[name] = max(peaks[name], peak if np.isfinite(peak) else float("inf"))
    return peaks


def _float_node_outputs(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
    return [
        o
        for n in model.graph.node
        for o in n.output
        if o and types.get(o) == onnx.TensorProto.FLOAT
    ]


def nodes_beyond_fp16(model: onnx.ModelProto, peaks: dict[str, float]) -> list[str]:
    """Nodes that produce or consume a tensor above ``HEADROOM`` x the fp16 maximum."""
    hot = {name for name, peak in peaks.items() if peak > HEADROOM * FP16_MAX}
    return [n.name for n in model.graph.node if hot & (set(n.input) | set(n.output))]


def convert_fp16(
    src: str | Path,
    dst: str | Path,
    x: np.ndarray | None = None,
    keep_op_types: tuple[str, ...] = KEEP_FP32_OP_TYPES,
) -> Fp16Result:
    """Write ``dst`` as FP16 with float32 I/O; ``x`` (preprocessed images) adds range checks."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    start = time.perf_counter()
    model = onnx.load(str(src))
    notes: list[str] = []
    keep_nodes: list[str] = []
    peak = None
    if x is not None and len(x):
        peaks = activation_peaks(model, x[:PEAK_IMAGES])
        peak = max(peaks.values(), default=0.0)
        keep_nodes = nodes_beyond_fp16(model, peaks)
        if keep_nodes:
            notes.append(
                f"{len(keep_nodes)} node(s) handle values above {HEADROOM:g} x the fp16 range "
                f"(peak {peak:.3g}); kept in fp32"
            )
    else:
        notes.append("no images: fp16 activation ranges were not checked")
    present = {n.op_type for n in model.graph.node}
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_op_types)),
        node_block_list=keep_nodes,
    )
    sort_topologically(converted.graph)
    onnx.checker.check_model(converted, full_check=True)
    with atomic_path(dst) as tmp:
        onnx.save_model(converted, str(tmp))
    return Fp16Result(
        path=Path(dst),
        seconds=time.perf_counter() - start,
        keep_op_types=[t for t in keep_op_types if t in present],
        keep_nodes=keep_nodes,
        peak_abs_activation=peak,
        warnings=notes,
    )
