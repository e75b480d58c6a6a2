"""Does an exported file answer like the PyTorch model it came from?

Every ONNX file is run through the runtime's own :class:`OrtBackend` (the code that
serves it next to the microscope) on the same preprocessed images as PyTorch, and
compared logit by logit with :func:`leukedge.metrics.logit_parity`; accuracy is
reported for both so a precision change that flips answers is visible as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukedge.metrics import classification_metrics, logit_parity
from leukedge.runtime.backends.base import infer_in_batches
from leukedge.runtime.backends.ort import OrtBackend
from leukedge.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn


def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Eager fp32 logits of ``model`` in eval mode, batch by batch."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))))
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outs).float().numpy()


def onnx_logits(
    path: str | Path, x: np.ndarray, spec: ModelSpec | None = None, batch_size: int = 32
) -> np.ndarray:
    """Logits of an ONNX file on CPU through the runtime backend."""
    backend = OrtBackend(path, device="cpu", spec=spec)
    try:
        return infer_in_batches(backend, x, batch_size)
    finally:
        backend.close()


def reference_logits(path: str | Path, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits with ONNX Runtime's graph optimisations off: every op run as written.

    For a Q/DQ file this is the exact quantized arithmetic (DequantizeLinear -> float op
    -> QuantizeLinear) that TensorRT and VNNI/ARM int8 kernels reproduce. On x86 CPUs
    without VNNI, ONNX Runtime's fused int8 kernels saturate 16-bit intermediate sums
    (``reduce_range`` exists for that), so the optimised run can differ much more than
    the file itself does.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> float:
    return float(
        classification_metrics(labels, logits, spec.classes, spec.positive_index)["accuracy"]
    )


def compare(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, spec: ModelSpec
) -> dict[str, Any]:
    """``logit_parity`` plus the accuracy of both and its change (None without labels)."""
    out = logit_parity(reference, candidate)
    if labels is not None and len(labels):
        ref_acc, cand_acc = accuracy(reference, labels, spec), accuracy(candidate, labels, spec)
        out.update(accuracy_reference=ref_acc, accuracy=cand_acc, accuracy_delta=cand_acc - ref_acc)
    return out


def batch_check(
    path: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    sizes: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> dict[str, float]:
    """max |Δlogit| against PyTorch at several batch sizes on random inputs.

    Proves the batch dimension is really dynamic (a graph specialised to the export
    example would fail or differ here) independently of any dataset.
    """
    rng = np.random.default_rng(seed)
    backend = OrtBackend(path, device="cpu", spec=spec)
    try:
        out = {}
        for n in sizes:
            x = rng.standard_normal((n, *spec.input_shape)).astype(np.float32)
            diff = np.abs(backend.infer(x) - torch_logits(model, x))
            out[str(n)] = float(diff.max())
        return out
    finally:
        backend.close()
