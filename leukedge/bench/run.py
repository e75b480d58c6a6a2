"""``run_bench``: parity and latency of every backend of a run dir, written as a report.

The steps, in order: read and preprocess the split once (the runtime's own
``preprocess``), or the crops of the export's parity set; open the reference
(PyTorch fp32; on the parity set, PyTorch's logits recorded at export; ONNX
Runtime fp32 where neither is at hand) and every backend asked for, recording
why any cannot run; take logits of every image from each and compare them with the reference's;
time all of them interleaved at each batch size; time decoding and
preprocessing per image; write report.json, report.md and the plots.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.bench.backends import (
    QDQ_EXACT,
    TORCH,
    BenchContext,
    BenchError,
    artifact_of,
    int8_kernels_saturate,
    onnx_path,
    open_backend,
    parse_backends,
    precision_of,
)
from leukedge.bench.latency import StopRule, measure_batch, preprocess_cost, speedup
from leukedge.bench.parity import backend_parity, metrics_of
from leukedge.bench.recorded import (
    AUTO_SPLIT,
    PARITY_SPLIT,
    REFERENCE_NAME,
    choose_split,
    crop_preprocess_cost,
    drift_notes,
    parity_set_info,
    set_images,
    try_load,
)
from leukedge.bench.report import write_report
from leukedge.bench.schema import FILES, REPORT_FORMAT, REPORT_VERSION, finite_or_none
from leukedge.budgets import Budgets, judge
from leukedge.data.arrays import ImageSet, load_image_set
from leukedge.machine import describe_machine
from leukedge.progress import Reporter
from leukedge.rundir import RunDir
from leukedge.runtime.backends.base import Backend, BackendError, infer_in_batches
from leukedge.runtime.parityset import ParitySet, ParitySetError, load_parity_set
from leukedge.spec import ModelSpec

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_WARMUP = 5
DEFAULT_ITERS = 30
PARITY_BATCH = 32
SPLITS = ("train", "val", "test", "all", PARITY_SPLIT)
FALLBACK_REFERENCE = "ort-fp32"


def run_bench(
    run_dir: str | Path,
    split: str = AUTO_SPLIT,
    data: str | Path | None = None,
    backends: str | Sequence[str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    out: str | Path | None = None,
    budgets: Budgets | dict[str, float | None] | None = None,
    reporter: Reporter | None = None,
    min_time_s: float = 0.5,
    max_time_s: float = 10.0,
    threads: int | None = None,
    torch_device: str = "auto",
    limit: int | None = None,
) -> dict[str, Any]:
    """Measure parity and latency of ``backends`` on ``split``; returns report.json's content.

    ``iters`` is the minimum number of timed calls per backend and batch size
    (with ``min_time_s``, capped by ``max_time_s``); ``budgets`` overrides the
    default parity budgets by field name; ``limit`` keeps the first N images.
    ``split`` ``parity`` measures on the export's parity set against PyTorch's recorded
    logits; ``auto`` does so where PyTorch, the checkpoint or the data is missing, and
    takes the test split otherwise. Written to ``out`` (default ``RUN/bench``).
    """
    rep = reporter or Reporter()
    run = RunDir(run_dir)
    spec = run.spec()
    names = parse_backends(backends)
    sizes = check_batch_sizes(batch_sizes)
    if warmup < 0:
        raise BenchError(f"warm-up iterations must be >= 0, got {warmup}")
    try:
        rule = StopRule(min_iters=iters, min_time_s=min_time_s, max_time_s=max_time_s)
        limits = budgets if isinstance(budgets, Budgets) else Budgets.with_overrides(budgets)
    except ValueError as e:
        raise BenchError(str(e)) from None
    machine = describe_machine()
    omp_policy = passive_openmp()
    settings = BenchSettings(
        backends=names,
        batch_sizes=sizes,
        warmup=warmup,
        stop_rule=rule,
        budgets=limits,
        threads=threads,
        torch_device=torch_device,
        omp_policy=omp_policy,
    )
    split, why_split = choose_split(run, split, data)
    ps, ps_why = None, ""
    if split == PARITY_SPLIT:
        try:
            ps = load_parity_set(run.path, spec).head(limit)
        except ParitySetError as e:
            raise BenchError(str(e)) from None
        images, root = set_images(ps, spec), str(ps.path)
    else:
        images, root = load_split(run, spec, split, data, limit, rep)
        ps, ps_why = try_load(run.path, spec)
    inputs = BenchInputs(run=run, spec=spec, split=split, root=root, images=images, machine=machine)
    ctx = BenchContext(run.path, spec, threads=threads, torch_device=torch_device)
    state = _State(images=images, spec=spec)
    state.parity_set, state.recorded = ps, split == PARITY_SPLIT
    if why_split:
        state.notes.append(f"measured on the parity set recorded at export: {why_split}")
    if ps_why:
        state.notes.append(f"the parity set is not used: {ps_why}")
    if omp_policy != "PASSIVE" and _torch_loaded():
        state.notes.append(
            f"PyTorch was loaded before the bench with OMP_WAIT_POLICY={omp_policy}: its idle "
            "OpenMP threads may spin and slow the backend timed after it (set "
            "OMP_WAIT_POLICY=PASSIVE before starting Python for clean interleaved timings)"
        )

    opened = open_all(names, ctx, state, rep)
    try:
        logits = parity_logits(opened, images, state, rep)
        if state.recorded and ps is not None:
            logits = {REFERENCE_NAME: ps.logits, **logits}
        rows = parity_rows(logits, opened, state, limits)
        rows.update(exact_int8_rows(names, ctx, machine, logits, state, limits, rep))
        check_recorded(ps, opened, logits, state, limits)
        measured = {n: b for n, b in opened.items() if n in logits}
        latency = time_backends(measured, images.x, sizes, warmup, rule, state, rep)
    finally:
        for backend in opened.values():
            backend.close()
    state.speed_baseline = next(
        (n for n in (state.reference, TORCH, FALLBACK_REFERENCE) if latency.get(n)), None
    )
    attach_latency(rows, latency, state.speed_baseline or "", sizes)
    state.notes += _int8_notes(rows)
    if state.recorded and ps is not None:
        pre = crop_preprocess_cost(ps, spec)
    else:
        pre = preprocess_cost(images.paths, spec)
    report = finite_or_none(assemble(inputs, settings, state, rows, pre))
    out_dir = Path(out) if out is not None else run.bench_dir
    write_report(report, out_dir)
    return report


def passive_openmp() -> str | None:
    """Make PyTorch's OpenMP threads sleep, not spin, between calls; the policy in effect.

    Spinning OpenMP threads steal the cores of the backend timed next in an
    interleaved run. The policy is read when PyTorch loads, so it is set only
    if PyTorch is not loaded yet (the bench loads it later, when it opens the reference).
    """
    if not _torch_loaded():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY")


def _torch_loaded() -> bool:
    return sys.modules.get("torch") is not None


class _State:
    """What the steps learn as they go: the reference, skips and notes."""

    def __init__(self, images: ImageSet, spec: ModelSpec) -> None:
        self.images = images
        self.spec = spec
        self.reference = ""
        self.reference_reason = ""
        self.skipped: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.ref_logits = np.zeros((0, spec.num_classes), dtype=np.float32)
        self.ref_metrics: dict[str, Any] = {}
        self.parity_set: ParitySet | None = None
        self.recorded = False  # the reference is the parity set's recorded PyTorch logits
        self.parity_info: dict[str, Any] | None = None
        self.speed_baseline: str | None = None

    def skip(self, name: str, stage: str, reason: str) -> None:
        self.skipped.append({"name": name, "stage": stage, "reason": reason})


def check_batch_sizes(sizes: Sequence[int]) -> list[int]:
    out = sorted({int(s) for s in sizes})
    if not out or out[0] < 1:
        raise BenchError(f"batch sizes must be integers >= 1, got {list(sizes)}")
    return out


def load_split(
    run: RunDir,
    spec: ModelSpec,
    split: str,
    data: str | Path | None,
    limit: int | None,
    rep: Reporter,
) -> tuple[ImageSet, str]:
    """The split's images through the runtime's preprocessing; the dataset root."""
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    dataset, saved = run.dataset_and_split(data)
    records = dataset.records if split == "all" else saved.records(dataset, split)
    if not records:
        raise BenchError(f"the {split} split of {dataset.root} holds no images")
    task = rep.task(f"read {split} images", min(len(records), limit or len(records)))
    images = load_image_set(records, spec, limit, lambda i, n: rep.advance(task))
    rep.finish(task)
    if not len(images):
        raise BenchError(f"none of the {len(records)} images of the {split} split could be read")
    return images, str(dataset.root)


# --------------------------------------------------------------------------- opening


def _try_open(name: str, ctx: BenchContext) -> tuple[Backend | None, str]:
    try:
        return open_backend(name, ctx), ""
    except BackendError as e:
        return None, str(e)
    except Exception as e:  # a broken install or driver: reported, the others still run
        return None, f"{type(e).__name__}: {e}"


def open_all(
    names: list[str], ctx: BenchContext, state: _State, rep: Reporter
) -> dict[str, Backend]:
    """The reference first, then every other backend that opens; the rest are skipped."""
    opened: dict[str, Backend] = {}
    if state.recorded and state.parity_set is not None:
        versions = state.parity_set.versions
        state.reference = REFERENCE_NAME
        state.reference_reason = (
            f"PyTorch fp32 logits of these crops, recorded at export (torch "
            f"{versions.get('torch')}, timm {versions.get('timm')})"
        )
        return _open_others(names, ctx, state, opened)
    torch_backend, torch_why = _try_open(TORCH, ctx)
    if torch_backend is not None:
        opened[TORCH] = torch_backend
        state.reference = TORCH
        state.reference_reason = "PyTorch fp32, the model as trained"
        if TORCH not in names:
            state.notes.append("torch added to the backends: it is the parity reference")
    else:
        if TORCH in names:
            state.skip(TORCH, "open", torch_why)
        fallback, why = _try_open(FALLBACK_REFERENCE, ctx)
        if fallback is None:
            raise BenchError(
                f"no reference to compare with: torch: {torch_why}; {FALLBACK_REFERENCE}: {why}"
            )
        opened[FALLBACK_REFERENCE] = fallback
        state.reference = FALLBACK_REFERENCE
        state.reference_reason = torch_why
        state.notes.append(
            f"reference is {FALLBACK_REFERENCE}, not PyTorch: {torch_why}. Parity figures are "
            "against the FP32 ONNX file; its own parity with PyTorch is in export/export.json"
            + (
                f" (--split {PARITY_SPLIT} compares with PyTorch's logits recorded at export)"
                if state.parity_set is not None
                else ""
            )
        )
    return _open_others(names, ctx, state, opened)


def _open_others(
    names: list[str], ctx: BenchContext, state: _State, opened: dict[str, Backend]
) -> dict[str, Backend]:
    for name in names:
        if name in opened or name == QDQ_EXACT or (name == TORCH and not state.recorded):
            continue
        backend, why = _try_open(name, ctx)
        if backend is None:
            state.skip(name, "open", why)
        else:
            opened[name] = backend
    return opened


# --------------------------------------------------------------------------- parity


def parity_logits(
    opened: dict[str, Backend], images: ImageSet, state: _State, rep: Reporter
) -> dict[str, np.ndarray]:
    """Logits of every image from each backend; one that fails is skipped with its error."""
    out: dict[str, np.ndarray] = {}
    task = rep.task("parity", len(opened))
    for name, backend in opened.items():
        try:
            out[name] = infer_in_batches(backend, images.x, PARITY_BATCH)
        except Exception as e:  # recorded; the reference failing ends the bench below
            if name == state.reference:
                raise BenchError(f"the reference {name} failed: {type(e).__name__}: {e}") from e
            state.skip(name, "parity", f"{type(e).__name__}: {e}")
        rep.advance(task, backend=name)
    rep.finish(task)
    return out


def _row(
    name: str,
    kind: str,
    backend: Backend | None,
    artifact: str | None,
    logits: np.ndarray,
    state: _State,
    ref_metrics: dict[str, Any],
    limits: Budgets,
) -> dict[str, Any]:
    ref = state.reference
    is_ref = name == ref
    precision = getattr(backend, "precision", None) or precision_of(name)
    figures = backend_parity(state.ref_logits, logits, state.images, state.spec, ref_metrics)
    budget = (
        {"status": "reference", "checks": [], "reasons": ["the reference"]}
        if is_ref
        else judge(precision, figures["parity"], limits)
    )
    return {
        "name": name,
        "kind": kind,
        "precision": precision,
        "device": getattr(backend, "device", "cpu" if backend is None else None),
        "artifact": artifact,
        "is_reference": is_ref,
        **figures,
        "budget": budget,
        "latency": {},
        "speedup": {},
        "notes": [],
    }


def parity_rows(
    logits: dict[str, np.ndarray], opened: dict[str, Backend], state: _State, limits: Budgets
) -> dict[str, dict[str, Any]]:
    state.ref_logits = logits[state.reference]
    state.ref_metrics = metrics_of(state.ref_logits, state.images.labels, state.spec)
    rows = {
        name: _row(
            name,
            "measured" if name in opened else "parity-only",
            opened.get(name),
            artifact_of(opened[name]) if name in opened else None,
            z,
            state,
            state.ref_metrics,
            limits,
        )
        for name, z in logits.items()
    }
    if REFERENCE_NAME in rows and state.parity_set is not None:
        row = rows[REFERENCE_NAME]
        row["precision"] = "fp32"
        row["device"] = f"{state.parity_set.meta.get('device') or 'cpu'} at export"
        row["artifact"] = str(state.parity_set.path)
        row["notes"].append("PyTorch fp32 as recorded at export: parity only, no latency here")
    return rows


def check_recorded(
    ps: ParitySet | None,
    opened: dict[str, Backend],
    logits: dict[str, np.ndarray],
    state: _State,
    limits: Budgets,
) -> None:
    """Does today's PyTorch reproduce the parity set's recorded logits? Versions too."""
    if ps is None:
        return
    torch_logits: np.ndarray | None = None
    if state.recorded:
        x: np.ndarray | None = state.images.x
        torch_logits = logits.get(TORCH)
    else:
        x = ps.inputs(state.spec)
        if TORCH in opened:
            try:
                torch_logits = infer_in_batches(opened[TORCH], x, PARITY_BATCH)
            except Exception as e:  # reported; the bench itself is unaffected
                state.notes.append(f"torch on the parity set failed: {type(e).__name__}: {e}")
    role = "reference" if state.recorded else "reproduction check"
    state.parity_info = parity_set_info(ps, role, x, torch_logits, state.spec, limits)
    state.notes += drift_notes(state.parity_info)


def exact_int8_rows(
    names: list[str],
    ctx: BenchContext,
    machine: dict[str, Any],
    logits: dict[str, np.ndarray],
    state: _State,
    limits: Budgets,
    rep: Reporter,
) -> dict[str, dict[str, Any]]:
    """``qdq-int8-exact``: asked for, or beside ``ort-int8`` where this CPU's int8 kernels saturate."""
    from leukedge.export.parity import reference_logits

    wanted = QDQ_EXACT in names
    automatic = "ort-int8" in logits and int8_kernels_saturate(machine)
    if not (wanted or automatic):
        return {}
    try:
        path = onnx_path(ctx, "int8")
        z = reference_logits(path, state.images.x, PARITY_BATCH)
    except Exception as e:  # reported as skipped like any backend
        state.skip(QDQ_EXACT, "parity", f"{type(e).__name__}: {e}" if wanted else str(e))
        return {}
    row = _row(QDQ_EXACT, "parity-only", None, str(path), z, state, state.ref_metrics, limits)
    row["precision"] = "int8"
    row["notes"].append(
        "ONNX Runtime with graph optimisations off: every DequantizeLinear -> float op -> "
        "QuantizeLinear as written, the arithmetic TensorRT, VNNI and ARM int8 kernels compute"
    )
    if automatic:
        state.notes.append(
            f"this CPU ({machine.get('cpu')}, flags {' '.join(machine.get('cpu_flags') or []) or 'none'}) "
            "has no VNNI: ONNX Runtime's int8 kernels saturate 16-bit sums here, so ort-int8 "
            f"can differ from the reference more than the INT8 file itself does. {QDQ_EXACT} "
            "is the same file's exact Q/DQ arithmetic (parity only, no latency): when it passes "
            "and ort-int8 fails, the loss is this CPU's kernels, not the quantization"
        )
    return {QDQ_EXACT: row}


