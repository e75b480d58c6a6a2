"""The TensorRT builder calls: parse an ONNX file, configure, build, inspect.

Only this module and the runtime backend touch the TensorRT API (the names they use
are checked against the real 10.3 and 11.4 bindings in the tests). Engines are
built strongly typed: precision lives in the ONNX graph, never in a builder flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from leukedge.io import atomic_write_bytes, open_fresh
from leukedge.runtime.backends.engine_plan import (
    DLA_NOTE,
    BuildFlags,
    EngineBuildError,
    ProfileShapes,
    layer_placement,
    placement_warnings,
)
from leukedge.spec import ModelSpec

Log = Callable[[str], None]


@dataclass
class Built:
    plan: bytes
    shapes: ProfileShapes
    output_name: str
    placement: dict[str, Any] | None
    warnings: list[str]


def strongly_typed_flags(trt: ModuleType) -> int:
    """``create_network`` flags: strongly typed (TensorRT 10; always on and ignored in 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def make_logger(trt: ModuleType, log: Log, path: Path | None, verbose: bool) -> Any:
    """A TensorRT logger: its messages to ``path`` (VERBOSE with ``verbose``, else INFO),
    warnings and errors to ``log`` as well, like trtexec's console and ``--verbose``."""
    severity = trt.ILogger.Severity
    file_limit = int(severity.VERBOSE if verbose else severity.INFO)
    show_limit = int(severity.WARNING)

    class BuildLogger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.path = path
            self.file = None
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open_fresh(path)

        def log(self, sev: Any, msg: str) -> None:
            level = int(sev)
            if self.file is not None and level <= file_limit:
                self.file.write(f"[{getattr(sev, 'name', level)}] {msg}\n")
                self.file.flush()
            if level <= show_limit:
                log(f"TensorRT {getattr(sev, 'name', level)}: {msg}")

        def close(self) -> None:
            if self.file is not None:
                self.file.close()
                self.file = None

    return BuildLogger()


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    spec: ModelSpec,
    shapes: ProfileShapes,
    flags: BuildFlags,
    caches: list[Path],
    log: Log,
    log_path: Path | None,
    verbose: bool,
) -> Built:
    """Parse, configure and build; the serialized engine with its profile, output and placement."""
    logger = make_logger(trt, log, log_path, verbose)
    try:
        return _build_with(trt, logger, onnx_path, spec, shapes, flags, caches, log, log_path)
    finally:
        logger.close()


def _build_with(
    trt: ModuleType,
    logger: Any,
    onnx_path: Path,
    spec: ModelSpec,
    shapes: ProfileShapes,
    flags: BuildFlags,
    caches: list[Path],
    log: Log,
    log_path: Path | None,
) -> Built:
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
    if not flags.tf32:  # on by default on Ampere+ (Orin too): fp32 would compute in TF32
        config.clear_flag(trt.BuilderFlag.TF32)
    if flags.builder_optimization_level is not None:
        config.builder_optimization_level = int(flags.builder_optimization_level)
    profile = builder.create_optimization_profile()
    profile.set_shape(shapes.input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    network_layers: list[tuple[str, bool]] = []
    if flags.dla_core is not None:
        _use_dla(trt, builder, config, flags.dla_core)
        network_layers = [
            (str(layer.name), bool(config.can_run_on_DLA(layer)))
            for layer in (network.get_layer(i) for i in range(network.num_layers))
        ]
    if caches:
        _load_timing_caches(config, caches, log)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        where = f" ({log_path})" if log_path is not None else ""
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path} "
            f"(build_serialized_network returned nothing; the TensorRT log{where} says why). "
            "If it mentions memory, pass a larger --workspace-mb"
            + ("; with --dla-core, also try without it." if flags.dla_core is not None else ".")
        )
    data = bytes(memoryview(plan))
    if caches:
        _save_timing_caches(config, caches, log)
    placement, warnings = None, []
    if flags.dla_core is not None:
        info, why = _inspect_engine(trt, logger, data, flags.dla_core)
        placement = layer_placement(flags.dla_core, network_layers, info)
        warnings = placement_warnings(placement)
        if info is None:
            warnings.append(f"the engine inspector could not list the engine's layers: {why}")
    return Built(data, shapes, output_name, placement, warnings)


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
    static = shapes.min == shapes.max
    if dims[0] != -1 and (dims[0] != shapes.max_batch or not static and shapes.min[0] != dims[0]):
        wanted = f"--batch {shapes.max_batch}" if static else f"--max-batch {shapes.max_batch}"
        raise EngineBuildError(
            f"{onnx_path} has a fixed batch size of {dims[0]}, so it cannot serve {wanted}: "
            f"re-export it with a dynamic batch axis (`leukedge export`) or pass --batch {dims[0]}"
        )
    return replace(shapes, input_name=tensor.name), network.get_output(0).name


def _use_dla(trt: ModuleType, builder: Any, config: Any, core: int) -> None:
    """DLA as the default device, GPU fallback for what it cannot run, layer info kept."""
    available = int(builder.num_DLA_cores)
    if core >= available:
        raise EngineBuildError(
            f"--dla-core {core} requested but this device has {available} DLA core(s) ({DLA_NOTE})"
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the layer placement


def _inspect_engine(trt: ModuleType, logger: Any, plan: bytes, core: int) -> tuple[str | None, str]:
    """The engine inspector's JSON of a DLA engine (deserialized on the core it was built for)."""
    try:
        runtime = trt.Runtime(logger)
        runtime.DLA_core = core
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            return None, "the engine did not deserialize"
        inspector = engine.create_engine_inspector()
        return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON)), ""
    except Exception as e:  # the placement is a report; the engine itself is fine
        return None, f"{type(e).__name__}: {e}"


def _load_timing_caches(config: Any, paths: list[Path], log: Log) -> None:
    """Start from the saved tactic timings; an unreadable file is skipped, never fatal."""
    cache = None
    for path in paths:
        data = path.read_bytes() if path.is_file() else b""
        if not data:
            continue
        try:
            loaded = config.create_timing_cache(data)
            why = "TensorRT returned no cache"
        except Exception as e:  # a corrupt or foreign file
            loaded, why = None, f"{type(e).__name__}: {e}"
        if loaded is None:
            log(
                f"timing cache {path} is unreadable ({why}): building without it; "
                "a fresh one replaces it after the build"
            )
        elif cache is None:
            cache = loaded
        elif not cache.combine(loaded, True):
            log(f"timing cache {path} does not match this TensorRT/GPU: not merged")
    if cache is None:
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        log("the saved timing caches do not match this TensorRT/GPU: starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_caches(config: Any, paths: list[Path], log: Log) -> None:
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    for path in paths:
        try:
            atomic_write_bytes(path, data)
        except OSError as e:  # a read-only home must not fail a finished build
            log(f"could not save the timing cache {path}: {e}")
