"""Build TensorRT engines from leukedge's ONNX files, on the device that will run them.

Precision lives in the ONNX graph (``model.fp16.onnx``, ``model.int8.onnx`` with
Q/DQ nodes), so every engine is built from a strongly typed network and no
precision builder flag is ever set: the same code works on TensorRT 10 (JetPack
6.x ships 10.3) and on TensorRT 11, which removed ``BuilderFlag.FP16/INT8``, the
INT8 calibrators and ``EXPLICIT_BATCH``.

The calls into TensorRT are few and thin; cache keys, names, shapes and the
sidecar come from :mod:`leukedge.runtime.backends.engine_plan`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import leukedge
from leukedge.artifacts import (
    ENGINE_AUTO_ORDER,
    PRECISIONS,
    SPEC_FILE,
    engines_root,
    export_dir_of,
    onnx_name,
    run_dir_of_export,
)
from leukedge.io import atomic_write_bytes, sha256_file
from leukedge.runtime.backends.engine_plan import (
    BuildFlags,
    EngineBuildError,
    EngineKey,
    EngineSidecar,
    ProfileShapes,
    default_engines_root,
    onnx_precision,
    profile_shapes,
    reuse_decision,
    sidecar_path_for,
    timing_cache_path,
)
from leukedge.runtime.backends.gpu import require_target
from leukedge.spec import ModelSpec, SpecError

DEFAULT_PRECISIONS = ENGINE_AUTO_ORDER  # the fastest-first order --backend auto tries
AUTO = "auto"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- one engine


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    reused: bool  # True: a cached engine with the same key was kept
    reason: str
    timing_cache: Path | None

    @property
    def precision(self) -> str:
        return self.sidecar.precision


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    max_batch: int = 32,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    timing_cache: str | Path | None = AUTO,
    force: bool = False,
    log: Log = _stderr,
    spec: ModelSpec | None = None,
    device: int = 0,
    verbose: bool = False,
) -> BuildResult:
    """Build (or reuse) the engine of one ``model.<precision>.onnx`` for this GPU.

    ``out_dir`` is the engines root (default: ``runs/NAME/engines`` for an ONNX in
    ``runs/NAME/export``); the engine goes to ``<out_dir>/<trt>_<gpu>_sm<cc>/``.
    ``timing_cache``: ``"auto"`` (shared per TensorRT version and GPU), a path, or None.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"no ONNX model at {onnx_path} (create it with `leukedge export`)")
    flags = BuildFlags(max_batch=max_batch, workspace_mb=workspace_mb, dla_core=dla_core)
    precision = onnx_precision(onnx_path)
    trt, gpu = require_target(device)
    spec = spec or _spec_for(onnx_path)
    root = Path(out_dir) if out_dir is not None else default_engines_root(onnx_path)
    key = EngineKey(
        trt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        onnx_sha256=sha256_file(onnx_path),
        flags=flags,
    )
    engine_path = key.engine_path(root)
    cache = _timing_cache_file(timing_cache, root, key)
    if not force:
        decision = reuse_decision(engine_path, key)
        if decision:
            log(f"{engine_path}: {decision.reason}, reusing it")
            sidecar = EngineSidecar.load(sidecar_path_for(engine_path))
            return BuildResult(
                engine_path, sidecar_path_for(engine_path), sidecar, True, decision.reason, cache
            )
        log(f"{engine_path}: building ({decision.reason})")
    else:
        log(f"{engine_path}: building (--force)")
    shapes = profile_shapes(spec, flags.max_batch)
    started = time.perf_counter()
    plan, shapes, output_name = _build_plan(
        trt, onnx_path, spec, shapes, flags, cache, log, verbose
    )
    seconds = time.perf_counter() - started
    sidecar = EngineSidecar(
        spec=spec,
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        onnx_path=str(onnx_path),
        onnx_sha256=key.onnx_sha256,
        engine_file=engine_path.name,
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        engine_bytes=len(plan),
        build_flags=flags,
        profile=shapes,
        build_seconds=round(seconds, 3),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        leukedge_version=leukedge.__version__,
        output_name=output_name,
    )
    _write_engine(engine_path, plan, sidecar)
    log(f"{engine_path}: built in {seconds:.1f} s ({len(plan) / 2**20:.1f} MiB)")
    return BuildResult(engine_path, sidecar_path_for(engine_path), sidecar, False, "built", cache)