def _int8_notes(rows: dict[str, dict[str, Any]]) -> list[str]:
    cpu, exact = rows.get("ort-int8"), rows.get(QDQ_EXACT)
    if not cpu or not exact:
        return []
    if cpu["budget"]["status"] == "fail" and exact["budget"]["status"] == "pass":
        cpu["notes"].append(
            f"fails here while {QDQ_EXACT} passes: a CPU-kernel artefact, not a quantization loss"
        )
        return [
            "ort-int8 fails its budget on this CPU but the exact Q/DQ arithmetic passes: "
            "expect the INT8 engine (TensorRT) to pass"
        ]
    return []


# --------------------------------------------------------------------------- latency


def time_backends(
    backends: dict[str, Backend],
    x: np.ndarray,
    sizes: list[int],
    warmup: int,
    rule: StopRule,
    state: _State,
    rep: Reporter,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{backend: {batch: entry}}``, every batch size timed with all backends interleaved."""
    out: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in backends}
    task = rep.task("latency", len(sizes))
    for batch in sizes:
        runnable = _warm(backends, x, batch, state)
        entries = measure_batch(runnable, x, batch, warmup, rule)
        for name in backends:
            out[name][str(batch)] = entries.get(name) or {
                "batch": batch,
                "skipped": "failed at this batch size (see skipped)",
            }
        rep.advance(task, batch=batch)
    rep.finish(task)
    return out


def _warm(
    backends: dict[str, Backend], x: np.ndarray, batch: int, state: _State
) -> dict[str, Backend]:
    """Backends that run one batch of ``batch`` (the others are recorded as skipped)."""
    from leukedge.bench.latency import batch_of

    ok = {}
    xb = batch_of(x, batch)
    for name, b in backends.items():
        if b.max_batch is not None and batch > b.max_batch:
            ok[name] = b  # measure_batch records the limit
            continue
        try:
            b.infer(xb)
        except Exception as e:  # e.g. out of device memory at a large batch
            state.skip(name, "latency", f"batch {batch}: {type(e).__name__}: {e}")
            continue
        ok[name] = b
    return ok


def attach_latency(
    rows: dict[str, dict[str, Any]],
    latency: dict[str, dict[str, dict[str, Any]]],
    reference: str,
    sizes: list[int],
) -> None:
    """Latency entries and the speed-up over the reference, batch by batch."""
    ref = latency.get(reference, {})
    for name, entries in latency.items():
        rows[name]["latency"] = entries
        for batch in map(str, sizes):
            mine, theirs = entries.get(batch, {}), ref.get(batch, {})
            if "host_ms" not in mine or "host_ms" not in theirs:
                continue
            rows[name]["speedup"][batch] = {
                "p50": speedup(theirs["host_ms"]["p50"], mine["host_ms"]["p50"]),
                "throughput": speedup(mine["images_per_s"], theirs["images_per_s"]),
            }


# --------------------------------------------------------------------------- report


def runtimes() -> dict[str, Any]:
    """Versions of the inference runtimes, and whether TensorRT can run here."""
    import onnxruntime as ort

    from leukedge.runtime.backends.gpu import trt_available

    out: dict[str, Any] = {
        "onnxruntime": {"version": ort.__version__, "providers": ort.get_available_providers()},
        "torch": None,
    }
    from leukedge.bench.torch_backend import torch_unavailable_reason

    if torch_unavailable_reason() is None:
        import torch

        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda}
    ok, detail = trt_available()
    version = None
    try:
        from leukedge.runtime.backends.trt import import_tensorrt

        version = import_tensorrt().__version__
    except BackendError:
        pass
    out["tensorrt"] = {"version": version, "available": ok, "detail": detail}
    return out


@dataclass(frozen=True)
class BenchInputs:
    """What the bench measured on: the run, the images of its split, the machine."""

    run: RunDir
    spec: ModelSpec
    split: str
    root: str
    images: ImageSet
    machine: dict[str, Any]


@dataclass(frozen=True)
class BenchSettings:
    """How the bench measured, as checked: the report's ``settings``."""

    backends: list[str]
    batch_sizes: list[int]
    warmup: int
    stop_rule: StopRule
    budgets: Budgets
    threads: int | None
    torch_device: str
    omp_policy: str | None  # OMP_WAIT_POLICY in effect for PyTorch's idle threads

    def to_dict(self) -> dict[str, Any]:
        return {
            "backends": list(self.backends),
            "batch_sizes": list(self.batch_sizes),
            "warmup": self.warmup,
            "stop_rule": self.stop_rule.to_dict(),
            "parity_batch": PARITY_BATCH,
            "budgets": self.budgets.to_dict(),
            "threads": self.threads,
            "torch_device": self.torch_device,
            "idle_threads": {"onnxruntime_spinning": False, "OMP_WAIT_POLICY": self.omp_policy},
        }


def assemble(
    inputs: BenchInputs,
    settings: BenchSettings,
    state: _State,
    rows: dict[str, dict[str, Any]],
    pre: dict[str, Any],
) -> dict[str, Any]:
    """report.json's content from the measured rows (``pre``: per-image preprocessing cost)."""
    run, spec, images = inputs.run, inputs.spec, inputs.images
    counts = np.bincount(images.labels, minlength=spec.num_classes)
    failed = [n for n, r in rows.items() if r["budget"]["status"] == "fail"]
    ref_row = rows[state.reference]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "path": str(run.path),
            "name": run.path.resolve().name,
            "arch": spec.arch,
            "input_size": spec.input_size,
            "classes": list(spec.classes),
            "positive_class": spec.positive_class,
        },
        "data": {
            "root": inputs.root,
            "split": inputs.split,
            "images": len(images),
            "class_counts": {c: int(n) for c, n in zip(spec.classes, counts, strict=True)},
            "unreadable": [{"path": p, "reason": r} for p, r in images.skipped],
        },
        "reference": {
            "backend": state.reference,
            "device": ref_row["device"],
            "reason": state.reference_reason,
            "speed_baseline": state.speed_baseline,
        },
        "settings": settings.to_dict(),
        "machine": inputs.machine,
        "runtimes": runtimes(),
        "backends": {state.reference: ref_row, **rows},
        "skipped": state.skipped,
        "preprocess": pre,
        "parity_set": state.parity_info,
        "notes": list(state.notes),
        "summary": {
            "budget_passed": not failed,
            "failed": failed,
            "largest_batch": max(settings.batch_sizes),
        },
        "files": list(FILES),
    }
