"""Build TensorRT engines from leukedge's ONNX files, on the device that will run them.

Precision lives in the ONNX graph (``model.fp16.onnx``, ``model.int8.onnx`` with
Q/DQ nodes), so every engine is built from a strongly typed network and no
precision builder flag is ever set: the same code works on TensorRT 10 (JetPack
6.x ships 10.3) and on TensorRT 11, which removed ``BuilderFlag.FP16/INT8``, the
INT8 calibrators and ``EXPLICIT_BATCH``. TF32 is cleared unless asked for, so an
fp32 engine computes in fp32.

What a trtexec user expects comes with each build: TensorRT's log in a file next
to the engine, timing caches (the run's own and one per machine, TensorRT version
and GPU), the DLA layer placement, and the engine's parity recorded in its sidecar
(as Polygraphy compares runners): against PyTorch's logits of the export's parity
set (``export/parity_set.npz``), so a Jetson needs nothing but ``spec.json`` and
``export/``; for an export without one, against ONNX Runtime fp32 on the run's
validation images.
Cache keys, names, shapes and the sidecar come from
:mod:`leukedge.runtime.backends.engine_plan`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import leukedge
from leukedge.artifacts import (
    ENGINE_AUTO_ORDER,
    PRECISIONS,
    SPEC_FILE,
    artifact,
    engines_root,
    export_dir_of,
    is_run_dir,
    onnx_name,
    run_dir_of_export,
)
from leukedge.export.trt_build import Log, build_plan
from leukedge.io import atomic_write_bytes, sha256_file, sweep_stale_temps
from leukedge.runtime.backends.engine_plan import (
    BuildFlags,
    EngineBuildError,
    EngineKey,
    EngineSidecar,
    build_log_path_for,
    default_engines_root,
    machine_timing_cache_path,
    onnx_precision,
    profile_for,
    reuse_decision,
    sidecar_path_for,
    timing_cache_path,
)
from leukedge.runtime.backends.gpu import require_target
from leukedge.runtime.parityset import (
    PARITY_SET_FILE,
    ParitySetError,
    has_parity_set,
    load_parity_set,
)
from leukedge.spec import ModelSpec, SpecError

DEFAULT_PRECISIONS = ENGINE_AUTO_ORDER  # the fastest-first order --backend auto tries
AUTO = "auto"
PARITY_SPLIT = "val"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    reused: bool  # True: a cached engine with the same key was kept
    reason: str
    timing_cache: Path | None  # the run's own
    shared_timing_cache: Path | None = None  # the machine's, per TensorRT version and GPU

    @property
    def precision(self) -> str:
        return self.sidecar.precision

    @property
    def build_log(self) -> Path | None:
        log = self.sidecar.build_log
        return self.engine_path.with_name(log) if log else None


@dataclass(frozen=True)
class PrecisionOutcome:
    """What ``build-engine`` did for one precision: built, reused, failed or skipped."""

    precision: str
    onnx_path: Path | None
    status: str  # "built" | "reused" | "failed" | "skipped"
    message: str
    result: BuildResult | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("built", "reused")


# ---------------------------------------------------------------- validation images


@dataclass
class ValidationImages:
    """The run's validation images, preprocessed once, and ONNX Runtime's logits on them."""

    x: np.ndarray
    labels: np.ndarray | None
    source: str
    _reference: dict[Path, np.ndarray] = field(default_factory=dict)

    def get(self, spec: ModelSpec, onnx_path: Path) -> tuple[ValidationImages | None, str]:
        return self, ""

    def reference(self, onnx_path: Path, spec: ModelSpec) -> np.ndarray:
        """ONNX Runtime fp32 on CPU: the same runtime code that serves the file elsewhere."""
        if onnx_path not in self._reference:
            from leukedge.export.parity import onnx_logits

            self._reference[onnx_path] = onnx_logits(onnx_path, self.x, spec)
        return self._reference[onnx_path]

    def reference_label(self, onnx_path: Path) -> str:
        return f"onnxruntime fp32 CPU: {onnx_path.name}"


@dataclass
class ParitySetImages(ValidationImages):
    """The export's parity set: its crops preprocessed here, PyTorch's recorded logits."""

    recorded: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    torch_version: str | None = None

    def reference(self, onnx_path: Path, spec: ModelSpec) -> np.ndarray:
        return self.recorded

    def reference_label(self, onnx_path: Path) -> str:
        return f"torch fp32 recorded at export (torch {self.torch_version}): {PARITY_SET_FILE}"


def parity_set_images(
    export_dir: Path, spec: ModelSpec, limit: int | None = None
) -> tuple[ValidationImages | None, str]:
    """The export's parity set (its first ``limit`` crops: still stratified), or why not."""
    try:
        ps = load_parity_set(export_dir, spec).head(limit)
    except ParitySetError as e:
        return None, str(e)
    source = f"{len(ps)} parity-set crops (val+test) of {export_dir}"
    images = ParitySetImages(
        ps.inputs(spec),
        ps.labels,
        source,
        recorded=ps.logits,
        torch_version=ps.versions.get("torch"),
    )
    return images, ""


