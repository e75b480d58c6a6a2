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

from leukedge.runtime.backends.base import Backend, BackendError, infer_in_batches
from leukedge.spec import ModelSpec

PRECISION_ORDER = ("fp32", "int8", "fp16")
ENGINE_PRECISION_ORDER = ("fp16", "int8", "fp32")
BACKENDS = ("auto", "ort", "trt")
DEFAULT_BATCH = 8

Measure = Callable[[Backend, int], dict[str, Any]]


@dataclass
class Candidate:
    """One way to run the model here: a name, the file it runs and how to open it."""

    name: str
    artifact: str
    open: Callable[[], Backend]


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
    """Median time of one batch after warm-up; stops early past ``budget_s`` (at least 2 runs).

    The input is random, not zeros: some kernels (INT8 in particular) take shortcuts on zeros.
    """
    b = max(1, min(batch, backend.max_batch or batch))
    x = np.random.default_rng(0).standard_normal((b, *backend.spec.input_shape)).astype(np.float32)
    for _ in range(warmup_iterations):
        backend.infer(x)
    backend.synchronize()
    times: list[float] = []
    start = clock()
    for _ in range(max(1, iterations)):
        t0 = clock()
        backend.infer(x)
        backend.synchronize()
        times.append(clock() - t0)
        if len(times) >= 2 and clock() - start > budget_s:
            break
    ms = statistics.median(times) * 1000.0
    return {
        "batch": b,
        "ms_per_batch": round(ms, 3),
        "ms_per_image": round(ms / b, 4),
        "iterations": len(times),
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
        backend = _open_and_measure(c, batch, measure, record)
        if backend is None:
            continue
        per_image = float(record["ms_per_image"])
        if best is None or per_image < best[0]:
            if best is not None:
                best[1].close()
            best = (per_image, backend, c, record)
        else:
            backend.close()
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
    try:
        record.update(measure(backend, batch))
    except Exception as e:
        backend.close()
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        return None
    record.update(name=backend.name, status="measured")
    return backend


def records_batch(records: Sequence[dict[str, Any]]) -> str:
    sizes = sorted({int(r["batch"]) for r in records})
    return "/".join(map(str, sizes)) or "?"


# --------------------------------------------------------------------------- resolving


def _device_index(device: str) -> int:
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return 0


def _ort_devices(device: str) -> list[str]:
    """ONNX Runtime providers to try: CPU always (unless a GPU is asked for), CUDA where present."""
    from leukedge.runtime.backends.ort import available_providers

    if device == "cpu":
        return ["cpu"]
    if device.startswith("cuda"):
        return ["cuda"]
    have = available_providers()
    return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in have else [])


def _ort_candidates(paths: Sequence[Path], device: str) -> list[Candidate]:
    from leukedge.runtime.backends.ort import OrtBackend, precision_of

    out = []
    for path in paths:
        for dev in _ort_devices(device):
            out.append(
                Candidate(
                    f"ort-{precision_of(path)}" + ("" if dev == "cpu" else f"-{dev}"),
                    str(path),
                    lambda p=path, d=dev: OrtBackend(p, device=d),
                )
            )
    return out


def _trt_engine_candidates(
    run_dir: Path, precisions: Sequence[str], device: str, unavailable: list[str]
) -> list[Candidate]:
    """Engines built for this machine's GPU and TensorRT under ``run_dir/engines``."""
    from leukedge.runtime.backends.gpu import trt_available

    index = _device_index(device)
    ok, why = trt_available(index)
    if not ok:
        unavailable.append(f"TensorRT: {why}")
        return []
    from leukedge.runtime.backends.trt import TrtBackend, find_engine

    out = []
    for precision in precisions:
        try:
            path = find_engine(run_dir, precision, index)
        except BackendError as e:
            unavailable.append(str(e))
            continue
        out.append(
            Candidate(f"trt-{precision}", str(path), lambda p=path: TrtBackend(p, device=index))
        )
    return out


def _precisions(precision: str | None, order: Sequence[str]) -> list[str]:
    if precision in (None, "auto"):
        return list(order)
    if precision not in order:
        raise BackendError(f"precision must be auto, fp32, fp16 or int8, got {precision!r}")
    return [precision]


def _read_export_record(export_dir: Path) -> dict[str, Any]:
    """export.json of an export folder, or {} when it is missing or unreadable."""
    path = export_dir / "export.json"
    if not path.is_file():
        return {}
    try:
        from leukedge.io import read_json

        record = read_json(path)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _within_budget(
    onnx_files: list[Path], record: dict[str, Any], unavailable: list[str]
) -> list[Path]:
    """Drop files whose ONNX Runtime parity in export.json failed its budget.

    An automatic choice must not trade correctness for speed: on x86 CPUs without
    VNNI, ONNX Runtime's INT8 kernels can flip many predictions even where the
    INT8 file itself is fine. Asking for the precision explicitly still runs it.
    """
    from leukedge.budgets import Budgets, judge
    from leukedge.runtime.backends.ort import precision_of

    files = record.get("files", {})
    kept = []
    for onnx in onnx_files:
        precision = precision_of(onnx)
        parity = files.get(precision, {}).get("parity")
        verdict = judge(precision, parity, Budgets()) if parity else {"status": "none"}
        if verdict["status"] == "fail":
            unavailable.append(
                f"ort-{precision}: left out of --backend auto, its ONNX Runtime parity in "
                f"export.json failed the budget ({'; '.join(verdict['reasons'])}); "
                f"pass --precision {precision} to run it anyway"
            )
        else:
            kept.append(onnx)
    return kept or onnx_files


