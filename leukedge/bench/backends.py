"""Which backends the bench knows, and how each is opened for a run dir.

Names are ``torch`` (the PyTorch original), ``ort-<precision>`` (the exported
ONNX files in ONNX Runtime on CPU), ``ort-<precision>-cuda`` (the same on the
CUDA execution provider), ``trt-<precision>`` (TensorRT engines built on this
machine under ``engines/``) and ``qdq-int8-exact`` (the INT8 file's exact Q/DQ
arithmetic, parity only). A backend that cannot run here raises
:class:`~leukedge.runtime.backends.base.BackendError` with the reason, which the
report lists under "skipped": nothing asked for is dropped silently.

:func:`register_backend` adds a backend under a new name (another runtime, or
a test double); it is opened and measured exactly like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukedge.runtime.backends.base import Backend, BackendError, BackendUnavailable
from leukedge.spec import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")
TORCH = "torch"
QDQ_EXACT = "qdq-int8-exact"
ORT = tuple(f"ort-{p}" for p in PRECISIONS)
ORT_CUDA = tuple(f"ort-{p}-cuda" for p in PRECISIONS)
TRT = tuple(f"trt-{p}" for p in PRECISIONS)
DEFAULT_BACKENDS = (TORCH, *ORT, *TRT)
# x86 features with which ONNX Runtime's int8 kernels do not saturate 16-bit sums.
INT8_SAFE_X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class BenchError(ValueError):
    """A bench that cannot be run as asked; the message says what to change."""


@dataclass
class BenchContext:
    """What an opener needs to know about the run and the machine."""

    run_dir: Path
    spec: ModelSpec
    threads: int | None = None
    torch_device: str = "auto"
    gpu: int = 0
    idle_spinning: bool = False
    cache: dict[str, Any] = field(default_factory=dict)


Opener = Callable[[BenchContext], Backend]
_REGISTRY: dict[str, Opener] = {}


def register_backend(name: str, opener: Opener) -> None:
    """Make ``name`` a backend the bench can open (``opener(context) -> Backend``)."""
    if name in known_backends(include_registered=False):
        raise BenchError(f"{name!r} is a built-in backend name")
    _REGISTRY[name] = opener


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def known_backends(include_registered: bool = True) -> list[str]:
    names = [TORCH, *ORT, *ORT_CUDA, *TRT, QDQ_EXACT]
    return names + (list(_REGISTRY) if include_registered else [])


def default_backends() -> list[str]:
    """Every built-in backend, plus ONNX Runtime on CUDA where its provider is installed."""
    names = list(DEFAULT_BACKENDS)
    if _has_cuda_ep():
        names[1 + len(ORT) : 1 + len(ORT)] = list(ORT_CUDA)
    return names


def _has_cuda_ep() -> bool:
    from leukedge.runtime.backends.ort import available_providers

    return "CUDAExecutionProvider" in available_providers()


def parse_backends(value: str | Sequence[str] | None) -> list[str]:
    """A comma list or sequence of names, checked and de-duplicated in order."""
    if value is None:
        return default_backends()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    known = known_backends()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise BenchError(
            f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(known)}"
        )
    return names


def precision_of(name: str) -> str | None:
    """fp32/fp16/int8 from a backend name (torch is fp32)."""
    if name == TORCH:
        return "fp32"
    return next((p for p in PRECISIONS if p in name.split("-")), None)


def int8_kernels_saturate(machine: dict[str, Any]) -> bool:
    """True on x86 CPUs without VNNI/AMX, where ONNX Runtime's int8 kernels saturate."""
    arch = str(machine.get("machine") or "").lower()
    if arch not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not set(machine.get("cpu_flags") or []) & set(INT8_SAFE_X86_FLAGS)


def onnx_path(ctx: BenchContext, precision: str) -> Path:
    """The exported file of ``precision``, or why it is missing."""
    path = ctx.run_dir / "export" / f"model.{precision}.onnx"
    if not path.is_file():
        raise BackendUnavailable(
            f"not exported: no {path} (run `leukedge export {ctx.run_dir} --precision {precision}`)"
        )
    return path


def open_backend(name: str, ctx: BenchContext) -> Backend:
    """Open ``name`` for the run; :class:`BackendError` says why it cannot run here."""
    if name in _REGISTRY:
        return _REGISTRY[name](ctx)
    if name == TORCH:
        return _open_torch(ctx)
    if name in ORT or name in ORT_CUDA:
        return _open_ort(name, ctx)
    if name in TRT:
        return _open_trt(name, ctx)
    raise BenchError(f"{name} is not a backend that can be opened (parity-only or unknown)")


def _open_torch(ctx: BenchContext) -> Backend:
    from leukedge.bench.torch_backend import TorchBackend, torch_unavailable_reason

    reason = torch_unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    if not (ctx.run_dir / "checkpoint.pt").is_file():
        raise BackendUnavailable(
            f"no checkpoint.pt in {ctx.run_dir} (only the export was copied here)"
        )
    return TorchBackend.from_run(ctx.run_dir, device=ctx.torch_device, threads=ctx.threads)


def _open_ort(name: str, ctx: BenchContext) -> Backend:
    from leukedge.runtime.backends.ort import OrtBackend, spec_from_onnx

    precision = precision_of(name) or "fp32"
    path = onnx_path(ctx, precision)
    embedded = spec_from_onnx(path)
    if embedded != ctx.spec:
        raise BackendError(
            f"{path} was exported from another model (its embedded spec differs from "
            f"spec.json): re-run `leukedge export {ctx.run_dir}`"
        )
    device = "cuda" if name.endswith("-cuda") else "cpu"
    backend = OrtBackend(path, device=device, threads=ctx.threads, spec=embedded)
    backend.name = name
    if not ctx.idle_spinning:
        without_idle_spinning(backend)
    return backend


def without_idle_spinning(backend: Any) -> None:
    """Re-create an :class:`OrtBackend`'s session with its own options, spinning off.

    ONNX Runtime's worker threads spin after each run by default: in an
    interleaved measurement they would steal the cores of the backend timed next
    (on a 2-core CPU PyTorch measured ~20x slower beside spinning threads).
    Every other option of the runtime's session is kept as it is.
    """
    import onnxruntime as ort

    options = backend.session.get_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = backend.session.get_providers()
    backend.session = ort.InferenceSession(str(backend.path), options, providers=providers)


def _open_trt(name: str, ctx: BenchContext) -> Backend:
    from leukedge.runtime.backends.gpu import trt_available

    if "trt_available" not in ctx.cache:
        ctx.cache["trt_available"] = trt_available(ctx.gpu)
    ok, why = ctx.cache["trt_available"]
    if not ok:
        raise BackendUnavailable(f"TensorRT: {why}")
    from leukedge.runtime.backends.trt import TrtBackend, find_engine

    precision = precision_of(name) or "fp32"
    path = find_engine(ctx.run_dir, precision, ctx.gpu)
    return TrtBackend(path, device=ctx.gpu)


def artifact_of(backend: Backend) -> str | None:
    """The file a backend runs (ONNX, engine), for the report."""
    path = getattr(backend, "path", None)
    return str(path) if path is not None else None