def validation_images(
    run_dir: Path, spec: ModelSpec, data: str | Path | None = None, limit: int | None = None
) -> tuple[ValidationImages | None, str]:
    """The validation split of ``run_dir`` (``limit`` images, stratified), or why there is none."""
    from leukedge.data.arrays import load_image_set, stratified_subset
    from leukedge.data.records import DatasetError
    from leukedge.rundir import RunDir, RunDirError

    try:
        dataset, split = RunDir(run_dir).dataset_and_split(data)
    except (RunDirError, DatasetError, OSError) as e:
        return None, f"no validation images ({e}); pass --data if the data moved"
    records = split.records(dataset, PARITY_SPLIT)
    if limit:
        records = stratified_subset(records, limit)
    if not records:
        return None, "the validation split is empty"
    images = load_image_set(records, spec)
    if not len(images):
        return None, f"none of the {len(records)} validation images could be read"
    source = f"{len(images)} {PARITY_SPLIT} images of {run_dir}"
    return ValidationImages(images.x, images.labels, source), ""


class RunImages:
    """The images a new engine is measured on, read on first need (a reused engine needs none):
    the export's parity set where it has one, else the run's validation split."""

    def __init__(self, target: Path, data: str | Path | None, limit: int | None) -> None:
        self.target, self.data, self.limit = target, data, limit
        self._loaded: tuple[ValidationImages | None, str] | None = None

    def get(self, spec: ModelSpec, onnx_path: Path) -> tuple[ValidationImages | None, str]:
        if self._loaded is None:
            target = self.target
            run_dir = target if is_run_dir(target) else run_dir_of_export(onnx_path.parent)
            if has_parity_set(onnx_path.parent):
                self._loaded = parity_set_images(onnx_path.parent, spec, self.limit)
            elif run_dir is None:
                self._loaded = None, "not in a run dir: no validation split to measure on"
            else:
                self._loaded = validation_images(run_dir, spec, self.data, self.limit)
        return self._loaded


def engine_logits(backend: Any, x: np.ndarray) -> np.ndarray:
    """Logits of a TensorRT backend for any number of images; a static engine gets padded."""
    step = int(backend.max_batch or len(x))
    static = backend.min_batch == backend.max_batch
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if static and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(backend.infer(chunk)[:n])
    return np.concatenate(outs)


def measure_parity(
    engine_path: Path,
    reference_onnx: Path,
    precision: str,
    images: ValidationImages,
    spec: ModelSpec,
    device: int = 0,
) -> dict[str, Any]:
    """The engine against the images' reference (PyTorch recorded at export, or ONNX Runtime
    fp32 on the validation split), judged by ``precision``'s budget."""
    from leukedge.budgets import Budgets, judge
    from leukedge.export.parity import compare
    from leukedge.runtime.backends.trt import TrtBackend

    reference = images.reference(reference_onnx, spec)
    with TrtBackend(engine_path, device) as backend:
        got = engine_logits(backend, images.x)
    parity = compare(reference, got, images.labels, spec)
    verdict = judge(artifact(precision).budget_key, parity, Budgets())
    return {
        "measured": True,
        "reference": images.reference_label(reference_onnx),
        "images": images.source,
        **parity,
        "verdict": verdict,
    }


def reference_onnx_for(onnx_path: Path) -> Path:
    """The fp32 export beside ``onnx_path`` when there is one, else the file itself."""
    fp32 = onnx_path.with_name(onnx_name("fp32"))
    return fp32 if fp32.is_file() else onnx_path


