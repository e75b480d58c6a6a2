"""Where a TensorRT engine lives, what it was built from, and whether it may run here.

A serialized TensorRT engine only runs on the TensorRT version and the GPU that
built it. Everything that decides this (cache keys, folder and file names, the
sidecar JSON written next to each engine, profile shapes, the compatibility
check and the reuse decision) is plain Python here, so it is tested on machines
without TensorRT and shared by the builder and the runtime.

```
engines/<trt-version>_<gpu-slug>_sm<cc>/
  model.fp16.engine           serialized engine
  model.fp16.engine.json      sidecar: ModelSpec, versions, GPU, ONNX sha256, flags, profile
  model.fp16.dla0.engine      the same precision built for DLA core 0 (Jetson)
  timing.cache                TensorRT tactic timings, shared by builds for this target
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from leukedge.artifacts import (
    ENGINES_DIR,
    EXPORT_DIR,
    artifact,
    engine_name,
    precision_of_file,
    run_dir_of_export,
)
from leukedge.io import read_json, sha256_file
from leukedge.runtime.backends.base import BackendError, BackendUnavailable
from leukedge.spec import INPUT_NAME, OUTPUT_NAME, ModelSpec, SpecError
from leukedge.validate import UnsafePathError, inside_root

SIDECAR_FORMAT = "leukedge.engine"
SIDECAR_VERSION = 1
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
TIMING_CACHE_NAME = "timing.cache"
BUILD_LOG_SUFFIX = ".build.log"
OPT_BATCH = 8
DLA_DEFAULT_BATCH = 1
BUILDER_OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's 0..5, default 3
CACHE_ENV = "LEUKEDGE_CACHE_DIR"

TENSORRT_INSTALL_HINT = (
    "TensorRT engines are built on the device that will run them (an engine only runs "
    "with the TensorRT version and GPU that built it). On x86-64 or SBSA Linux with an "
    "NVIDIA GPU, pick the extra that matches the CUDA version of the driver (`nvidia-smi` "
    "shows it): pip install 'leukedge[trt-cu12]' for CUDA 12, 'leukedge[trt-cu13]' for "
    "CUDA 13 (driver 580 or newer). On Jetson, TensorRT comes with JetPack: "
    "sudo apt install python3-libnvinfer, and create the venv with "
    "`python3 -m venv --system-site-packages .venv` so that it sees the system TensorRT. "
    "Without TensorRT, run the exported model.*.onnx files with ONNX Runtime."
)
DLA_NOTE = (
    "DLA cores exist on Jetson AGX/NX Orin and Xavier (JetPack 6 ships TensorRT 10.3); "
    "TensorRT after 10.7 on x86 has no DLA, 10.8 to 11.3 have none on any platform, and "
    "11.4.1 brings it back for AGX Orin on JetPack 7.2.2"
)


class TensorRTUnavailable(BackendUnavailable):
    """TensorRT or an NVIDIA GPU is missing here; the message says how to get them."""


class EngineMismatch(BackendError):
    """An engine built for another TensorRT version or GPU than the one running it."""


class EngineBuildError(RuntimeError):
    """TensorRT could not turn an ONNX file into an engine; the message says why."""


class SidecarError(BackendError):
    """An engine sidecar that is missing, unreadable or from a newer leukedge."""


# ---------------------------------------------------------------- names and slugs


def normalize_cc(cc: str | tuple[int, int] | list[int]) -> str:
    """Compute capability as ``"major.minor"`` from ``(8, 7)``, ``"8.7"`` or ``"sm87"``."""
    if isinstance(cc, (tuple, list)):
        if len(cc) != 2:
            raise ValueError(f"compute capability needs (major, minor), got {cc!r}")
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m:
        return f"{int(m.group(1))}.{int(m.group(2))}"
    if re.fullmatch(r"\d{2,3}", text):  # "87" -> 8.7, "100" -> 10.0 (minor is one digit)
        return f"{int(text[:-1])}.{int(text[-1])}"
    raise ValueError(f"not a compute capability: {cc!r} (expected e.g. '8.7' or (8, 7))")


def sm_tag(cc: str | tuple[int, int]) -> str:
    """``"8.7"`` -> ``"sm87"``, the usual CUDA spelling of a GPU architecture."""
    major, minor = normalize_cc(cc).split(".")
    return f"sm{major}{minor}"


def gpu_slug(name: str) -> str:
    """A folder-safe GPU name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-gpu"


