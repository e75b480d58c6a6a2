"""A Triton Inference Server model repository from a run: ONNX files and TensorRT engines.

Layout (Triton's standard one)::

    DIR/
      .leukedge-triton-repo.json    marker: leukedge wrote this folder (and what it holds)
      README.md                     how to start tritonserver on it and point leukedge at it
      leukedge-cnn-onnx-fp32/
        config.pbtxt                platform onnxruntime_onnx, I/O, dynamic batching, instances
        1/model.onnx
      leukedge-cnn-trt-fp16/        one per engine built under RUN/engines/<target>/
        config.pbtxt                platform tensorrt_plan
        1/model.plan

Each config states the run's ModelSpec as the parameter ``leukedge.spec``: the
``triton://`` backend checks it against the local run, whose preprocessing runs
next to the microscope so every server-side backend gets the same tensors.
The repository is staged beside ``DIR`` and swapped in whole; a folder leukedge
did not write is never replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukedge import __version__
from leukedge.artifacts import (
    ARTIFACTS,
    SPEC_FILE,
    engines_root,
    export_dir_of,
    is_run_dir,
    precision_of_file,
)
from leukedge.io import atomic_write_json, atomic_write_text, json_text, read_json, sha256_file
from leukedge.runtime.backends.triton import PRECISION_PARAMETER, SPEC_PARAMETER
from leukedge.spec import ModelSpec
from leukedge.validate import UsageError

MARKER = ".leukedge-triton-repo.json"
MARKER_FORMAT = "leukedge.triton-repo"
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64"}


class RepositoryError(UsageError):
    """A repository that cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension when the model batches; -1: any


@dataclass
class RepoModel:
    """One model of the repository: where its file comes from and how Triton runs it."""

    name: str
    platform: str
    source: Path
    precision: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_batch: int
    instance_kind: str
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.platform == ONNX_PLATFORM else "model.plan"


@dataclass(frozen=True)
class RepoOptions:
    """Dynamic batching and instances of every model written."""

    max_batch: int = DEFAULT_MAX_BATCH
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    name: str | None = None  # the models' name prefix; default leukedge-<arch>

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 4096:
            raise RepositoryError(f"--triton-max-batch must be in [1, 4096], got {self.max_batch}")
        if not 0 <= self.queue_delay_us <= 10_000_000:
            raise RepositoryError(
                f"--triton-queue-delay-us must be in [0, 10000000], got {self.queue_delay_us}"
            )
        if not 1 <= self.instances <= 64:
            raise RepositoryError(f"--triton-instances must be in [1, 64], got {self.instances}")
        if self.name is not None and not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name
        ):
            raise RepositoryError(
                f"a Triton model name is letters, digits, '.', '_' and '-', got {self.name!r}"
            )


def default_model_name(spec: ModelSpec) -> str:
    """``leukedge-<arch>``: the name ``leukedge serve`` and the repository use by default."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", spec.arch.lower()).strip("-") or "model"
    return f"leukedge-{slug}"


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """A quarter, half and all of the largest batch (the sizes Triton tries to form)."""
    return sorted({max(1, max_batch // 4), max(1, max_batch // 2), max_batch})


# ---------------------------------------------------------------- reading the artifacts


def onnx_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo], bool]:
    """(inputs, outputs, batched) of an ONNX file; dims are given without the batch dimension."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def info(value: Any, batched: bool) -> TensorInfo:
        t = value.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorInfo(
            value.name,
            _ONNX_TYPES.get(int(t.elem_type), "TYPE_FP32"),
            tuple(dims[1:] if batched else dims),
        )

    real_inputs = [i for i in graph.input if i.name not in initializers]
    first = real_inputs[0].type.tensor_type.shape.dim if real_inputs else []
    batched = bool(first) and not first[0].HasField("dim_value")
    return (
        [info(i, batched) for i in real_inputs],
        [info(o, batched) for o in graph.output],
        batched,
    )


def onnx_models(run: Path, base: str, options: RepoOptions, spec: ModelSpec) -> list[RepoModel]:
    export_dir = export_dir_of(run)
    models = []
    for kind in ARTIFACTS:
        path = export_dir / kind.onnx_name
        if not path.is_file():
            continue
        inputs, outputs, batched = onnx_io(path)
        models.append(
            RepoModel(
                name=f"{base}-onnx-{kind.precision}",
                platform=ONNX_PLATFORM,
                source=path,
                precision=kind.precision,
                inputs=inputs,
                outputs=outputs,
                max_batch=options.max_batch if batched else 0,
                instance_kind="KIND_AUTO",
                parameters=_parameters(spec, kind.precision, path),
            )
        )
    return models


