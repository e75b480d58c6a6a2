"""THE table of artifact kinds, backend names, run-dir detection and ``export.json``.

One row per precision drives everything that names or orders compiled files:
the exporter writes ``model.<precision>.onnx``, ``build-engine`` writes
``model.<precision>[.dla<N>].engine``, ``--backend auto`` tries them in
:data:`ORT_AUTO_ORDER` / :data:`ENGINE_AUTO_ORDER`, the parity budgets are looked
up by :attr:`ArtifactKind.budget_key`, and ``run``, ``bench`` and
``Classifier.load`` share one backend vocabulary (``torch``, ``ort-<p>[-cuda]``,
``trt-<p>``, ``qdq-int8-exact``, and a remote Triton Inference Server model as
``triton://HOST:PORT/MODEL``). Adding a precision (say FP8) is one row.

Plain Python on the ground floor: the torch-free runtime on a Jetson reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukedge.io import atomic_write_json, read_json


@dataclass(frozen=True)
class ArtifactKind:
    """One compiled form of a model."""

    precision: str
    ort_auto_rank: int  # order tried by ``--backend auto`` among ONNX files (0 first)
    engine_auto_rank: int  # order tried among TensorRT engines (0 first)
    dla: bool  # may run on a Jetson DLA core (DLA computes FP16/INT8 only)
    description: str

    @property
    def onnx_name(self) -> str:
        return f"model.{self.precision}.onnx"

    def engine_name(self, dla_core: int | None = None) -> str:
        dla = "" if dla_core is None else f".dla{int(dla_core)}"
        return f"model.{self.precision}{dla}.engine"

    @property
    def budget_key(self) -> str:
        """The key :mod:`leukedge.budgets` judges this precision by."""
        return self.precision


ARTIFACTS: tuple[ArtifactKind, ...] = (
    ArtifactKind("fp32", 0, 2, False, "float32 weights and compute"),
    ArtifactKind("fp16", 2, 0, True, "float16 weights and compute, float32 I/O"),
    ArtifactKind("int8", 1, 1, True, "INT8 Q/DQ, calibrated on the validation split"),
)
PRECISIONS: tuple[str, ...] = tuple(a.precision for a in ARTIFACTS)
ORT_AUTO_ORDER: tuple[str, ...] = tuple(
    a.precision for a in sorted(ARTIFACTS, key=lambda a: a.ort_auto_rank)
)
ENGINE_AUTO_ORDER: tuple[str, ...] = tuple(
    a.precision for a in sorted(ARTIFACTS, key=lambda a: a.engine_auto_rank)
)

SPEC_FILE = "spec.json"
EXPORT_DIR = "export"
ENGINES_DIR = "engines"
EXPORT_RECORD = "export.json"


def artifact(precision: str) -> ArtifactKind:
    """The row of ``precision``; a ValueError lists the known ones."""
    for a in ARTIFACTS:
        if a.precision == precision:
            return a
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def onnx_name(precision: str) -> str:
    return artifact(precision).onnx_name


def engine_name(precision: str, dla_core: int | None = None) -> str:
    return artifact(precision).engine_name(dla_core)


def precision_of_file(path: str | Path) -> str:
    """Precision from leukedge's file naming (``model.<p>.onnx``, ``model.<p>[.dlaN].engine``).

    Files named otherwise are taken as fp32 (an ONNX file exported by other tools).
    """
    parts = Path(path).name.split(".")
    for part in parts[1:-1]:
        if part in PRECISIONS:
            return part
    return "fp32"


def parse_precisions(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A comma list (or sequence) of precisions, checked and de-duplicated in table order."""
    if value is None:
        return list(PRECISIONS)
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = {p.strip().lower() for p in items if p.strip()}
    unknown = sorted(wanted - set(PRECISIONS))
    if unknown or not wanted:
        raise ValueError(
            f"unknown precision(s) {unknown or '(none given)'}; choose from {', '.join(PRECISIONS)}"
        )
    return [p for p in PRECISIONS if p in wanted]


# ---------------------------------------------------------------- backend names

TORCH = "torch"
QDQ_EXACT = "qdq-int8-exact"
AUTO = "auto"
FAMILIES = ("ort", "trt")
TRITON = "triton"
TRITON_SCHEMES = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}
TRITON_MODEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class BackendName:
    """A parsed backend name: ``family`` torch/ort/trt/qdq, its precision and device."""

    name: str
    family: str
    precision: str | None  # None: any precision of the family (``ort``, ``trt``)
    device: str  # "cpu", "cuda", "gpu" (TensorRT) or "auto"

    @property
    def is_specific(self) -> bool:
        return self.precision is not None


@dataclass(frozen=True)
class TritonTarget:
    """A model on a Triton Inference Server: ``triton[+grpc|+http]://HOST:PORT/MODEL[/VERSION]``.

    ``triton://`` speaks gRPC (Triton's port 8001 by default), ``triton+http://`` HTTP
    (port 8000).
    """

    protocol: str  # "grpc" | "http"
    host: str
    port: int
    model: str
    version: str = ""  # "" : the server's policy (the newest version)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "triton" if self.protocol == "grpc" else "triton+http"
        version = f"/{self.version}" if self.version else ""
        return f"{scheme}://{self.address}/{self.model}{version}"


