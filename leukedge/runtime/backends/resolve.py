"""One backend vocabulary, one resolver: which backends can run a model here, and opening them.

Names come from :mod:`leukedge.artifacts`: ``auto`` (every candidate), a family
(``ort``, ``trt``: any precision of it) or one backend (``ort-int8``,
``ort-fp16-cuda``, ``trt-fp16``) or a model on a Triton Inference Server
(``triton://HOST:PORT/MODEL``). ``leukedge run --backend``, ``leukedge bench
--backends`` and ``Classifier.load(backend=...)`` all come through here, so a
name means the same thing everywhere (cf. Polygraphy's loaders beside their runners).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from leukedge.artifacts import (
    AUTO,
    ENGINE_AUTO_ORDER,
    ORT_AUTO_ORDER,
    SPEC_FILE,
    TRITON,
    BackendName,
    artifact,
    export_dir_of,
    file_parity,
    is_export_dir,
    is_run_dir,
    parse_backend,
    precision_of_file,
    read_export_record,
)
from leukedge.budgets import Budgets, judge
from leukedge.runtime.backends.base import Backend, BackendError, BackendUnavailable
from leukedge.spec import ModelSpec

DEVICES_HELP = "auto | cpu | cuda | cuda:N"


@dataclass
class Candidate:
    """One way to run the model here: a backend name, the file it runs and how to open it."""

    name: str
    artifact: str
    open: Callable[[], Backend]


@dataclass(frozen=True)
class OpenOptions:
    """How backends are opened: ONNX Runtime threads and spinning, the GPU index."""

    threads: int | None = None
    spinning: bool = True
    gpu: int = 0


def device_index(device: str) -> int:
    """The GPU index of ``cuda:N`` (0 for anything else)."""
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return 0


def check_device(device: str) -> str:
    d = str(device).strip().lower()
    if d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise BackendError(f"--device must be {DEVICES_HELP}, got {device!r}")


# ---------------------------------------------------------------- opening one named backend


def onnx_file(model_dir: Path, precision: str) -> Path:
    """The exported file of ``precision`` in a run dir or export folder, or why it is missing."""
    path = export_dir_of(model_dir) / artifact(precision).onnx_name
    if not path.is_file():
        raise BackendUnavailable(
            f"not exported: no {path} (run `leukedge export {model_dir} --precision {precision}`)"
        )
    return path


def open_ort(
    path: Path, device: str, options: OpenOptions, spec: ModelSpec | None = None
) -> Backend:
    from leukedge.runtime.backends.ort import OrtBackend

    return OrtBackend(
        path, device=device, threads=options.threads, spec=spec, spinning=options.spinning
    )


def local_spec(model: Path) -> ModelSpec | None:
    """The ModelSpec of a run dir, export folder or ``.onnx`` (None for anything else)."""
    from leukedge.runtime.backends.ort import spec_from_onnx

    if is_run_dir(model):
        return ModelSpec.load(model / SPEC_FILE)
    if model.is_file() and model.suffix.lower() == ".onnx":
        return spec_from_onnx(model)
    if is_export_dir(model):
        first = next(p for p in sorted(model.glob("model.*.onnx")))
        return spec_from_onnx(first)
    return None


def open_triton(url: str, model: Path, expected_spec: ModelSpec | None = None) -> Backend:
    """The Triton backend for ``url``, preprocessing as the local ``model`` says."""
    from leukedge.runtime.backends.triton import TritonBackend

    return TritonBackend(url, spec=expected_spec or local_spec(model))


def open_named(
    name: str | BackendName,
    model_dir: str | Path,
    options: OpenOptions | None = None,
    expected_spec: ModelSpec | None = None,
) -> Backend:
    """Open one specific backend (``ort-int8``, ``ort-fp16-cuda``, ``trt-fp16``) of a run dir.

    ``expected_spec``: refuse an ONNX file whose embedded ModelSpec differs (an
    export left from another model). :class:`BackendError` says why it cannot run here.
    """
    parsed = name if isinstance(name, BackendName) else parse_backend(name)
    options = options or OpenOptions()
    root = Path(model_dir)
    if parsed.family == TRITON:
        return open_triton(parsed.name, root, expected_spec)
    if parsed.family == "ort" and parsed.precision:
        path = onnx_file(root, parsed.precision)
        from leukedge.runtime.backends.ort import spec_from_onnx

        embedded = spec_from_onnx(path)
        if expected_spec is not None and embedded != expected_spec:
            raise BackendError(
                f"{path} was exported from another model (its embedded spec differs from "
                f"spec.json): re-run `leukedge export {root}`"
            )
        device = "cuda" if parsed.device == "cuda" else "cpu"
        backend = open_ort(path, device, options, spec=embedded)
        backend.name = parsed.name
        return backend
    if parsed.family == "trt" and parsed.precision:
        from leukedge.runtime.backends.gpu import trt_available

        ok, why = trt_available(options.gpu)
        if not ok:
            raise BackendUnavailable(f"TensorRT: {why}")
        from leukedge.runtime.backends.trt import TrtBackend, find_engine

        return TrtBackend(find_engine(root, parsed.precision, options.gpu), device=options.gpu)
    raise BackendError(
        f"{parsed.name} is not one backend of a run dir (give ort-<precision>[-cuda] or "
        "trt-<precision>)"
    )


# ---------------------------------------------------------------- every candidate for a choice


def _ort_devices(device: str, wanted: str) -> list[str]:
    """ONNX Runtime providers to try for ``--device`` and the name's own device."""
    if wanted in ("cpu", "cuda"):
        if device == "cpu" and wanted == "cuda" or device.startswith("cuda") and wanted == "cpu":
            raise BackendError(f"--device {device} contradicts a backend that runs on {wanted}")
        return [wanted]
    if device == "cpu":
        return ["cpu"]
    if device.startswith("cuda"):
        return ["cuda"]
    from leukedge.runtime.backends.ort import available_providers

    return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in available_providers() else [])


