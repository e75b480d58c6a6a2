#!/usr/bin/env python3
"""GPU check: leukedge's CUDA paths end to end on one NVIDIA GPU, as a user runs them.

Every step calls leukedge itself (the CLI in a subprocess, or the runtime in process),
so what is checked is what ships; nothing here trains, exports or quantizes on its own:

  environment    Python, torch, ONNX Runtime, TensorRT, CUDA bindings, the GPU
  cuda_binding   leukedge's CUDA adapter: pinned/device buffers, async copies, events
  data           `leukedge data synth`: small synthetic cells (seeded)
  per model (cnn, resnet50, vit-hybrid):
    train          `leukedge train --device cuda` (AMP on CUDA), a few epochs
    export         `leukedge export` fp32, fp16, int8 (calibrated on the val split)
    build_engine   `leukedge build-engine` fp16, int8, fp32 (parity on the export's parity
                   set vs PyTorch's recorded logits in each sidecar, timing caches, build logs)
    bench          `leukedge bench --backends torch,ort-*-cuda,trt-* --torch-device cuda`
    trt_backend    TrtBackend at batch 1, plain and replaying a CUDA graph; an engine
                   whose sidecar names another GPU must be refused

    python benchmarks/gpu_check.py [--quick] [--out DIR] [--models cnn,resnet50]
                                   [--size 128] [--budget-s 450] [--work DIR]

The full check fits in 8 minutes on one data-centre GPU, --quick (the CNN only, at
64 px) in 3: each step gets what is left of the time budget and later steps are
skipped, with the reason, when it runs out. The figures go to DIR/gpu_check.json
(DIR: --out, else $OUT, else benchmarks/results), rewritten after every step, with
each bench report.json beside it. Without an NVIDIA GPU it stops at once (exit 2).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a bare checkout
    sys.path.insert(0, str(REPO))

MODELS = ("cnn", "resnet50", "vit-hybrid")
ENGINE_PRECISIONS = "fp16,int8,fp32"
BENCH_BACKENDS = (
    "torch",
    "ort-fp32-cuda",
    "ort-fp16-cuda",
    "ort-int8-cuda",
    "trt-fp16",
    "trt-int8",
    "trt-fp32",
)
NO_GPU_EXIT = 2


class Skip(Exception):
    """A step whose requirement is missing here (or the time ran out); the message says which."""


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What a run does: models, sizes and the time each kind of step may take."""

    models: tuple[str, ...]
    size: int
    cells: int
    epochs: int
    batch: int
    budget_s: float
    bench_limit: int
    bench_max_time: float
    batch_sizes: str
    graph_iters: int


def make_plan(
    quick: bool,
    models: str | None = None,
    size: int | None = None,
    budget_s: float | None = None,
) -> Plan:
    """--quick: the CNN at 64 px in 3 minutes; else the three models at 128 px in 8."""
    base = (
        Plan(("cnn",), 64, 240, 1, 32, 170.0, 64, 0.3, "1,8", 100)
        if quick
        else Plan(MODELS, 128, 480, 2, 32, 450.0, 192, 0.8, "1,8,32", 300)
    )
    chosen = tuple(m.strip() for m in models.split(",") if m.strip()) if models else base.models
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    if size is not None and (size < 32 or size % 32):
        raise ValueError(f"--size must be a multiple of 32 (the ViT hybrid's patch), got {size}")
    return Plan(
        models=chosen,
        size=size or base.size,
        cells=base.cells,
        epochs=base.epochs,
        batch=base.batch,
        budget_s=float(budget_s or base.budget_s),
        bench_limit=base.bench_limit,
        bench_max_time=base.bench_max_time,
        batch_sizes=base.batch_sizes,
        graph_iters=base.graph_iters,
    )