def _spec_for(onnx_path: Path) -> ModelSpec:
    """The ONNX file's embedded spec, else its run dir's ``spec.json``."""
    from leukedge.runtime.backends.ort import spec_from_onnx

    try:
        return spec_from_onnx(onnx_path)
    except SpecError:
        run_dir = run_dir_of_export(onnx_path.parent)
        if run_dir is not None:
            return ModelSpec.load(run_dir / SPEC_FILE)
        raise


def _timing_cache_file(choice: str | Path | None, root: Path, key: EngineKey) -> Path | None:
    if choice is None:
        return None
    if str(choice) == AUTO:
        return timing_cache_path(root, key.trt_version, key.gpu_name, key.compute_capability)
    return Path(choice)


def _write_engine(engine_path: Path, plan: bytes, sidecar: EngineSidecar) -> None:
    """Old sidecar out, then engine, then sidecar: a sidecar only ever describes its engine."""
    side = sidecar_path_for(engine_path)
    side.unlink(missing_ok=True)
    atomic_write_bytes(engine_path, plan)
    sidecar.save(side)


# ---------------------------------------------------------------- the TensorRT calls


def strongly_typed_flags(trt: ModuleType) -> int:
    """``create_network`` flags: strongly typed (TensorRT 10; always on and ignored in 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _build_plan(
    trt: ModuleType,
    onnx_path: Path,
    spec: ModelSpec,
    shapes: ProfileShapes,
    flags: BuildFlags,
    cache_path: Path | None,
    log: Log,
    verbose: bool,
) -> tuple[bytes, ProfileShapes, str]:
    """Parse, configure and build; returns the serialized engine, its profile and output name."""
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        listed = "\n".join(f"  - {e}" for e in errors) or "  - (no error details)"
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not parse {onnx_path} "
            f"({len(errors)} error(s)):\n{listed}"
        )
    shapes, output_name = _check_network(network, onnx_path, spec, shapes)
    config = builder.create_builder_config()
    if flags.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, flags.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(shapes.input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    if flags.dla_core is not None:
        _use_dla(trt, builder, config, flags.dla_core)
    if cache_path is not None:
        _load_timing_cache(config, cache_path, log)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path} "
            "(build_serialized_network returned nothing; the TensorRT log above says why). "
            "If it mentions memory, pass a larger --workspace-mb"
            + ("; with --dla-core, also try without it." if flags.dla_core is not None else ".")
        )
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan)), shapes, output_name


def _check_network(
    network: Any, onnx_path: Path, spec: ModelSpec, shapes: ProfileShapes
) -> tuple[ProfileShapes, str]:
    """One input (N, 3, S, S) that agrees with the spec and the requested batch range."""
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise EngineBuildError(
            f"{onnx_path} has {network.num_inputs} inputs and {network.num_outputs} outputs; "
            "a leukedge classifier has one input and one logits output"
        )
    tensor = network.get_input(0)
    dims = tuple(int(d) for d in tensor.shape)
    expected = tuple(spec.input_shape)
    if len(dims) != 4 or any(d not in (-1, e) for d, e in zip(dims[1:], expected, strict=True)):
        raise EngineBuildError(
            f"{onnx_path} input {tensor.name!r} has shape {dims} but its spec says "
            f"(N, {', '.join(map(str, expected))})"
        )
    if dims[0] != -1 and dims[0] != shapes.max_batch:
        raise EngineBuildError(
            f"{onnx_path} has a fixed batch size of {dims[0]}, so it cannot serve batches up to "
            f"--max-batch {shapes.max_batch}: re-export it with a dynamic batch axis "
            f"(`leukedge export`) or pass --max-batch {dims[0]}"
        )
    if dims[0] != -1:  # a static batch: the profile is that one shape
        fixed = (dims[0], *expected)
        shapes = replace(shapes, min=fixed, opt=fixed, max=fixed)
    return replace(shapes, input_name=tensor.name), network.get_output(0).name


def _use_dla(trt: ModuleType, builder: Any, config: Any, core: int) -> None:
    available = int(builder.num_DLA_cores)
    if core >= available:
        raise EngineBuildError(
            f"--dla-core {core} requested but this device has {available} DLA core(s) "
            "(DLA exists on Jetson AGX/NX Orin and Xavier)"
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU


def _load_timing_cache(config: Any, path: Path, log: Log) -> None:
    """Start from the saved tactic timings for this TensorRT and GPU; a bad file starts afresh."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"timing cache {path} is unusable; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


