"""The one small interface every inference backend implements.

A backend turns a preprocessed float32 batch (N, 3, S, S) into logits (N, C).
A backend whose model also returns its penultimate features (the ``features``
output of files exported by this leukedge) offers ``infer_with_features``; files
exported before have logits only and still run everywhere.
Everything else in the runtime and the bench (batching, parity, latency) is
written against this interface only, so ONNX Runtime and TensorRT are
interchangeable and a test can put any object with these members in their place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from leukedge.spec import ModelSpec


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says why and what to do."""


class BackendUnavailable(BackendError):
    """The backend's software or hardware is not on this machine."""

    exit_code = 2  # the command names something this machine cannot run: a usage error


@runtime_checkable
class Backend(Protocol):
    name: str  # e.g. "ort-fp32", "trt-int8"
    spec: ModelSpec
    precision: str  # "fp32" | "fp16" | "int8"
    device: str  # "cpu", "cuda:0", ...
    max_batch: int | None  # None: any batch size

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) -> float32 logits (N, num_classes)."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU); latency timing calls it."""
        ...

    def close(self) -> None: ...


def check_batch(batch: np.ndarray, spec: ModelSpec, max_batch: int | None) -> np.ndarray:
    """Validate and normalise an input batch; errors say what was expected."""
    x = np.asarray(batch)
    if x.ndim == 3:
        x = x[None]
    expected = spec.input_shape
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise BackendError(f"expected input (N, {', '.join(map(str, expected))}), got {x.shape}")
    if x.shape[0] == 0:
        raise BackendError("empty batch")
    if max_batch is not None and x.shape[0] > max_batch:
        raise BackendError(f"batch {x.shape[0]} exceeds this backend's maximum {max_batch}")
    return np.ascontiguousarray(x, dtype=np.float32)


def infer_in_batches(backend: Backend, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits for any number of images, respecting the backend's maximum batch."""
    limit = min(batch_size, backend.max_batch or batch_size)
    outs = [backend.infer(x[i : i + limit]) for i in range(0, len(x), limit)]
    if not outs:
        return np.zeros((0, backend.spec.num_classes), dtype=np.float32)
    return np.concatenate(outs, axis=0)


def infer_outputs_in_batches(
    backend: Backend, x: np.ndarray, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and, where the backend's model has them, penultimate features (else None)."""
    with_features = getattr(backend, "infer_with_features", None)
    if with_features is None:
        return infer_in_batches(backend, x, batch_size), None
    limit = min(batch_size, backend.max_batch or batch_size)
    logits, feats = [], []
    for i in range(0, len(x), limit):
        z, f = with_features(x[i : i + limit])
        logits.append(z)
        feats.append(f)
    if not logits:
        return np.zeros((0, backend.spec.num_classes), dtype=np.float32), None
    features = None if any(f is None for f in feats) else np.concatenate(feats, axis=0)
    return np.concatenate(logits, axis=0), features