class Clock:
    """The time budget: each step may use what is left, less a reserve for the report."""

    def __init__(self, budget_s: float, reserve_s: float = 5.0) -> None:
        self.budget_s, self.reserve_s = budget_s, reserve_s
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.reserve_s - self.elapsed()

    def allow(self, step: str, needs_s: float) -> float:
        """Seconds ``step`` may run; :class:`Skip` when fewer than ``needs_s`` are left."""
        left = self.left()
        if left < needs_s:
            raise Skip(
                f"time budget: {left:.0f} s left of {self.budget_s:.0f} s, {step} needs ~{needs_s:.0f} s"
            )
        return left


# ---------------------------------------------------------------- commands


def leukedge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "leukedge", *args]


def synth_cmd(plan: Plan, out: Path) -> list[str]:
    return leukedge_cmd(
        "data", "synth", str(out), "--n", str(plan.cells), "--frames", "0", "--cell-size", "96"
    )


def train_cmd(plan: Plan, arch: str, data: Path, run: Path) -> list[str]:
    return leukedge_cmd(
        "train",
        "--model",
        arch,
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        str(plan.epochs),
        "--batch-size",
        str(plan.batch),
        "--img-size",
        str(plan.size),
        "--device",
        "cuda",
        "--workers",
        "2",
    )


def export_cmd(run: Path) -> list[str]:
    return leukedge_cmd("export", str(run), "--precision", "fp32,fp16,int8")


def build_cmd(run: Path) -> list[str]:
    return leukedge_cmd("build-engine", str(run), "--precision", ENGINE_PRECISIONS)


def bench_cmd(plan: Plan, run: Path, out: Path) -> list[str]:
    return leukedge_cmd(
        "bench",
        str(run),
        "--backends",
        ",".join(BENCH_BACKENDS),
        "--torch-device",
        "cuda",
        "--split",
        "test",
        "--batch-sizes",
        plan.batch_sizes,
        "--limit",
        str(plan.bench_limit),
        "--max-time",
        str(plan.bench_max_time),
        "--out",
        str(out),
    )


def run_cmd(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run one leukedge command; its exit status, time and the end of its output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(1.0, timeout_s), env=env, cwd=REPO
        )
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = -9
        out = f"{_text(e.stdout)}{_text(e.stderr)}\n(killed after {timeout_s:.0f} s: time budget)"
    return {
        "cmd": " ".join(cmd[2:]),
        "rc": rc,
        "seconds": round(time.perf_counter() - t0, 2),
        "output_tail": out[-2500:],
    }


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def checked(result: dict[str, Any], what: str) -> dict[str, Any]:
    """A command's result, or an error carrying its output when it failed."""
    if result["rc"] != 0:
        raise RuntimeError(f"{what} exited {result['rc']}: {result['output_tail'][-1200:]}")
    return result


# ---------------------------------------------------------------- reading what leukedge wrote


def engine_summaries(run: Path) -> dict[str, Any]:
    """Each engine's build time, size and parity from its sidecar."""
    out = {}
    for side in sorted(run.glob("engines/*/model.*.engine.json")):
        data = json.loads(side.read_text())
        parity = data.get("parity") or {}
        verdict = (parity.get("verdict") or {}).get("status")
        out[side.name.removesuffix(".engine.json")] = {
            "target": side.parent.name,
            "build_s": data.get("build_seconds"),
            "engine_mib": round(data.get("engine_bytes", 0) / 2**20, 2),
            "tf32": (data.get("build_flags") or {}).get("tf32"),
            "parity_vs_ort": None
            if not parity.get("measured")
            else {
                "agreement": parity.get("agreement"),
                "max_abs_diff": parity.get("max_abs_diff"),
                "budget": verdict,
            },
            "parity_reference": parity.get("reference"),
            "parity_note": None if parity.get("measured") else parity.get("reason"),
            "warnings": data.get("warnings") or [],
        }
    return out