def is_triton_url(name: str) -> bool:
    return str(name).strip().lower().split("://", 1)[0] in TRITON_SCHEMES and "://" in str(name)


def parse_triton_url(name: str) -> TritonTarget:
    """``triton://127.0.0.1:8001/leukedge-cnn`` -> :class:`TritonTarget`; ValueError says why not."""
    from urllib.parse import urlsplit

    text = str(name).strip()
    usage = (
        "a Triton backend is triton://HOST:PORT/MODEL (gRPC) or triton+http://HOST:PORT/MODEL, "
        f"got {name!r}"
    )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(usage) from None
    protocol = TRITON_SCHEMES.get(parts.scheme.lower())
    path = [p for p in parts.path.split("/") if p]
    if protocol is None or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(usage)
    if len(path) not in (1, 2) or not set(path[0]) <= TRITON_MODEL_CHARS:
        raise ValueError(usage)
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the model version in {name!r} must be a number")
    default_port = 8001 if protocol == "grpc" else 8000
    return TritonTarget(
        protocol=protocol,
        host=parts.hostname,
        port=default_port if port is None else port,
        model=path[0],
        version=path[1] if len(path) == 2 else "",
    )


def backend_names(cuda: bool = True) -> list[str]:
    """Every built-in backend name, in report order."""
    names = [TORCH, *(f"ort-{p}" for p in PRECISIONS)]
    if cuda:
        names += [f"ort-{p}-cuda" for p in PRECISIONS]
    names += [f"trt-{p}" for p in PRECISIONS]
    return [*names, QDQ_EXACT]


def parse_backend(name: str) -> BackendName:
    """``auto``, ``ort``, ``trt``, ``torch``, ``ort-int8``, ``ort-fp16-cuda``, ``trt-fp16``…

    and ``triton://HOST:PORT/MODEL`` (a model on a Triton Inference Server; its
    precision is whatever the server runs).
    """
    if is_triton_url(name):
        target = parse_triton_url(name)
        return BackendName(target.url, TRITON, None, "remote")
    text = str(name).strip().lower()
    if text == AUTO:
        return BackendName(text, AUTO, None, AUTO)
    if text == TORCH:
        return BackendName(text, TORCH, "fp32", AUTO)
    if text == QDQ_EXACT:
        return BackendName(text, "qdq", "int8", "cpu")
    if text in FAMILIES:
        return BackendName(text, text, None, AUTO)
    parts = text.split("-")
    if len(parts) in (2, 3) and parts[0] in FAMILIES and parts[1] in PRECISIONS:
        if len(parts) == 2:
            device = "cpu" if parts[0] == "ort" else "gpu"
            return BackendName(text, parts[0], parts[1], device)
        if parts[0] == "ort" and parts[2] == "cuda":
            return BackendName(text, "ort", parts[1], "cuda")
    raise ValueError(
        f"unknown backend {name!r}; use auto, ort, trt, triton://HOST:PORT/MODEL, or one of "
        f"{', '.join(backend_names())}"
    )


# ---------------------------------------------------------------- run dirs and export dirs


def is_run_dir(path: str | Path) -> bool:
    """A leukedge run dir: it holds the ModelSpec (``spec.json``)."""
    return (Path(path) / SPEC_FILE).is_file()


def is_export_dir(path: str | Path) -> bool:
    """A folder of exported files (``model.*.onnx``) without a run dir around them."""
    p = Path(path)
    return p.is_dir() and any((p / a.onnx_name).is_file() for a in ARTIFACTS)


def export_dir_of(path: str | Path) -> Path:
    """``RUN/export`` for a run dir, the folder itself for an export folder."""
    p = Path(path)
    return p / EXPORT_DIR if is_run_dir(p) else p


def run_dir_of_export(export_dir: str | Path) -> Path | None:
    """The run dir around ``RUN/export``, or None for a loose export folder."""
    p = Path(export_dir)
    return p.parent if p.name == EXPORT_DIR and is_run_dir(p.parent) else None


def engines_root(path: str | Path) -> Path:
    """``RUN/engines`` for a run dir, the folder itself otherwise."""
    p = Path(path)
    return p / ENGINES_DIR if is_run_dir(p) else p


# ---------------------------------------------------------------- export.json


def export_record_path(path: str | Path) -> Path:
    return export_dir_of(path) / EXPORT_RECORD


def read_export_record(path: str | Path) -> dict[str, Any]:
    """``export.json`` of a run dir or export folder; {} when missing or unreadable."""
    record_path = export_record_path(path)
    if not record_path.is_file():
        return {}
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_export_record(export_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``export.json`` atomically into ``export_dir``."""
    path = Path(export_dir) / EXPORT_RECORD
    atomic_write_json(path, record)
    return path


def file_parity(record: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The parity against PyTorch that ``export.json`` recorded for ``precision``."""
    entry = (record.get("files") or {}).get(precision) or {}
    parity = entry.get("parity")
    return parity if isinstance(parity, dict) else None