def engine_models(
    run: Path, base: str, options: RepoOptions, spec: ModelSpec, notes: list[str]
) -> list[RepoModel]:
    """One model per engine under ``RUN/engines/<target>/`` (DLA engines are left out)."""
    from leukedge.runtime.backends.engine_plan import SidecarError, load_sidecar_for

    root = engines_root(run)
    if not is_run_dir(run) or not root.is_dir():
        return []
    engines = sorted(p for p in root.glob("*/model.*.engine") if ".dla" not in p.name)
    targets = {p.parent.name for p in engines}
    models = []
    for path in engines:
        try:
            sidecar = load_sidecar_for(path)
        except SidecarError as e:
            notes.append(f"{path.name} in {path.parent.name} left out: {e}")
            continue
        precision = precision_of_file(path)
        onnx = export_dir_of(run) / f"model.{precision}.onnx"
        if not onnx.is_file():
            notes.append(f"{path} left out: its ONNX file {onnx.name} is no longer exported")
            continue
        inputs, outputs, _ = onnx_io(onnx)
        low, high = int(sidecar.profile.min[0]), int(sidecar.profile.max[0])
        if low != 1:
            notes.append(f"{path} left out: built for batch {low}..{high}, Triton sends 1..N")
            continue
        name = f"{base}-trt-{precision}"
        if len(targets) > 1:
            name += "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", path.parent.name)
        params = _parameters(spec, precision, path)
        params["leukedge.tensorrt_version"] = sidecar.tensorrt_version
        params["leukedge.gpu"] = f"{sidecar.gpu_name} (sm {sidecar.compute_capability})"
        models.append(
            RepoModel(
                name=name,
                platform=PLAN_PLATFORM,
                source=path,
                precision=precision,
                inputs=inputs,
                outputs=outputs,
                max_batch=min(options.max_batch, high),
                instance_kind="KIND_GPU",
                parameters=params,
            )
        )
    return models


def _parameters(spec: ModelSpec, precision: str, path: Path) -> dict[str, str]:
    return {
        SPEC_PARAMETER: json_text(spec.to_dict(), sort_keys=True),
        PRECISION_PARAMETER: precision,
        "leukedge.sha256": sha256_file(path),
        "leukedge.version": __version__,
    }


# ---------------------------------------------------------------- config.pbtxt


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # text format takes these escapes and UTF-8


def config_text(model: RepoModel, options: RepoOptions) -> str:
    """The model's ``config.pbtxt`` (Triton's ModelConfig in protobuf text format)."""
    lines = [
        f"name: {_quote(model.name)}",
        f"platform: {_quote(model.platform)}",
        f"max_batch_size: {model.max_batch}",
    ]
    for key, tensors in (("input", model.inputs), ("output", model.outputs)):
        lines.append(f"{key} [")
        body = []
        for t in tensors:
            dims = ", ".join(str(d) for d in t.dims)
            body.append(
                f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
                f"    dims: [ {dims} ]\n  }}"
            )
        lines.append(",\n".join(body))
        lines.append("]")
    if model.max_batch > 0:
        sizes = ", ".join(str(s) for s in preferred_batch_sizes(model.max_batch))
        lines.append(
            f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {options.queue_delay_us}\n}}"
        )
    lines.append(
        f"instance_group [\n  {{\n    count: {options.instances}\n"
        f"    kind: {model.instance_kind}\n  }}\n]"
    )
    for key, value in model.parameters.items():
        lines.append(
            f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- README inside the repository


def readme_text(models: list[RepoModel], run: Path, spec: ModelSpec) -> str:
    rows = "\n".join(
        f"| `{m.name}` | {m.platform} | {m.precision} | {m.max_batch} |" for m in models
    )
    first = models[0].name
    trt = [m for m in models if m.platform == PLAN_PLATFORM]
    trt_note = ""
    if trt:
        versions = sorted({m.parameters.get("leukedge.tensorrt_version", "?") for m in trt})
        trt_note = (
            "\nTensorRT engines run only on the GPU and TensorRT version they were built for "
            f"({', '.join(versions)}): use the Triton release that ships that TensorRT, or "
            "delete those model folders.\n"
        )
    return f"""# Triton model repository: {spec.arch} ({", ".join(spec.classes)})

Written by leukedge {__version__} from `{run}`. Every model takes the preprocessed
float32 batch `(N, {", ".join(map(str, spec.input_shape))})` and answers `logits` (and,
where exported, `features` for the domain-shift score). Preprocessing is not in the
server: `leukedge run` finds the cells and preprocesses them next to the microscope,
so every backend gets the same tensors.

| model | platform | precision | max batch |
|---|---|---|---|
{rows}
{trt_note}
## Start the server

With NVIDIA's container (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`):

```
docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
```

or, where `tritonserver` is installed, `tritonserver --model-repository {{this folder}}`.
Add `--gpus all` to `docker run` for the GPU (the TensorRT models need it; the ONNX
models run on the GPU where there is one, else on the CPU).

## Classify against it

```
leukedge run {run} --source slides/ --backend triton://HOST:8001/{first}
leukedge bench {run} --split parity --backends ort-fp32,triton://HOST:8001/{first}
```

`triton://` speaks gRPC (port 8001), `triton+http://` HTTP (port 8000).
Each `config.pbtxt` holds the run's ModelSpec as parameter `leukedge.spec`: leukedge
refuses a server whose model is another one. Edit `dynamic_batching` and
`instance_group` to taste; `leukedge export {run} --triton-repo DIR` rewrites this folder
(and only a folder leukedge wrote).
"""


# ---------------------------------------------------------------- writing


@dataclass
class RepoResult:
    path: Path
    models: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "models": self.models, "notes": self.notes}


