"""Inference backends: ONNX Runtime everywhere, TensorRT where it is installed."""

from leukedge.runtime.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    infer_in_batches,
)
from leukedge.runtime.backends.ort import OrtBackend, spec_from_onnx

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "OrtBackend",
    "infer_in_batches",
    "spec_from_onnx",
]