def version_slug(version: str) -> str:
    slug = re.sub(r"[^0-9A-Za-z.]+", "-", version.strip()).strip("-")
    return slug or "unknown"


def target_folder_name(trt_version: str, gpu_name: str, cc: str | tuple[int, int]) -> str:
    """``<trt-version>_<gpu-slug>_sm<cc>``: one folder per place an engine can run."""
    return f"{version_slug(trt_version)}_{gpu_slug(gpu_name)}_{sm_tag(cc)}"


def engine_file_name(precision: str, dla_core: int | None = None) -> str:
    """``model.<precision>.engine``; DLA engines get ``.dla<N>`` so they never replace GPU ones."""
    return engine_name(precision, dla_core)


def sidecar_path_for(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def build_log_path_for(engine_path: str | Path) -> Path:
    """``model.fp16.engine.build.log``: TensorRT's log of the build, next to the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + BUILD_LOG_SUFFIX)


def timing_cache_path(
    engines_root: str | Path, trt_version: str, gpu_name: str, cc: str | tuple[int, int]
) -> Path:
    """The run's timing cache, shared by its builds for one (TensorRT version, GPU)."""
    return Path(engines_root) / target_folder_name(trt_version, gpu_name, cc) / TIMING_CACHE_NAME


def user_cache_dir() -> Path:
    """``$LEUKEDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/leukedge``, else ``~/.cache/leukedge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "leukedge"


def machine_timing_cache_path(trt_version: str, gpu_name: str, cc: str | tuple[int, int]) -> Path:
    """The timing cache every run on this machine shares for one (TensorRT version, GPU).

    Tactic timings depend on the GPU and TensorRT, not on the model, so a second
    model (or a fresh run dir) builds faster with the timings of the first.
    """
    folder = target_folder_name(trt_version, gpu_name, cc)
    return user_cache_dir() / "tensorrt" / folder / TIMING_CACHE_NAME


def check_precision(precision: str) -> str:
    return artifact(precision).precision


def onnx_precision(path: str | Path) -> str:
    """Precision named by a leukedge file (``model.<precision>.onnx``), fp32 for other names.

    The name only labels the engine: what TensorRT builds is the precision the graph holds.
    """
    return precision_of_file(path)


def default_engines_root(onnx_path: str | Path) -> Path:
    """``runs/NAME/engines`` for ``runs/NAME/export/*.onnx``, else ``<onnx folder>/engines``."""
    parent = Path(onnx_path).parent
    return (run_dir_of_export(parent) or parent) / ENGINES_DIR


# ---------------------------------------------------------------- flags, profile, key


@dataclass(frozen=True)
class BuildFlags:
    """The build options that change the engine, so they are part of its cache key.

    ``batch`` makes a static engine (min = opt = max = ``batch``), which DLA requires:
    with a dynamic profile and GPU fallback TensorRT silently runs every layer on
    the GPU. ``tf32`` False clears TensorRT's TF32 flag (on by default on Ampere
    and newer, Orin included), so fp32 layers really compute in fp32.
    """

    max_batch: int = 32
    workspace_mb: int | None = None
    dla_core: int | None = None
    opt_batch: int | None = None  # None: min(8, max_batch)
    batch: int | None = None  # a static batch size (required for DLA)
    tf32: bool = False
    builder_optimization_level: int | None = None  # None: TensorRT's default (3)

    def __post_init__(self) -> None:
        if int(self.max_batch) < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.workspace_mb is not None and int(self.workspace_mb) < 1:
            raise ValueError(f"--workspace-mb must be >= 1, got {self.workspace_mb}")
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise ValueError(f"--dla-core must be >= 0, got {self.dla_core}")
        if self.batch is not None:
            if int(self.batch) < 1:
                raise ValueError(f"--batch must be >= 1, got {self.batch}")
            if self.max_batch != self.batch or self.opt_batch not in (None, self.batch):
                raise ValueError(
                    f"--batch {self.batch} builds a static engine: leave out --max-batch "
                    f"({self.max_batch}) and --opt-batch ({self.opt_batch}) or make them equal"
                )
        if self.opt_batch is not None and not 1 <= int(self.opt_batch) <= self.max_batch:
            raise ValueError(
                f"--opt-batch must be between 1 and --max-batch {self.max_batch}, "
                f"got {self.opt_batch}"
            )
        if self.dla_core is not None and self.batch is None:
            raise ValueError(
                "DLA runs static shapes only: a --dla-core build needs --batch "
                "(min = opt = max); with a dynamic profile every layer falls back to the GPU"
            )
        level = self.builder_optimization_level
        if level is not None and int(level) not in BUILDER_OPTIMIZATION_LEVELS:
            raise ValueError(f"--builder-optimization-level must be 0..5, got {level}")

    @classmethod
    def create(
        cls,
        max_batch: int | None = None,
        workspace_mb: int | None = None,
        dla_core: int | None = None,
        opt_batch: int | None = None,
        batch: int | None = None,
        tf32: bool = False,
        builder_optimization_level: int | None = None,
    ) -> BuildFlags:
        """Flags from command-line values: a static ``batch`` (1 for DLA) sets the profile."""
        if dla_core is not None and batch is None:
            batch = DLA_DEFAULT_BATCH
            if max_batch is not None and max_batch != batch:
                raise ValueError(
                    f"DLA runs static shapes only: --max-batch {max_batch} cannot be served "
                    f"by a --dla-core engine; pass --batch N (the one batch size it will run)"
                )
        if batch is not None:
            max_batch = batch if max_batch is None else max_batch
            opt_batch = batch if opt_batch is None else opt_batch
        return cls(
            max_batch=32 if max_batch is None else max_batch,
            workspace_mb=workspace_mb,
            dla_core=dla_core,
            opt_batch=opt_batch,
            batch=batch,
            tf32=tf32,
            builder_optimization_level=builder_optimization_level,
        )

    @property
    def static(self) -> bool:
        return self.batch is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildFlags:
        return cls(
            max_batch=int(data.get("max_batch", 32)),
            workspace_mb=_opt_int(data.get("workspace_mb")),
            dla_core=_opt_int(data.get("dla_core")),
            opt_batch=_opt_int(data.get("opt_batch")),
            batch=_opt_int(data.get("batch")),
            # Sidecars from before the flag was recorded: TensorRT's default, TF32 on.
            tf32=bool(data.get("tf32", True)),
            builder_optimization_level=_opt_int(data.get("builder_optimization_level")),
        )

    def cli_args(self) -> list[str]:
        args = ["--batch", str(self.batch)] if self.batch is not None else []
        if self.batch is None:
            args += ["--max-batch", str(self.max_batch)]
            if self.opt_batch is not None:
                args += ["--opt-batch", str(self.opt_batch)]
        if self.workspace_mb is not None:
            args += ["--workspace-mb", str(self.workspace_mb)]
        if self.dla_core is not None:
            args += ["--dla-core", str(self.dla_core)]
        if self.tf32:
            args += ["--tf32"]
        if self.builder_optimization_level is not None:
            args += ["--builder-optimization-level", str(self.builder_optimization_level)]
        return args


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class ProfileShapes:
    """The one optimization profile of an engine: min / opt / max input shapes."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def max_batch(self) -> int:
        return int(self.max[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_name": self.input_name,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileShapes:
        return cls(
            input_name=str(data["input_name"]),
            min=tuple(int(v) for v in data["min"]),
            opt=tuple(int(v) for v in data["opt"]),
            max=tuple(int(v) for v in data["max"]),
        )


def profile_shapes(
    spec: ModelSpec,
    max_batch: int,
    input_name: str = INPUT_NAME,
    opt_batch: int | None = None,
    batch: int | None = None,
) -> ProfileShapes:
    """Batch 1 .. ``max_batch`` tuned for ``opt_batch`` (default min(8, max)): a frame holds a
    few cells. A static ``batch`` gives min = opt = max (DLA, CUDA graphs)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    chw = tuple(spec.input_shape)
    if batch is not None:
        return ProfileShapes(input_name, (batch, *chw), (batch, *chw), (batch, *chw))
    opt = min(OPT_BATCH, max_batch) if opt_batch is None else opt_batch
    return ProfileShapes(
        input_name=input_name, min=(1, *chw), opt=(opt, *chw), max=(max_batch, *chw)
    )


def profile_for(spec: ModelSpec, flags: BuildFlags, input_name: str = INPUT_NAME) -> ProfileShapes:
    """The optimization profile ``flags`` ask for."""
    return profile_shapes(spec, flags.max_batch, input_name, flags.opt_batch, flags.batch)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two builds with equal keys give interchangeable engines."""

    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    onnx_sha256: str
    flags: BuildFlags = field(default_factory=BuildFlags)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_capability", normalize_cc(self.compute_capability))
        check_precision(self.precision)

    @property
    def folder_name(self) -> str:
        return target_folder_name(self.trt_version, self.gpu_name, self.compute_capability)

    @property
    def engine_name(self) -> str:
        return engine_file_name(self.precision, self.flags.dla_core)

    def engine_path(self, engines_root: str | Path) -> Path:
        return Path(engines_root) / self.folder_name / self.engine_name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = self.flags.to_dict()
        return d

    def digest(self) -> str:
        """A short stable hash of the whole key (for logs and reports)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable list of what differs from ``other`` (``self`` is the wanted key)."""
        out = []
        for name, label in _KEY_LABELS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                out.append(f"{label}: engine has {_short(theirs)}, wanted {_short(mine)}")
        for f in fields(BuildFlags):
            name = f.name
            mine, theirs = getattr(self.flags, name), getattr(other.flags, name)
            if mine != theirs:
                out.append(f"{name}: engine has {theirs}, wanted {mine}")
        return out


_KEY_LABELS = (
    ("trt_version", "TensorRT version"),
    ("gpu_name", "GPU"),
    ("compute_capability", "compute capability"),
    ("precision", "precision"),
    ("onnx_sha256", "ONNX sha256"),
)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if re.fullmatch(r"[0-9a-f]{64}", text) else text


# ---------------------------------------------------------------- sidecar


@dataclass
class EngineSidecar:
    """The JSON written next to every engine: enough to run it and to know where it may run."""

    spec: ModelSpec
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_path: str
    onnx_sha256: str
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    build_flags: BuildFlags
    profile: ProfileShapes
    build_seconds: float
    built_at: str
    leukedge_version: str
    output_name: str = OUTPUT_NAME
    parity: dict[str, Any] | None = None  # vs the parity set's PyTorch logits (or ORT), judged
    placement: dict[str, Any] | None = None  # DLA builds: which layers run where
    build_log: str | None = None  # TensorRT's log of the build, next to the engine
    warnings: list[str] = field(default_factory=list)
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    def __post_init__(self) -> None:
        self.compute_capability = normalize_cc(self.compute_capability)
        check_precision(self.precision)

    def key(self) -> EngineKey:
        return EngineKey(
            trt_version=self.tensorrt_version,
            gpu_name=self.gpu_name,
            compute_capability=self.compute_capability,
            precision=self.precision,
            onnx_sha256=self.onnx_sha256,
            flags=self.build_flags,
        )

    @property
    def parity_failed(self) -> list[str]:
        """Why the engine failed its parity budget when it was built (empty: passed or unmeasured)."""
        verdict = (self.parity or {}).get("verdict") or {}
        return list(verdict.get("reasons") or ["failed"]) if verdict.get("status") == "fail" else []

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["spec"] = self.spec.to_dict()
        d["build_flags"] = self.build_flags.to_dict()
        d["profile"] = self.profile.to_dict()
        d["key"] = self.key().digest()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSidecar:
        if data.get("format") != SIDECAR_FORMAT:
            raise SidecarError(f"not a leukedge engine sidecar (format={data.get('format')!r})")
        if int(data.get("format_version", 0)) > SIDECAR_VERSION:
            raise SidecarError(
                f"engine sidecar version {data['format_version']} is newer than this leukedge "
                f"understands ({SIDECAR_VERSION}); upgrade leukedge"
            )
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            kwargs["spec"] = ModelSpec.from_dict(data["spec"])
            kwargs["build_flags"] = BuildFlags.from_dict(data["build_flags"])
            kwargs["profile"] = ProfileShapes.from_dict(data["profile"])
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError, SpecError) as e:
            raise SidecarError(f"engine sidecar is incomplete or invalid: {e}") from e

    def save(self, path: str | Path) -> Path:
        from leukedge.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EngineSidecar:
        path = Path(path)
        if not path.is_file():
            raise SidecarError(f"no engine sidecar at {path}")
        try:
            data = read_json(path)
        except (OSError, json.JSONDecodeError) as e:
            raise SidecarError(f"cannot read engine sidecar {path}: {e}") from e
        if not isinstance(data, dict):
            raise SidecarError(f"engine sidecar {path} is not a JSON object")
        return cls.from_dict(data)


def load_sidecar_for(engine_path: str | Path) -> EngineSidecar:
    """The sidecar of an engine, or a message that says how to get an engine that has one."""
    engine_path = Path(engine_path)
    side = sidecar_path_for(engine_path)
    if not side.is_file():
        raise SidecarError(
            f"{engine_path} has no sidecar {side.name}: leukedge cannot tell which model, "
            "TensorRT version and GPU it belongs to. Build engines with "
            "`leukedge build-engine runs/NAME` (or MODEL.onnx)"
        )
    sidecar = EngineSidecar.load(side)
    try:  # the engine a sidecar describes lies beside it, never elsewhere
        inside_root(engine_path.parent, sidecar.engine_file, "engine_file")
    except UnsafePathError as e:
        raise SidecarError(f"engine sidecar {side} is invalid: {e}") from None
    return sidecar


# ---------------------------------------------------------------- compatibility and reuse


def rebuild_command(sidecar: EngineSidecar) -> str:
    """The exact ``leukedge build-engine`` call that rebuilds this engine on the current machine."""
    onnx = Path(sidecar.onnx_path)
    # By name only: the sidecar may come from another machine where the run dir lived.
    target = str(onnx.parent.parent) if onnx.parent.name == EXPORT_DIR else str(onnx)
    args = ["leukedge", "build-engine", _quote(target), "--precision", sidecar.precision]
    return " ".join(args + sidecar.build_flags.cli_args())


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./@%+=:,-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def check_engine_compatible(
    sidecar: EngineSidecar,
    runtime_trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    engine_path: str | Path | None = None,
) -> None:
    """Refuse an engine built for another TensorRT version, GPU or compute capability.

    TensorRT would either refuse to deserialize it with a terse error or, across
    GPUs of one architecture, run it with tactics tuned for another card. The
    message names both sides and the command that rebuilds the engine here.
    """
    cc = normalize_cc(compute_capability)
    diffs = []
    if sidecar.tensorrt_version != runtime_trt_version:
        diffs.append(
            f"TensorRT version: built with {sidecar.tensorrt_version}, "
            f"this machine has {runtime_trt_version}"
        )
    if sidecar.gpu_name != gpu_name:
        diffs.append(f"GPU: built on {sidecar.gpu_name}, this machine has {gpu_name}")
    if sidecar.compute_capability != cc:
        diffs.append(
            f"compute capability: built for {sm_tag(sidecar.compute_capability)} "
            f"({sidecar.compute_capability}), this GPU is {sm_tag(cc)} ({cc})"
        )
    if not diffs:
        return
    what = str(engine_path) if engine_path else sidecar.engine_file
    raise EngineMismatch(
        f"engine {what} was built for TensorRT {sidecar.tensorrt_version} on "
        f"{sidecar.gpu_name} ({sm_tag(sidecar.compute_capability)}) and cannot run here "
        f"(TensorRT {runtime_trt_version} on {gpu_name} ({sm_tag(cc)})). "
        + "; ".join(diffs)
        + ". A TensorRT engine only runs with the TensorRT version and GPU that built it. "
        f"Rebuild it on this machine: {rebuild_command(sidecar)}"
    )


@dataclass(frozen=True)
class ReuseDecision:
    reuse: bool
    reason: str

    def __bool__(self) -> bool:
        return self.reuse


def reuse_decision(engine_path: str | Path, wanted: EngineKey) -> ReuseDecision:
    """May the engine already at ``engine_path`` stand in for a build with key ``wanted``?

    Only if the engine and its sidecar are both there, the sidecar's key equals
    ``wanted`` (same TensorRT, GPU, precision, ONNX sha256 and build flags) and the
    engine file is byte for byte the one the sidecar describes.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return ReuseDecision(False, f"no engine at {engine_path}")
    try:
        sidecar = load_sidecar_for(engine_path)
    except SidecarError as e:
        return ReuseDecision(False, str(e))
    diffs = wanted.differences(sidecar.key())
    if diffs:
        return ReuseDecision(False, "engine is out of date: " + "; ".join(diffs))
    if engine_path.stat().st_size != sidecar.engine_bytes:
        return ReuseDecision(False, f"{engine_path.name} does not match its sidecar (size)")
    if sha256_file(engine_path) != sidecar.engine_sha256:
        return ReuseDecision(False, f"{engine_path.name} does not match its sidecar (sha256)")
    return ReuseDecision(True, f"up to date (key {wanted.digest()})")


# ---------------------------------------------------------------- DLA layer placement


def _is_dla_layer(layer: Any) -> bool:
    """An engine layer that runs on the DLA, as the engine inspector names it.

    TensorRT fuses what it hands to a DLA core into ``{ForeignNode[first...last]}``
    layers; a detailed inspector record may also name the DLA in its type.
    """
    if isinstance(layer, dict):
        name = str(layer.get("Name", ""))
        kind = " ".join(str(layer.get(k, "")) for k in ("LayerType", "ParameterType"))
        return name.startswith("{ForeignNode[") or "dla" in kind.lower()
    return str(layer).startswith("{ForeignNode[")


def _layer_name(layer: Any) -> str:
    return str(layer.get("Name", "?")) if isinstance(layer, dict) else str(layer)


def layer_placement(
    dla_core: int,
    network_layers: list[tuple[str, bool]],
    engine_info: dict[str, Any] | str | None,
) -> dict[str, Any]:
    """Where a DLA build runs: the network's layers the DLA accepts, the engine's DLA layers.

    ``network_layers`` is (name, ``IBuilderConfig.can_run_on_DLA``) per network layer;
    ``engine_info`` the engine inspector's JSON (detailed profiling verbosity).
    """
    gpu_only = [name for name, on_dla in network_layers if not on_dla]
    out: dict[str, Any] = {
        "dla_core": dla_core,
        "network_layers": len(network_layers),
        "network_layers_dla_capable": len(network_layers) - len(gpu_only),
        "network_layers_gpu_only": gpu_only[:100],
    }
    if isinstance(engine_info, str):
        try:
            engine_info = json.loads(engine_info)
        except ValueError:
            engine_info = None
    layers = (engine_info or {}).get("Layers") if isinstance(engine_info, dict) else None
    if isinstance(layers, list):
        on_dla = [_layer_name(x) for x in layers if _is_dla_layer(x)]
        out.update(
            engine_layers=len(layers),
            engine_layers_dla=len(on_dla),
            engine_layer_names=[_layer_name(x) for x in layers][:200],
        )
    return out


def placement_warnings(placement: dict[str, Any]) -> list[str]:
    """A DLA engine whose layers all run on the GPU is a GPU engine with extra copies."""
    capable = placement.get("network_layers_dla_capable", 0)
    on_dla = placement.get("engine_layers_dla")
    if capable == 0 or on_dla == 0:
        return [
            f"no layer runs on DLA core {placement.get('dla_core')}: every layer fell back to "
            "the GPU (DLA runs FP16/INT8 convolutions, pooling and activations with static "
            "shapes); build without --dla-core, it will be faster"
        ]
    gpu_only = placement.get("network_layers_gpu_only") or []
    if gpu_only:
        return [
            f"{len(gpu_only)} of {placement.get('network_layers')} layers cannot run on the DLA "
            f"and fall back to the GPU (first: {', '.join(gpu_only[:5])}); each switch copies "
            "tensors between DLA and GPU memory"
        ]
    return []
