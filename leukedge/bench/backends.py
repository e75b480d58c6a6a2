"""Which backends the bench knows, and how each is opened for a run dir.

Names are ``torch`` (the PyTorch original), ``ort-<precision>`` (the exported
ONNX files in ONNX Runtime on CPU), ``ort-<precision>-cuda`` (the same on the
CUDA execution provider), ``trt-<precision>`` (TensorRT engines built on this
machine under ``engines/``) and ``qdq-int8-exact`` (the INT8 file's exact Q/DQ
arithmetic, parity only); ``triton://HOST:PORT/MODEL`` is a model on a Triton
Inference Server, measured with the network in its latency. A backend that cannot run here raises
:class:`~leukedge.runtime.backends.base.BackendError` with the reason, which the
report lists under "skipped": nothing asked for is dropped silently.

:func:`register_backend` adds a backend under a new name (another runtime, or
a test double); it is opened and measured exactly like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukedge.artifacts import QDQ_EXACT, TORCH, backend_names, is_triton_url, parse_backend
from leukedge.runtime.backends.base import Backend, BackendUnavailable
from leukedge.runtime.backends.resolve import OpenOptions, onnx_file, open_named
from leukedge.spec import ModelSpec

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
    return backend_names(cuda=True) + (list(_REGISTRY) if include_registered else [])


def default_backends() -> list[str]:
    """Every built-in backend that runs models, plus ORT on CUDA where its provider is installed."""
    return [n for n in backend_names(cuda=_has_cuda_ep()) if n != QDQ_EXACT]


def _has_cuda_ep() -> bool:
    from leukedge.runtime.backends.ort import available_providers

    return "CUDAExecutionProvider" in available_providers()


def parse_backends(value: str | Sequence[str] | None) -> list[str]:
    """A comma list or sequence of names, checked and de-duplicated in order."""
    if value is None:
        return default_backends()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(_canonical(n) for n in items if n.strip()))
    known = known_backends()
    unknown = [n for n in names if n not in known and not is_triton_url(n)]
    if unknown or not names:
        raise BenchError(
            f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(known)}"
        )
    return names


def _canonical(name: str) -> str:
    """A backend name as the report shows it (a Triton URL keeps its model name's case)."""
    text = name.strip()
    if is_triton_url(text):
        try:
            return parse_backend(text).name
        except ValueError as e:
            raise BenchError(str(e)) from None
    return text.lower()


def precision_of(name: str) -> str | None:
    """fp32/fp16/int8 from a backend name (torch is fp32); None for a registered name."""
    try:
        return parse_backend(name).precision
    except ValueError:
        return None


def int8_kernels_saturate(machine: dict[str, Any]) -> bool:
    """True on x86 CPUs without VNNI/AMX, where ONNX Runtime's int8 kernels saturate."""
    arch = str(machine.get("machine") or "").lower()
    if arch not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not set(machine.get("cpu_flags") or []) & set(INT8_SAFE_X86_FLAGS)


def onnx_path(ctx: BenchContext, precision: str) -> Path:
    """The exported file of ``precision``, or why it is missing."""
    return onnx_file(ctx.run_dir, precision)


def open_backend(name: str, ctx: BenchContext) -> Backend:
    """Open ``name`` for the run; :class:`BackendError` says why it cannot run here."""
    if name in _REGISTRY:
        return _REGISTRY[name](ctx)
    if name == TORCH:
        return _open_torch(ctx)
    if is_triton_url(name):
        return open_named(name, ctx.run_dir, expected_spec=ctx.spec)
    if name == QDQ_EXACT or name not in known_backends():
        raise BenchError(f"{name} is not a backend that can be opened (parity-only or unknown)")
    options = OpenOptions(threads=ctx.threads, spinning=ctx.idle_spinning, gpu=ctx.gpu)
    return open_named(name, ctx.run_dir, options, expected_spec=ctx.spec)


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


def artifact_of(backend: Backend) -> str | None:
    """The file a backend runs (ONNX, engine), for the report."""
    path = getattr(backend, "path", None)
    return str(path) if path is not None else None