def bench_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per backend: parity against the reference, budget, batch-1 latency, best throughput."""
    rows = {}
    for name, row in (report.get("backends") or {}).items():
        latency = row.get("latency") or {}
        one = latency.get("1") or {}
        best = max(
            (e.get("images_per_s") or 0.0 for e in latency.values() if isinstance(e, dict)),
            default=None,
        )
        parity = row.get("parity") or {}
        rows[name] = {
            "device": row.get("device"),
            "agreement": parity.get("agreement"),
            "max_abs_diff": parity.get("max_abs_diff"),
            "budget": (row.get("budget") or {}).get("status"),
            "batch1_host_p50_ms": (one.get("host_ms") or {}).get("p50"),
            "batch1_device_p50_ms": (one.get("device_ms") or {}).get("p50"),
            "best_images_per_s": round(best, 1) if best else None,
        }
    skipped = {s.get("name"): s.get("reason") for s in report.get("skipped") or []}
    return {
        "reference": (report.get("reference") or {}).get("backend"),
        "rows": rows,
        "skipped": skipped,
    }


def percentiles(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "n": len(times_ms),
    }


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def error_text(e: BaseException) -> dict[str, str]:
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:]
    return {"error": f"{type(e).__name__}: {e}", "traceback": tail}


def gpu_present() -> tuple[bool, str]:
    """An NVIDIA GPU with its driver here? Asks nvidia-smi (or the Jetson's release file);
    imports neither torch nor a CUDA binding, so a machine without one is told at once."""
    from leukedge.machine import jetson_info, nvidia_gpus

    gpus = nvidia_gpus()
    if gpus:
        return True, ", ".join(f"{g.get('name')} (sm {g.get('compute_cap') or '?'})" for g in gpus)
    if jetson_info():
        return True, "Jetson"
    if shutil.which("nvidia-smi") is None:
        return False, "nvidia-smi is not installed and this is no Jetson"
    return False, "nvidia-smi lists no GPU (is the driver loaded?)"


# ---------------------------------------------------------------- the report


class Report:
    """The JSON report, written after every step."""

    def __init__(self, path: Path, args: argparse.Namespace, plan: Plan, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.data: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "plan": asdict(plan),
            "steps": {},
        }

    def run(self, name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            result = {"status": "ok", **fn(*args)}
        except Skip as e:
            result = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            result = {"status": "failed", **error_text(e)}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["steps"][name] = result
        self.save()
        note = result.get("reason") or result.get("error") or ""
        print(f"[{result['status']:>7}] {name} ({result['seconds']} s) {note[:300]}", flush=True)
        return result

    def save(self) -> None:
        from leukedge.io import atomic_write_json

        self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.data["elapsed_s"] = round(self.clock.elapsed(), 1)
        atomic_write_json(self.path, self.data)


# ---------------------------------------------------------------- steps


def environment() -> dict[str, Any]:
    import leukedge

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "leukedge": leukedge.__version__,
        "packages": {
            d: version_of(d)
            for d in (
                "torch",
                "timm",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "tensorrt",
                "tensorrt-cu12",
                "tensorrt-cu13",
                "cuda-python",
                "cuda-bindings",
                "pycuda",
            )
        },
    }
    from leukedge.machine import nvidia_gpus

    env["nvidia_smi"] = nvidia_gpus()
    try:
        import torch

        env["torch_cuda"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "available": torch.cuda.is_available(),
        }
    except ImportError:
        env["torch_cuda"] = None
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        env["onnxruntime_providers"] = None
    from leukedge.runtime.backends.gpu import gpu_info, trt_available

    gpu = gpu_info()
    env["gpu"] = None if gpu is None else asdict(gpu)
    ok, reason = trt_available()
    env["tensorrt"] = {"available": ok, "reason": reason}
    return env


def cuda_binding() -> dict[str, Any]:
    from leukedge.runtime.backends.cuda_mem import CudaUnavailable, open_cuda

    try:
        api = open_cuda(0)
    except CudaUnavailable as e:
        raise Skip(str(e)) from e
    try:
        return {"library": api.library, **exercise_cuda(api)}
    finally:
        api.close()


def exercise_cuda(api: Any) -> dict[str, Any]:
    """Round-trip 64 MiB through pinned host and device memory; time the copies with events."""
    info = api.device_info()
    n = 16 << 20
    src = api.host_empty(n, np.float32)
    dst = api.host_empty(n, np.float32)
    src[:] = np.arange(n, dtype=np.float32)
    dst[:] = 0
    dev = api.malloc(src.nbytes)
    stream = api.stream_create()
    start, end = api.event_create(), api.event_create()
    try:
        api.event_record(start, stream)
        api.memcpy_htod_async(dev, src, stream)
        api.memcpy_dtoh_async(dst, dev, stream)
        api.event_record(end, stream)
        api.stream_synchronize(stream)
        ms = api.event_elapsed_ms(start, end)
        return {
            "device": asdict(info),
            "roundtrip_ok": bool(np.array_equal(src, dst)),
            "roundtrip_ms_64MiB_each_way": round(ms, 3),
            "h2d_d2h_GBps": round(2 * src.nbytes / (ms * 1e-3) / 1e9, 2),
        }
    finally:
        api.free(dev)
        api.host_free(src)
        api.host_free(dst)
        api.event_destroy(start)
        api.event_destroy(end)
        api.stream_destroy(stream)


def make_data(plan: Plan, clock: Clock, work: Path) -> dict[str, Any]:
    out = work / "synth"
    result = checked(run_cmd(synth_cmd(plan, out), clock.allow("data", 5)), "data synth")
    return {**result, "data": str(out / "cells")}


def train(plan: Plan, clock: Clock, arch: str, data: Path, run: Path) -> dict[str, Any]:
    result = checked(run_cmd(train_cmd(plan, arch, data, run), clock.allow("train", 20)), "train")
    config = json.loads((run / "config.json").read_text())
    metrics = (
        json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    )
    return {
        **result,
        "device": config.get("device"),
        "amp": config.get("amp"),
        "test_accuracy": (metrics.get("test") or {}).get("accuracy"),
    }


def export(clock: Clock, run: Path) -> dict[str, Any]:
    result = checked(run_cmd(export_cmd(run), clock.allow("export", 20)), "export")
    record = json.loads((run / "export" / "export.json").read_text())
    files = {
        p: {
            "mb": round(e.get("size_bytes", 0) / 1e6, 2),
            "parity_vs_torch": (e.get("parity") or {}).get("agreement"),
        }
        for p, e in (record.get("files") or {}).items()
    }
    return {**result, "files": files, "warnings": record.get("warnings", [])}


def build_engines(clock: Clock, run: Path) -> dict[str, Any]:
    from leukedge.runtime.backends.gpu import trt_available

    ok, why = trt_available()
    if not ok:
        raise Skip(why)
    result = run_cmd(build_cmd(run), clock.allow("build-engine", 30))
    engines = engine_summaries(run)
    if result["rc"] != 0 and not engines:
        raise RuntimeError(f"build-engine exited {result['rc']}: {result['output_tail'][-1200:]}")
    return {**result, "engines": engines}


def bench(plan: Plan, clock: Clock, run: Path, out: Path) -> dict[str, Any]:
    folder = out / "bench" / run.name
    result = run_cmd(bench_cmd(plan, run, folder), clock.allow("bench", 20))
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise RuntimeError(
            f"bench exited {result['rc']} without a report: {result['output_tail'][-1200:]}"
        )
    return {
        **result,
        "report": str(report_path),
        **bench_summary(json.loads(report_path.read_text())),
    }


def trt_backend(plan: Plan, clock: Clock, run: Path, work: Path) -> dict[str, Any]:
    """Batch-1 latency plain and with a CUDA graph (same outputs); a mismatched engine refused."""
    from leukedge.runtime.backends.gpu import trt_available
    from leukedge.runtime.backends.trt import TrtBackend, find_engine

    ok, why = trt_available()
    if not ok:
        raise Skip(why)
    clock.allow("trt_backend", 10)
    engine = find_engine(run, "fp16")
    x = np.random.default_rng(0).normal(size=(1, 3, plan.size, plan.size)).astype(np.float32)
    out: dict[str, Any] = {"engine": str(engine)}
    outputs = {}
    for graph in (False, True):
        with TrtBackend(engine, cuda_graph=graph) as backend:
            for _ in range(10):
                backend.infer(x)
            host, device = [], []
            for _ in range(plan.graph_iters):
                t0 = time.perf_counter()
                outputs[graph] = backend.infer(x)
                host.append((time.perf_counter() - t0) * 1e3)
                device.append(backend.last_device_ms or 0.0)
            key = "cuda_graph" if graph else "plain"
            out[key] = {"host": percentiles(host), "device": percentiles(device)}
            if graph:
                out[key]["error"] = backend.cuda_graph_error
    out["graph_matches_plain"] = bool(np.allclose(outputs[True], outputs[False], atol=1e-3))
    out["mismatch_refusal"] = mismatch_refusal(engine, work / "mismatch")
    return out


def mismatch_refusal(engine: Path, folder: Path) -> dict[str, Any]:
    """A copy of a real engine whose sidecar claims another GPU must be refused, clearly."""
    from leukedge.runtime.backends.engine_plan import (
        EngineMismatch,
        EngineSidecar,
        sidecar_path_for,
    )
    from leukedge.runtime.backends.trt import TrtBackend

    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / engine.name
    shutil.copyfile(engine, copy)
    sidecar = EngineSidecar.load(sidecar_path_for(engine))
    sidecar.gpu_name = f"not {sidecar.gpu_name}"
    sidecar.save(sidecar_path_for(copy))
    try:
        TrtBackend(copy).close()
    except EngineMismatch as e:
        return {"refused": True, "message": str(e)}
    return {"refused": False, "message": "a mismatched engine was loaded"}


# ---------------------------------------------------------------- main


def out_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return REPO / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", help="folder for gpu_check.json (default: $OUT, else benchmarks/results)"
    )
    p.add_argument(
        "--models", help=f"comma list of {', '.join(MODELS)} (default: all; --quick: cnn)"
    )
    p.add_argument("--size", type=int, help="input size in pixels (default 128; --quick: 64)")
    p.add_argument("--budget-s", type=float, help="time budget in s (default 450; --quick: 170)")
    p.add_argument("--work", help="scratch folder (default: a new temp folder, removed after)")
    p.add_argument("--quick", action="store_true", help="the CNN only, at 64 px, in ~3 minutes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = make_plan(args.quick, args.models, args.size, args.budget_s)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    ok, why = gpu_present()
    if not ok:
        print(
            f"gpu_check: no CUDA GPU: {why}. It runs leukedge's CUDA paths (AMP training, "
            "ONNX Runtime CUDA, TensorRT engines) and needs an NVIDIA GPU with its driver.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT
    clock = Clock(plan.budget_s)
    scratch = None if args.work else tempfile.mkdtemp(prefix="leukedge-gpu-check-")
    work = Path(args.work or scratch)
    out = out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "gpu_check.json", args, plan, clock)
    report.data.update(work=str(work), gpu=why)
    report.run("environment", environment)
    report.run("cuda_binding", cuda_binding)
    data = report.run("data", make_data, plan, clock, work)
    for arch in plan.models:
        run = work / "runs" / arch
        if data["status"] != "ok":
            break
        trained = report.run(f"{arch}/train", train, plan, clock, arch, Path(data["data"]), run)
        if trained["status"] != "ok":
            continue
        exported = report.run(f"{arch}/export", export, clock, run)
        if exported["status"] != "ok":
            continue
        report.run(f"{arch}/build_engine", build_engines, clock, run)
        report.run(f"{arch}/bench", bench, plan, clock, run, out)
        report.run(f"{arch}/trt_backend", trt_backend, plan, clock, run, work)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {report.path} ({clock.elapsed():.0f} s)")
    failed = [k for k, v in report.data["steps"].items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