# ---------------------------------------------------------------- a run dir or an ONNX file


def resolve_onnx_files(
    target: str | Path, precisions: Sequence[str] | None = None
) -> list[tuple[Path, str]]:
    """The (ONNX path, precision) pairs a ``build-engine`` call means.

    A run dir gives ``export/model.<p>.onnx`` for each precision; with the default
    precisions (None) the ones not exported are skipped, named ones must exist.
    """
    target = Path(target)
    wanted = list(precisions) if precisions else list(DEFAULT_PRECISIONS)
    for p in wanted:
        if p not in PRECISIONS:
            raise EngineBuildError(f"unknown precision {p!r}: use {', '.join(PRECISIONS)}")
    if target.is_file():
        precision = onnx_precision(target)
        if precisions and precision not in wanted:
            raise EngineBuildError(
                f"{target} is a {precision} model (from its file name) but --precision asks "
                f"for {', '.join(wanted)}"
            )
        return [(target, precision)]
    if not target.is_dir():
        raise EngineBuildError(
            f"{target} does not exist: pass a run dir (runs/NAME) or an exported MODEL.onnx"
        )
    export = export_dir_of(target)
    found = [(export / onnx_name(p), p) for p in wanted]
    missing = [path for path, _ in found if not path.is_file()]
    if precisions and missing:
        raise EngineBuildError(
            f"{', '.join(map(str, missing))} not found: export the model first with "
            f"`leukedge export {target}`, or leave that precision out of --precision"
        )
    present = [(path, p) for path, p in found if path.is_file()]
    if not present:
        names = ", ".join(onnx_name(p) for p in wanted)
        raise EngineBuildError(
            f"{export} has none of {names}: export the model first with `leukedge export {target}`"
        )
    return present


def build_engines(
    target: str | Path,
    precisions: Sequence[str] | None = None,
    max_batch: int = 32,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    timing_cache: str | Path | None = AUTO,
    log: Log = _stderr,
    device: int = 0,
    verbose: bool = False,
) -> list[BuildResult]:
    """``leukedge build-engine runs/NAME|MODEL.onnx``: one engine per precision, cached.

    ``precisions`` None means fp16, int8, fp32 where exported. Fails fast with
    :class:`TensorRTUnavailable` where TensorRT or an NVIDIA GPU is missing.
    """
    BuildFlags(max_batch=max_batch, workspace_mb=workspace_mb, dla_core=dla_core)  # validate
    files = resolve_onnx_files(target, precisions)
    require_target(device)
    target = Path(target)
    root = Path(out) if out is not None else None
    if root is None and target.is_dir():
        root = engines_root(target)
    results = []
    for onnx_path, _ in files:
        results.append(
            build_engine(
                onnx_path,
                out_dir=root,
                max_batch=max_batch,
                workspace_mb=workspace_mb,
                dla_core=dla_core,
                timing_cache=timing_cache,
                force=force,
                log=log,
                device=device,
                verbose=verbose,
            )
        )
    return results