def _ort_candidates(
    paths: Sequence[Path], device: str, wanted_device: str, options: OpenOptions
) -> list[Candidate]:
    out = []
    for path in paths:
        for dev in _ort_devices(device, wanted_device):
            out.append(
                Candidate(
                    f"ort-{precision_of_file(path)}" + ("" if dev == "cpu" else f"-{dev}"),
                    str(path),
                    partial(open_ort, path, dev, options),
                )
            )
    return out


def _trt_engine_candidates(
    run_dir: Path, precisions: Sequence[str], options: OpenOptions, unavailable: list[str]
) -> list[Candidate]:
    """Engines built for this machine's GPU and TensorRT under ``run_dir/engines``.

    An automatic choice (every precision in ``ENGINE_AUTO_ORDER``) leaves out an
    engine whose parity check failed its budget when it was built;
    naming the one precision (``trt-int8``) still runs it.
    """
    from leukedge.runtime.backends.engine_plan import SidecarError, load_sidecar_for
    from leukedge.runtime.backends.gpu import trt_available

    ok, why = trt_available(options.gpu)
    if not ok:
        unavailable.append(f"TensorRT: {why}")
        return []
    from leukedge.runtime.backends.trt import TrtBackend, find_engine

    automatic = tuple(precisions) == tuple(ENGINE_AUTO_ORDER)
    out = []
    for precision in precisions:
        try:
            path = find_engine(run_dir, precision, options.gpu)
        except BackendError as e:
            unavailable.append(str(e))
            continue
        try:
            failed = load_sidecar_for(path).parity_failed if automatic else []
        except SidecarError:
            failed = []  # TrtBackend says what is wrong with the sidecar when it is opened
        if failed:
            unavailable.append(
                f"trt-{precision}: left out of --backend auto, its parity check "
                f"failed the budget when it was built ({'; '.join(failed)}); pass "
                f"--backend trt-{precision} to run it anyway"
            )
            continue
        out.append(Candidate(f"trt-{precision}", str(path), partial(TrtBackend, path, options.gpu)))
    return out


def within_budget(
    onnx_files: list[Path], record: dict[str, Any], unavailable: list[str]
) -> list[Path]:
    """Drop files whose ONNX Runtime parity in export.json failed its budget.

    An automatic choice must not trade correctness for speed: on x86 CPUs without
    VNNI, ONNX Runtime's INT8 kernels can flip many predictions even where the
    INT8 file itself is fine. Naming the backend still runs it.
    """
    kept = []
    for onnx in onnx_files:
        precision = precision_of_file(onnx)
        parity = file_parity(record, precision)
        verdict = (
            judge(artifact(precision).budget_key, parity, Budgets())
            if parity
            else {"status": "none"}
        )
        if verdict["status"] == "fail":
            unavailable.append(
                f"ort-{precision}: left out of --backend auto, its ONNX Runtime parity in "
                f"export.json failed the budget ({'; '.join(verdict['reasons'])}); "
                f"pass --backend ort-{precision} to run it anyway"
            )
        else:
            kept.append(onnx)
    return kept or onnx_files