def run_dir_candidates(
    run_dir: Path, backend: str, device: str, precision: str | None
) -> tuple[list[Candidate], list[str], list[str]]:
    """(candidates, why others are unavailable, notes) for a run dir or an export folder."""
    export_dir = run_dir / "export" if (run_dir / "spec.json").is_file() else run_dir
    wanted = _precisions(precision, PRECISION_ORDER)
    onnx_files = [export_dir / f"model.{p}.onnx" for p in wanted]
    onnx_files = [p for p in onnx_files if p.is_file()]
    record = _read_export_record(export_dir)
    unavailable: list[str] = []
    candidates: list[Candidate] = []
    if backend in ("auto", "trt") and (run_dir / "spec.json").is_file():
        engine_order = [p for p in ENGINE_PRECISION_ORDER if p in wanted]
        candidates += _trt_engine_candidates(run_dir, engine_order, device, unavailable)
        if backend == "trt" and not candidates:
            raise BackendError("--backend trt, but " + "; ".join(unavailable))
    if backend in ("auto", "ort"):
        if precision in (None, "auto"):
            onnx_files = _within_budget(onnx_files, record, unavailable)
        candidates += _ort_candidates(onnx_files, device)
    if not candidates:
        if not onnx_files:
            what = "" if precision in (None, "auto") else f" {precision}"
            raise BackendError(
                f"{run_dir} has no exported{what} model ({export_dir}/model.*.onnx): "
                f"run `leukedge export {run_dir}` first"
            )
        raise BackendError(f"no backend can run {run_dir} here: " + "; ".join(unavailable))
    # Parity warnings export.json recorded, shown next to the choice.
    notes = [f"export.json: {w}" for w in record.get("warnings", [])]
    return candidates, unavailable, notes


def resolve_candidates(
    model: str | Path, backend: str = "auto", device: str = "auto", precision: str | None = None
) -> tuple[list[Candidate], list[str], list[str]]:
    """Every way ``model`` can run here under the ``backend`` choice."""
    if backend not in BACKENDS:
        raise BackendError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "spec.json").is_file() or any(path.glob("model.*.onnx")):
            return run_dir_candidates(path, backend, device, precision)
        raise BackendError(
            f"{path} is neither a run dir (no spec.json) nor an export folder (no model.*.onnx)"
        )
    if not path.is_file():
        raise BackendError(f"no model at {path} (give a run dir, an .onnx or an .engine)")
    suffix = path.suffix.lower()
    if suffix == ".engine":
        if backend == "ort":
            raise BackendError(f"{path} is a TensorRT engine; ONNX Runtime runs the .onnx files")
        from leukedge.runtime.backends.trt import TrtBackend

        index = _device_index(device)
        return [Candidate(f"trt ({path.name})", str(path), lambda: TrtBackend(path, index))], [], []
    if suffix == ".onnx":
        if backend == "trt":
            raise BackendError(
                f"{path} is an ONNX file; TensorRT runs engines built from it on this machine "
                f"(`leukedge build-engine RUN_DIR`), then pass the run dir or the .engine"
            )
        return _ort_candidates([path], device), [], []
    raise BackendError(f"{path}: a model is a run dir, an .onnx or an .engine file")


# --------------------------------------------------------------------------- classifier


class Classifier:
    """Crops of cells (8-bit BGR, any size) -> logits or probabilities of ``spec.classes``."""

    def __init__(
        self, backend: Backend, selection: Selection | None = None, batch_size: int = 32
    ) -> None:
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.batch_size = batch_size
        self.selection = selection or Selection(
            chosen=backend.name, artifact="", reason="backend given by the caller"
        )

    @classmethod
    def load(
        cls,
        model: str | Path,
        backend: str = "auto",
        device: str = "auto",
        precision: str | None = None,
        batch: int = DEFAULT_BATCH,
        measure: Measure | None = None,
    ) -> Classifier:
        """Open ``model`` (run dir, ``.onnx`` or ``.engine``) on the fastest backend here.

        ``backend``: ``auto`` (measure every candidate), ``ort`` or ``trt`` (measure
        only those); ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
        ``precision``: limit a run dir to one of fp32/fp16/int8; ``batch``: the
        batch size candidates are timed at (the pipeline's ``--batch``).
        """
        candidates, unavailable, notes = resolve_candidates(model, backend, device, precision)
        chosen, selection = choose_fastest(candidates, batch, measure)
        selection.unavailable = unavailable
        selection.notes = notes
        if len(candidates) == 1 and unavailable:
            selection.reason = "the only candidate that can run here"
        return cls(chosen, selection, batch_size=max(batch, 1))

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def positive_index(self) -> int:
        return self.spec.positive_index

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops -> float32 (N, 3, S, S) exactly as the model was trained."""
        from leukedge.imaging.preprocess import preprocess_batch

        return preprocess_batch(list(crops), self.spec)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, S, S) -> float32 logits (N, C), in batches the backend accepts."""
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return infer_in_batches(self.backend, x, self.batch_size)

    def logits(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.infer(self.preprocess(crops))

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, num_classes), float32; rows follow ``spec.classes``."""
        return probabilities(self.logits(crops))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({self.backend.name}, classes={self.spec.classes})"


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes, float32; an empty input stays empty."""
    from leukedge.metrics import softmax

    z = np.asarray(logits, dtype=np.float32)
    if z.size == 0:
        return z.reshape(0, z.shape[-1] if z.ndim == 2 else 0)
    return softmax(z).astype(np.float32)