def check_target(out: Path) -> None:
    """Refuse a folder leukedge did not write: only empty or marked folders are replaced."""
    if out.is_symlink():
        raise RepositoryError(f"{out} is a link: give a real folder for the Triton repository")
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"{out} is a file: give a folder for the Triton repository")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise RepositoryError(
            f"{out} holds files leukedge did not write (no {MARKER}): give a new or empty "
            "folder for the Triton repository"
        )


def _is_ours(folder: Path) -> bool:
    try:
        marker = read_json(folder / MARKER)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT


def write_repository(
    run: str | Path, out: str | Path, options: RepoOptions | None = None
) -> RepoResult:
    """Write a Triton model repository of ``run``'s exported files and engines to ``out``."""
    run_path, out_path = Path(run), Path(out)
    options = options or RepoOptions()
    check_target(out_path)
    spec_path = run_path / SPEC_FILE
    if not spec_path.is_file():
        raise RepositoryError(f"{run_path} is not a run dir (no {SPEC_FILE})")
    spec = ModelSpec.load(spec_path)
    base = options.name or default_model_name(spec)
    notes: list[str] = []
    models = onnx_models(run_path, base, options, spec)
    if not models:
        raise RepositoryError(
            f"{run_path} has no exported model ({export_dir_of(run_path)}/model.*.onnx): "
            f"run `leukedge export {run_path}` first"
        )
    models += engine_models(run_path, base, options, spec, notes)
    stage = out_path.parent / f".{out_path.name}.{os.getpid()}-staging"
    if stage.exists():
        shutil.rmtree(stage)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for m in models:
            folder = stage / m.name
            (folder / "1").mkdir(parents=True)
            shutil.copyfile(m.source, folder / "1" / m.file_name)
            atomic_write_text(folder / "config.pbtxt", config_text(m, options))
        atomic_write_text(stage / "README.md", readme_text(models, run_path, spec))
        listed = [
            {
                "name": m.name,
                "platform": m.platform,
                "precision": m.precision,
                "source": str(m.source),
                "max_batch": m.max_batch,
            }
            for m in models
        ]
        atomic_write_json(
            stage / MARKER,
            {
                "format": MARKER_FORMAT,
                "leukedge_version": __version__,
                "run": str(run_path),
                "models": listed,
            },
        )
        _swap_in(stage, out_path)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return RepoResult(out_path, listed, notes)


def _swap_in(stage: Path, out: Path) -> None:
    """Put the staged repository at ``out``, replacing an empty folder or an earlier one of ours."""
    old = out.parent / f".{out.name}.{os.getpid()}-old"
    if out.is_dir():
        check_target(out)  # still ours or empty now that the new one is staged
        out.rename(old)
    try:
        stage.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
