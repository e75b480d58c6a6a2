"""A compiled leukedge model behind one call: cell crops in, class probabilities out.

``Classifier.load`` takes a run dir (its ``export/model.*.onnx`` files and any
TensorRT engine built for this machine under ``engines/``), a single ``.onnx``
or a single ``.engine`` (with its sidecar JSON). With ``backend="auto"`` every
candidate that can run here is opened and timed for a few warm batches at a
typical batch size, and the fastest is kept: which precision wins depends on
the model and the hardware (INT8 is slower than FP32 for some models on CPUs
without VNNI, faster on Jetson), so it is measured, never assumed. The timings
and the reason for the choice are kept in :attr:`Classifier.selection`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.runtime.backends.base import (
    Backend,
    BackendError,
    infer_in_batches,
    infer_outputs_in_batches,
)
from leukedge.runtime.backends.resolve import Candidate, OpenOptions, resolve_candidates
from leukedge.runtime.backends.timing import StopRule, interleave, timed_call
from leukedge.runtime.shift import ShiftModel, ShiftModelError, find_shift_model
from leukedge.spec import ModelSpec
from leukedge.validate import UsageError, batch_memory

DEFAULT_BATCH = 8

Measure = Callable[[Backend, int], dict[str, Any]]


class EmptyCropError(ValueError):
    """A crop without pixels: there is nothing to classify."""


@dataclass
class Selection:
    """Which backend runs the model and why (written into summary.json)."""

    chosen: str
    artifact: str
    reason: str
    batch: int | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- measuring


def measure_backend(
    backend: Backend,
    batch: int,
    iterations: int = 5,
    warmup_iterations: int = 2,
    budget_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Median time of one batch after warm-up, with the bench's timing loop.

    Stops after ``iterations`` calls, or earlier once ``budget_s`` of timed calls
    have passed. The input is random, not zeros: some kernels (INT8
    in particular) take shortcuts on zeros.
    """
    b = max(1, min(batch, backend.max_batch or batch))
    x = np.random.default_rng(0).standard_normal((b, *backend.spec.input_shape)).astype(np.float32)
    for _ in range(warmup_iterations):
        backend.infer(x)
    backend.synchronize()
    n = max(1, iterations)
    rule = StopRule(min_iters=n, min_time_s=0.0, max_time_s=budget_s, max_iters=n)
    samples = interleave({backend.name: timed_call(backend, x, clock)}, rule)[backend.name]
    ms = statistics.median(samples.host_ms)
    return {
        "batch": b,
        "ms_per_batch": round(ms, 3),
        "ms_per_image": round(ms / b, 4),
        "iterations": len(samples.host_ms),
    }


def choose_fastest(
    candidates: Sequence[Candidate], batch: int, measure: Measure | None = None
) -> tuple[Backend, Selection]:
    """Open and time every candidate, keep the fastest per image, close the others.

    A candidate that fails to open or run is recorded with its error and skipped;
    when every one fails the errors are raised together. A single candidate is
    opened without timing (its errors are raised as they are, with their advice).
    """
    if not candidates:
        raise BackendError("no backend can run this model here")
    if len(candidates) == 1:
        c = candidates[0]
        backend = c.open()
        _check_batch_memory(backend, batch)
        return backend, Selection(
            chosen=backend.name,
            artifact=c.artifact,
            reason="the only candidate",
            candidates=[{"name": backend.name, "artifact": c.artifact, "status": "chosen"}],
        )
    measure = measure or measure_backend
    best: tuple[float, Backend, Candidate, dict[str, Any]] | None = None
    records: list[dict[str, Any]] = []
    for c in candidates:
        record: dict[str, Any] = {"name": c.name, "artifact": c.artifact}
        records.append(record)
        opened = _open_and_measure(c, batch, measure, record)
        if opened is None:
            continue
        per_image = float(record["ms_per_image"])
        if best is None or per_image < best[0]:
            if best is not None:
                best[1].close()
            best = (per_image, opened, c, record)
        else:
            opened.close()
    if best is None:
        raise BackendError(
            "no backend could run the model: "
            + "; ".join(f"{r['name']} ({r['artifact']}): {r['error']}" for r in records)
        )
    _, backend, chosen, chosen_record = best
    chosen_record["status"] = "chosen"
    measured = sorted((r for r in records if "ms_per_image" in r), key=lambda r: r["ms_per_image"])
    reason = (
        f"fastest of {len(measured)} measured at batch {records_batch(measured)}: "
        + ", ".join(f"{r['name']} {r['ms_per_image']:.3g} ms/image" for r in measured)
    )
    return backend, Selection(
        chosen=backend.name,
        artifact=chosen.artifact,
        reason=reason,
        batch=batch,
        candidates=records,
    )


def _open_and_measure(
    c: Candidate, batch: int, measure: Measure, record: dict[str, Any]
) -> Backend | None:
    """The open backend with its timings in ``record``, or None with the error recorded."""
    try:
        backend = c.open()
    except Exception as e:  # recorded; the other candidates may still run
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        return None
    _check_batch_memory(backend, batch)
    try:
        record.update(measure(backend, batch))
    except Exception as e:
        backend.close()
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        return None
    record.update(name=backend.name, status="measured")
    return backend


def _check_batch_memory(backend: Backend, batch: int) -> None:
    """Refuse (closing the backend) a batch whose inputs alone pass the memory limit."""
    try:
        batch_memory(batch, backend.spec.input_size)
    except UsageError:
        backend.close()
        raise