def run_dir_candidates(
    model_dir: Path, choice: BackendName, device: str, options: OpenOptions
) -> tuple[list[Candidate], list[str], list[str]]:
    """(candidates, why others are unavailable, notes) for a run dir or an export folder."""
    export_dir = export_dir_of(model_dir)
    record = read_export_record(model_dir)
    unavailable: list[str] = []
    candidates: list[Candidate] = []
    any_precision = choice.precision is None
    if choice.family in (AUTO, "trt") and is_run_dir(model_dir):
        order = ENGINE_AUTO_ORDER if choice.precision is None else (choice.precision,)
        candidates += _trt_engine_candidates(model_dir, order, options, unavailable)
        if choice.family == "trt" and not candidates:
            raise BackendError(f"--backend {choice.name}, but " + "; ".join(unavailable))
    onnx_files: list[Path] = []
    if choice.family in (AUTO, "ort"):
        order = ORT_AUTO_ORDER if choice.precision is None else (choice.precision,)
        onnx_files = [export_dir / artifact(p).onnx_name for p in order]
        onnx_files = [p for p in onnx_files if p.is_file()]
        if any_precision:
            onnx_files = within_budget(onnx_files, record, unavailable)
        candidates += _ort_candidates(onnx_files, device, choice.device, options)
    if not candidates:
        if choice.family in (AUTO, "ort") and not onnx_files:
            what = "" if any_precision else f" {choice.precision}"
            raise BackendUnavailable(
                f"{model_dir} has no exported{what} model ({export_dir}/model.*.onnx): "
                f"run `leukedge export {model_dir}` first"
            )
        raise BackendError(f"no backend can run {model_dir} here: " + "; ".join(unavailable))
    notes = [f"export.json: {w}" for w in record.get("warnings", [])]
    return candidates, unavailable, notes


def resolve_candidates(
    model: str | Path,
    backend: str = AUTO,
    device: str = AUTO,
    options: OpenOptions | None = None,
) -> tuple[list[Candidate], list[str], list[str]]:
    """Every way ``model`` (run dir, export folder, ``.onnx``, ``.engine``) can run here."""
    try:
        choice = parse_backend(backend)
    except ValueError as e:
        raise BackendError(f"--backend: {e}") from None
    if choice.family in ("torch", "qdq"):
        raise BackendError(
            f"{choice.name} is measured by `leukedge bench` only; the runtime runs "
            "ort-*, trt-* and triton:// backends"
        )
    device = check_device(device)
    if choice.family == TRITON:
        path = Path(model).expanduser()
        if not path.exists():
            raise BackendError(
                f"no model at {path} (give the run dir the server's model came from)"
            )
        return (
            [Candidate(choice.name, choice.name, partial(open_triton, choice.name, path))],
            [],
            [],
        )
    options = options or OpenOptions(gpu=device_index(device))
    path = Path(model).expanduser()
    if path.is_dir():
        if is_run_dir(path) or is_export_dir(path):
            return run_dir_candidates(path, choice, device, options)
        raise BackendError(
            f"{path} is neither a run dir (no spec.json) nor an export folder (no model.*.onnx)"
        )
    if not path.is_file():
        raise BackendError(f"no model at {path} (give a run dir, an .onnx or an .engine)")
    suffix = path.suffix.lower()
    if suffix == ".engine":
        if choice.family == "ort":
            raise BackendError(f"{path} is a TensorRT engine; ONNX Runtime runs the .onnx files")
        from leukedge.runtime.backends.trt import TrtBackend

        return (
            [Candidate(f"trt ({path.name})", str(path), lambda: TrtBackend(path, options.gpu))],
            [],
            [],
        )
    if suffix == ".onnx":
        if choice.family == "trt":
            raise BackendError(
                f"{path} is an ONNX file; TensorRT runs engines built from it on this machine "
                f"(`leukedge build-engine RUN_DIR`), then pass the run dir or the .engine"
            )
        return _ort_candidates([path], device, choice.device, options), [], []
    raise BackendError(f"{path}: a model is a run dir, an .onnx or an .engine file")