# ---------------------------------------------------------------- one engine


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    timing_cache: str | Path | None = AUTO,
    force: bool = False,
    log: Log = _stderr,
    spec: ModelSpec | None = None,
    device: int = 0,
    verbose: bool = False,
    *,
    flags: BuildFlags | None = None,
    shared_timing_cache: str | Path | None = AUTO,
    images: ValidationImages | RunImages | None = None,
    no_images_reason: str = "no validation images given",
) -> BuildResult:
    """Build (or reuse) the engine of one ``model.<precision>.onnx`` for this GPU.

    ``out_dir`` is the engines root (default: ``runs/NAME/engines`` for an ONNX in
    ``runs/NAME/export``); the engine goes to ``<out_dir>/<trt>_<gpu>_sm<cc>/``.
    ``flags`` (else ``max_batch``, ``workspace_mb``, ``dla_core``) set the build.
    ``timing_cache``: the run's (``"auto"``: beside the engine, a path, or None);
    ``shared_timing_cache``: the machine's (``"auto"``: under ``~/.cache/leukedge``).
    With ``images`` the new engine's parity goes into its sidecar.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"no ONNX model at {onnx_path} (create it with `leukedge export`)")
    flags = flags or BuildFlags.create(max_batch, workspace_mb, dla_core)
    precision = onnx_precision(onnx_path)
    if flags.dla_core is not None and not artifact(precision).dla:
        raise EngineBuildError(
            f"DLA runs FP16 and INT8 only, {onnx_path.name} is {precision}: build "
            "model.fp16.onnx or model.int8.onnx for --dla-core, or this one without it"
        )
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
    cache = _cache_file(timing_cache, timing_cache_path(root, *_target(key)))
    shared = _cache_file(shared_timing_cache, machine_timing_cache_path(*_target(key)))
    caches = [c for c in (cache, shared) if c is not None]
    if not force:
        decision = reuse_decision(engine_path, key)
        if decision:
            log(f"{engine_path}: {decision.reason}, reusing it")
            sidecar = EngineSidecar.load(sidecar_path_for(engine_path))
            return BuildResult(
                engine_path,
                sidecar_path_for(engine_path),
                sidecar,
                True,
                decision.reason,
                cache,
                shared,
            )
        log(f"{engine_path}: building ({decision.reason})")
    else:
        log(f"{engine_path}: building (--force)")
    shapes = profile_for(spec, flags)
    log_path = build_log_path_for(engine_path)
    started = time.perf_counter()
    built = build_plan(trt, onnx_path, spec, shapes, flags, caches, log, log_path, verbose)
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
        engine_sha256=hashlib.sha256(built.plan).hexdigest(),
        engine_bytes=len(built.plan),
        build_flags=flags,
        profile=built.shapes,
        build_seconds=round(seconds, 3),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        leukedge_version=leukedge.__version__,
        output_name=built.output_name,
        placement=built.placement,
        build_log=log_path.name,
        warnings=list(built.warnings),
    )
    _write_engine(engine_path, built.plan, sidecar)
    log(f"{engine_path}: built in {seconds:.1f} s ({len(built.plan) / 2**20:.1f} MiB)")
    for w in built.warnings:
        log(f"warning: {w}")
    sidecar = _record_parity(
        engine_path, onnx_path, sidecar, images, no_images_reason, spec, device, log
    )
    return BuildResult(
        engine_path, sidecar_path_for(engine_path), sidecar, False, "built", cache, shared
    )


def _target(key: EngineKey) -> tuple[str, str, str]:
    return key.trt_version, key.gpu_name, key.compute_capability


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


def _cache_file(choice: str | Path | None, auto: Path) -> Path | None:
    if choice is None or str(choice).lower() == "none":
        return None
    return auto if str(choice) == AUTO else Path(choice).expanduser()


def _write_engine(engine_path: Path, plan: bytes, sidecar: EngineSidecar) -> None:
    """Old sidecar out, then engine, then sidecar: a sidecar only ever describes its engine."""
    side = sidecar_path_for(engine_path)
    side.unlink(missing_ok=True)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(engine_path.parent)  # engines a killed build was writing
    atomic_write_bytes(engine_path, plan)
    sidecar.save(side)


def _record_parity(
    engine_path: Path,
    onnx_path: Path,
    sidecar: EngineSidecar,
    images: ValidationImages | RunImages | None,
    no_images_reason: str,
    spec: ModelSpec,
    device: int,
    log: Log,
) -> EngineSidecar:
    """Run the new engine on the parity images; a failure to measure never loses the engine."""
    parity: dict[str, Any]
    try:
        found, why = images.get(spec, onnx_path) if images is not None else (None, "")
        if found is None:
            parity = {"measured": False, "reason": why or no_images_reason}
        else:
            reference = reference_onnx_for(onnx_path)
            parity = measure_parity(engine_path, reference, sidecar.precision, found, spec, device)
    except Exception as e:  # the engine is built; say why it could not be checked
        parity = {"measured": False, "reason": f"{type(e).__name__}: {e}"}
    sidecar = replace(sidecar, parity=parity)
    sidecar.save(sidecar_path_for(engine_path))
    if parity.get("measured"):
        verdict = parity["verdict"]
        log(
            f"{engine_path.name}: parity vs {parity['reference']} on {parity['images']}: "
            f"agreement {parity['agreement']:.4f}, max |Δlogit| {parity['max_abs_diff']:.3g}, "
            f"budget {verdict['status']}"
            + ("" if verdict["status"] != "fail" else f" ({'; '.join(verdict['reasons'])})")
        )
    else:
        log(f"{engine_path.name}: parity not measured: {parity['reason']}")
    return sidecar


# ---------------------------------------------------------------- a run dir or an ONNX file


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def export_if_missing(target: Path, precisions: Sequence[str] | None, log: Log) -> None:
    """``build-engine RUN`` straight after ``train``: export first where PyTorch is here."""
    if not is_run_dir(target):
        return
    export = export_dir_of(target)
    if any((export / onnx_name(p)).is_file() for p in PRECISIONS):
        return
    if not _torch_available():
        raise EngineBuildError(
            f"{target} has no exported model ({export}/model.*.onnx) and PyTorch is not "
            f"installed here to export it: run `leukedge export {target}` on the training "
            "machine and copy the whole run dir (with its export/ folder) to this device"
        )
    wanted = list(precisions) if precisions else list(PRECISIONS)
    log(f"{export} is missing: exporting first (leukedge export {target})")
    from leukedge.export import ExportError, export_run

    try:
        export_run(target, wanted)
    except ExportError as e:  # some files were written; build the ones that exist
        log(f"export: {e}")


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
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    timing_cache: str | Path | None = AUTO,
    log: Log = _stderr,
    device: int = 0,
    verbose: bool = False,
    *,
    flags: BuildFlags | None = None,
    shared_timing_cache: str | Path | None = AUTO,
    parity: bool = True,
    parity_images: int | None = None,
    data: str | Path | None = None,
) -> list[PrecisionOutcome]:
    """``leukedge build-engine runs/NAME|MODEL.onnx``: one engine per precision, cached.

    ``precisions`` None means fp16, int8, fp32 where exported (fp16, int8 for a DLA).
    One precision that fails does not stop the others: each outcome says what
    happened. Raises only when nothing can be built: no TensorRT or GPU
    (:class:`TensorRTUnavailable`), nothing exported, bad options.
    """
    flags = flags or BuildFlags.create(max_batch, workspace_mb, dla_core)
    target = Path(target)
    export_if_missing(target, precisions, log)
    files = resolve_onnx_files(target, precisions)
    require_target(device)
    root = Path(out) if out is not None else None
    if root is None and target.is_dir():
        root = engines_root(target)
    outcomes: list[PrecisionOutcome] = []
    images = RunImages(target, data, parity_images) if parity else None
    for onnx_path, precision in files:
        if flags.dla_core is not None and not artifact(precision).dla and not precisions:
            outcomes.append(
                PrecisionOutcome(
                    precision,
                    onnx_path,
                    "skipped",
                    "DLA runs FP16 and INT8 only (build fp32 without --dla-core)",
                )
            )
            continue
        try:
            result = build_engine(
                onnx_path,
                out_dir=root,
                timing_cache=timing_cache,
                force=force,
                log=log,
                device=device,
                verbose=verbose,
                flags=flags,
                shared_timing_cache=shared_timing_cache,
                images=images,
                no_images_reason="--no-parity",
            )
        except Exception as e:  # recorded; the next precision is still built
            message = str(e) if isinstance(e, EngineBuildError) else f"{type(e).__name__}: {e}"
            log(f"{precision}: failed: {message}")
            outcomes.append(PrecisionOutcome(precision, onnx_path, "failed", message))
            continue
        status = "reused" if result.reused else "built"
        outcomes.append(PrecisionOutcome(precision, onnx_path, status, result.reason, result))
    return outcomes