def records_batch(records: Sequence[dict[str, Any]]) -> str:
    sizes = sorted({int(r["batch"]) for r in records})
    return "/".join(map(str, sizes)) or "?"


# --------------------------------------------------------------------------- classifier


class Classifier:
    """Crops of cells (8-bit BGR, any size) -> logits or probabilities of ``spec.classes``."""

    def __init__(
        self,
        backend: Backend,
        selection: Selection | None = None,
        batch_size: int = 32,
        shift: ShiftModel | None = None,
    ) -> None:
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.batch_size = batch_size
        self.shift = shift
        self.selection = selection or Selection(
            chosen=backend.name, artifact="", reason="backend given by the caller"
        )

    @classmethod
    def load(
        cls,
        model: str | Path,
        backend: str = "auto",
        device: str = "auto",
        batch: int = DEFAULT_BATCH,
        measure: Measure | None = None,
        options: OpenOptions | None = None,
    ) -> Classifier:
        """Open ``model`` (run dir, ``.onnx`` or ``.engine``) on the fastest backend here.

        ``backend``: ``auto`` (measure every candidate), a family ``ort`` or ``trt``
        (measure only those), or one backend such as ``ort-int8``, ``ort-fp16-cuda``,
        ``trt-fp16`` (the names ``leukedge bench`` uses); ``device``: ``auto``,
        ``cpu``, ``cuda`` or ``cuda:N``; ``batch``: the batch size candidates are
        timed at (the pipeline's ``--batch``); ``options``: threads and spinning of ONNX
        Runtime (:func:`leukedge.runtime.threads.plan_threads` for a pipeline run).
        """
        candidates, unavailable, notes = resolve_candidates(model, backend, device, options)
        chosen, selection = choose_fastest(candidates, batch, measure)
        selection.unavailable = unavailable
        selection.notes = notes
        if len(candidates) == 1 and unavailable:
            selection.reason = "the only candidate that can run here"
        try:
            shift = find_shift_model(model)
        except ShiftModelError as e:
            selection.notes.append(f"no domain-shift score: {e}")
            shift = None
        return cls(chosen, selection, batch_size=max(batch, 1), shift=shift)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def positive_index(self) -> int:
        return self.spec.positive_index

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops -> float32 (N, 3, S, S) exactly as the model was trained.

        An empty list gives an empty batch; a crop without pixels raises
        :class:`EmptyCropError` (a made-up row would read as a class).
        """
        from leukedge.imaging.preprocess import preprocess_batch

        return preprocess_batch(checked_crops(crops), self.spec)

    def prepare(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crops -> (N, 3, S, S) tensor and (N, 6) stain statistics for the shift score.

        Empty crops raise :class:`EmptyCropError` as in :meth:`preprocess`.
        """
        from leukedge.imaging.preprocess import prepare_batch

        return prepare_batch(checked_crops(crops), self.spec)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, S, S) -> float32 logits (N, C), in batches the backend accepts."""
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return self._finite(infer_in_batches(self.backend, x, self.batch_size))

    def infer_outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and penultimate features (None when the model file has no ``features``)."""
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32), None
        logits, features = infer_outputs_in_batches(self.backend, x, self.batch_size)
        return self._finite(logits), features

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        """The logits, or BackendError: NaN would turn into a class and silently wrong counts."""
        bad = ~np.isfinite(logits).all(axis=tuple(range(1, logits.ndim)))
        if bad.any():
            raise BackendError(
                f"{self.backend.name} returned NaN or infinite logits for {int(bad.sum())} of "
                f"{len(logits)} images: the model file or its spec is broken; export the run again"
            )
        return logits

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of the logits over the spec's temperature."""
        return probabilities(logits, self.spec.temperature)

    def logits(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.infer(self.preprocess(crops))

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities (N, num_classes), float32; rows follow ``spec.classes``."""
        return self.probabilities(self.logits(crops))

    def shift_scores(
        self, features: np.ndarray | None, stains: np.ndarray | None
    ) -> tuple[np.ndarray | None, str | None]:
        """Domain-shift score per cell (1.0 = threshold), or None and the reason there is none."""
        if self.shift is None:
            return None, "the model has no domain-shift record (train it with this leukedge)"
        if features is None:
            return None, (
                "the model file has no 'features' output (exported before domain-shift "
                "scores; re-export it with `leukedge export`)"
            )
        try:
            return self.shift.scores(features, stains), None
        except ShiftModelError as e:
            return None, str(e)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({self.backend.name}, classes={self.spec.classes})"


def checked_crops(crops: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The crops as a list; a crop without pixels raises :class:`EmptyCropError`."""
    out = list(crops)
    for i, crop in enumerate(out):
        shape = np.shape(crop)
        if len(shape) < 2 or shape[0] == 0 or shape[1] == 0:
            raise EmptyCropError(
                f"crop {i} has no pixels (shape {shape}); cut the cell with a box of at "
                "least 1x1 pixels, or leave it out"
            )
    return out


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over classes of ``logits / temperature``, float32; an empty input stays empty."""
    from leukedge.metrics import softmax

    z = np.asarray(logits, dtype=np.float32)
    if z.size == 0:
        return z.reshape(0, z.shape[-1] if z.ndim == 2 else 0)
    return softmax(z / np.float32(temperature)).astype(np.float32)
