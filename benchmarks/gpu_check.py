#!/usr/bin/env python3
"""GPU check: run leukedge's CUDA paths once on a machine with an NVIDIA GPU.

Every part skips with a reason when what it needs is missing, and a failing part
is recorded (error + traceback tail) without stopping the next one:

  environment    Python, torch, ONNX Runtime, TensorRT, CUDA bindings, the GPU
  cuda_binding   leukedge's CUDA adapter: device info, pinned and device buffers,
                 async copies, event timing
  train_amp      AMP training steps (fp16 autocast + GradScaler) per model on CUDA
  onnx_models    the ONNX files the next parts run: a run dir's export/ (--run), or
                 exported here from untrained models (fp32, fp16 with fp32 I/O, INT8 QDQ)
  ort_cuda       ONNX Runtime CUDA EP against ONNX Runtime CPU: parity and latency
  tensorrt       strongly typed engine build, cache hit, TrtBackend against ONNX
                 Runtime CPU (parity), latency with CUDA events, mismatch refusal

    python benchmarks/gpu_check.py [--out DIR] [--run runs/NAME] [--models cnn,resnet50]
                                   [--size 224] [--quick]

The figures go to DIR/gpu_check.json (DIR: --out, else $OUT, else
benchmarks/results), rewritten after every part so a cut-off run keeps what it did.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a bare checkout
    sys.path.insert(0, str(REPO))

MODELS = ("cnn", "resnet50", "vit-hybrid")
INT8_MODELS = ("cnn", "resnet50")  # ViT hybrids need the export module's INT8 exclusions


class Skip(Exception):
    """A part whose requirement is missing here; the message says which."""


# ---------------------------------------------------------------- small helpers


def percentiles(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "n": len(times_ms),
    }


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def parity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    agree = np.mean(reference.argmax(axis=1) == other.argmax(axis=1))
    return {
        "top1_agreement": round(float(agree), 6),
        "max_abs_dlogit": float(diff.max()),
        "mean_abs_dlogit": float(diff.mean()),
        "n": int(len(reference)),
    }


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Preprocessed-looking inputs: uniform pixels through ImageNet mean/std."""
    from leukedge.spec import IMAGENET_MEAN, IMAGENET_STD

    x = np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def error_text(e: BaseException) -> dict[str, str]:
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:]
    return {"error": f"{type(e).__name__}: {e}", "traceback": tail}


class Report:
    """The JSON report, written after every part."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "parts": {},
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
        self.data["parts"][name] = result
        self.save()
        note = result.get("reason") or result.get("error") or ""
        print(f"[{result['status']:>7}] {name} ({result['seconds']} s) {note}", flush=True)
        return result

    def save(self) -> None:
        from leukedge.io import atomic_write_json

        self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path, self.data)


# ---------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    import leukedge

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "leukedge": leukedge.__version__,
        "numpy": np.__version__,
        "packages": {
            d: version_of(d)
            for d in (
                "torch",
                "timm",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "tensorrt",
                "cuda-python",
                "cuda-bindings",
                "pycuda",
            )
        },
        "nvidia_smi": nvidia_smi(),
    }
    env["torch_cuda"] = torch_cuda_info()
    env["onnxruntime_providers"] = ort_providers()
    try:
        from leukedge.runtime.backends.gpu import gpu_info, trt_available

        gpu = gpu_info()
        env["gpu"] = None if gpu is None else gpu.__dict__
        ok, reason = trt_available()
        env["tensorrt"] = {"available": ok, "reason": reason}
    except Exception as e:
        env["tensorrt"] = {"available": False, **error_text(e)}
    return env


def nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "name,compute_cap,driver_version,memory.total,power.limit"
    cmd = [exe, f"--query-gpu={query}", "--format=csv,noheader"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"


def torch_cuda_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda}
    info["available"] = torch.cuda.is_available()
    if info["available"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["cudnn"] = torch.backends.cudnn.version()
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def ort_providers() -> list[str] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


# ---------------------------------------------------------------- CUDA adapter


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
        half = n // 2
        api.memcpy_dtoh_async(dst[:half], dev, stream)  # a partial view, as batches use
        api.stream_synchronize(stream)
        return {
            "device": info.__dict__,
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


# ---------------------------------------------------------------- training with AMP


def train_amp(models: list[str], size: int, batch: int, steps: int) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise Skip("torch is not installed (pip install 'leukedge[train]')") from e
    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        raise Skip(f"torch {torch.__version__} sees no CUDA device (built for CUDA {cuda})")
    out: dict[str, Any] = {"batch": batch, "size": size, "amp_dtype": "float16", "models": {}}
    for arch in models:
        try:
            out["models"][arch] = amp_steps(arch, size, batch, steps)
        except Exception as e:
            out["models"][arch] = {"status": "failed", **error_text(e)}
        finally:
            torch.cuda.empty_cache()
    return out


def amp_steps(arch: str, size: int, batch: int, steps: int) -> dict[str, Any]:
    """Optimizer steps under fp16 autocast with a GradScaler, as the training loop does on CUDA."""
    import torch
    import torch.nn.functional as F

    from leukedge.train.models import build_model, count_parameters

    torch.manual_seed(0)
    model = build_model(arch, 2, size).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.randint(0, 2, (batch,), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for i in range(steps + 2):  # the first two steps warm up cuDNN and the allocator
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end))
        losses.append(float(loss))
    result = {
        "status": "ok",
        "parameters": count_parameters(model),
        "step": percentiles(times),
        "images_per_s": round(batch / (float(np.median(times)) / 1e3), 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "losses_finite": bool(np.all(np.isfinite(losses))),
        "grad_scale": float(scaler.get_scale()),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }
    del model, opt
    return result


# ---------------------------------------------------------------- ONNX files


def onnx_models(
    run: str | None, models: list[str], size: int, work: Path, quick: bool
) -> dict[str, Any]:
    if run:
        files = sorted((Path(run) / "export").glob("model.*.onnx"))
        if not files:
            raise Skip(f"{run}/export has no model.*.onnx")
        return {"source": run, "files": [{"path": str(p), "arch": "run"} for p in files]}
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise Skip("torch is not installed and no --run was given") from e
    files: list[dict[str, Any]] = []
    errors: dict[str, Any] = {}
    for arch in models:
        run_dir = work / arch
        try:
            fp32 = export_fp32(arch, size, run_dir)
            files.append({"path": str(fp32), "arch": arch})
        except Exception as e:
            errors[f"{arch}/fp32"] = error_text(e)
            continue
        for precision, convert in (("fp16", to_fp16), ("int8", to_int8)):
            if precision == "int8" and (quick or arch not in INT8_MODELS):
                continue
            try:
                path = convert(fp32, run_dir / "export" / f"model.{precision}.onnx", size)
                files.append({"path": str(path), "arch": arch})
            except Exception as e:
                errors[f"{arch}/{precision}"] = error_text(e)
    if not files:
        raise RuntimeError(f"no ONNX file could be made: {json.dumps(errors)[:2000]}")
    return {"source": "exported here from untrained models", "files": files, "errors": errors}


def export_fp32(arch: str, size: int, run_dir: Path) -> Path:
    """An untrained model as ``run_dir/export/model.fp32.onnx`` with its ModelSpec embedded."""
    import torch

    from leukedge.spec import ModelSpec
    from leukedge.train.models import build_model, timm_name

    spec = ModelSpec(arch=arch, backbone=timm_name(arch), input_size=size)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.save(run_dir / "spec.json")
    model = build_model(arch, spec.num_classes, size).eval()
    x = torch.zeros(1, 3, size, size)
    path = run_dir / "export" / "model.fp32.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    except Exception:  # the TorchScript exporter is gone: use torch.export
        batch = torch.export.Dim("N", min=1, max=256)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
    embed_spec(path, spec)
    return path


def embed_spec(path: Path, spec: Any) -> None:
    import onnx

    from leukedge.io import atomic_path
    from leukedge.spec import ONNX_METADATA_KEY

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: spec.to_json()})
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def to_fp16(fp32: Path, out: Path, size: int) -> Path:
    """FP16 weights and compute, fp32 inputs and outputs (ONNX Runtime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from leukedge.io import atomic_path

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def to_int8(fp32: Path, out: Path, size: int) -> Path:
    """INT8 Q/DQ, per-channel weights, MinMax calibration on 16 synthetic images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from leukedge.io import atomic_path

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": images(4, size, seed=s)} for s in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with atomic_path(out) as tmp:
        quantize_static(
            str(fp32),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out


def onnx_paths(onnx_part: dict[str, Any]) -> list[Path]:
    if onnx_part.get("status") != "ok":
        raise Skip(
            f"no ONNX files (onnx_models: {onnx_part.get('reason') or onnx_part.get('error')})"
        )
    return [Path(f["path"]) for f in onnx_part["files"]]


# ---------------------------------------------------------------- ONNX Runtime CUDA EP


def ort_cuda(onnx_part: dict[str, Any], size: int, quick: bool) -> dict[str, Any]:
    paths = onnx_paths(onnx_part)
    providers = ort_providers() or []
    if "CUDAExecutionProvider" not in providers:
        raise Skip(
            f"onnxruntime has no CUDAExecutionProvider (has {providers}); install onnxruntime-gpu"
        )
    from leukedge.runtime.backends.ort import OrtBackend

    out: dict[str, Any] = {}
    for path in paths:
        key = f"{path.parent.parent.name}/{path.name}"
        try:
            out[key] = ort_cuda_one(OrtBackend, path, quick)
        except Exception as e:
            out[key] = {"status": "failed", **error_text(e)}
    return {"models": out}


def ort_cuda_one(OrtBackend: Any, path: Path, quick: bool) -> dict[str, Any]:
    gpu, cpu = OrtBackend(path, device="cuda"), OrtBackend(path, device="cpu")
    x = images(16 if quick else 64, gpu.spec.input_size)
    result = {"status": "ok", "provider": gpu.provider}
    result["parity_vs_ort_cpu"] = parity(cpu.infer(x), gpu.infer(x))
    one, big = x[:1], x[:32]
    result["batch1"] = percentiles(time_calls(lambda: gpu.infer(one), 50 if quick else 200))
    t = time_calls(lambda: gpu.infer(big), 10 if quick else 30)
    result["batch32_images_per_s"] = round(32 / (float(np.median(t)) / 1e3), 1)
    gpu.close()
    cpu.close()
    return result


# ---------------------------------------------------------------- TensorRT


def tensorrt(onnx_part: dict[str, Any], work: Path, quick: bool) -> dict[str, Any]:
    from leukedge.runtime.backends.gpu import trt_available

    ok, reason = trt_available()
    if not ok:
        raise Skip(reason)
    paths = onnx_paths(onnx_part)
    out: dict[str, Any] = {"target": reason, "models": {}}
    first_engine = None
    for path in paths:
        key = f"{path.parent.parent.name}/{path.name}"
        try:
            out["models"][key], engine = trt_one(path, work / "engines", quick)
            first_engine = first_engine or engine
        except Exception as e:
            out["models"][key] = {"status": "failed", **error_text(e)}
    if first_engine is not None:
        out["mismatch_refusal"] = mismatch_refusal(first_engine, work / "mismatch")
    return out


def trt_one(path: Path, engines: Path, quick: bool) -> tuple[dict[str, Any], Path]:
    from leukedge.export.tensorrt import build_engine
    from leukedge.runtime.backends.ort import OrtBackend
    from leukedge.runtime.backends.trt import TrtBackend

    log: list[str] = []
    t0 = time.perf_counter()
    built = build_engine(path, out_dir=engines, max_batch=32, log=log.append)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = build_engine(path, out_dir=engines, max_batch=32, log=log.append)
    result: dict[str, Any] = {
        "status": "ok",
        "engine": str(built.engine_path),
        "build_s": round(build_s, 2),
        "engine_mib": round(built.sidecar.engine_bytes / 2**20, 2),
        "cache_hit_on_second_build": again.reused,
        "cache_check_s": round(time.perf_counter() - t0, 3),
        "timing_cache_bytes": built.timing_cache.stat().st_size if built.timing_cache else None,
        "log": log[-6:],
    }
    cpu = OrtBackend(path, device="cpu")
    with TrtBackend(built.engine_path) as trt:
        x = images(16 if quick else 64, trt.spec.input_size)
        reference = np.concatenate([cpu.infer(x[i : i + 32]) for i in range(0, len(x), 32)])
        got = np.concatenate([trt.infer(x[i : i + 32]) for i in range(0, len(x), 32)])
        result["parity_vs_ort_cpu"] = parity(reference, got)
        one, big = x[:1], x[:32]
        device_ms: list[float] = []

        def batch1() -> None:
            trt.infer(one)
            device_ms.append(trt.last_device_ms or 0.0)

        result["batch1_wall"] = percentiles(time_calls(batch1, 50 if quick else 300))
        result["batch1_device"] = percentiles(device_ms[5:])
        t = time_calls(lambda: trt.infer(big), 10 if quick else 50)
        result["batch32_images_per_s"] = round(32 / (float(np.median(t)) / 1e3), 1)
        result["batch32_device_ms"] = round(trt.last_device_ms or 0.0, 4)
    cpu.close()
    return result, built.engine_path


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
    p.add_argument("--run", help="a run dir whose export/model.*.onnx to use instead of exporting")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: cnn,resnet50,vit-hybrid"
    )
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    p.add_argument("--work", help="scratch folder (default: a new temp folder)")
    p.add_argument("--quick", action="store_true", help="cnn only, fewer iterations, no INT8")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = ["cnn"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    scratch = None if args.work else tempfile.mkdtemp(prefix="leukedge-gpu-check-")
    work = Path(args.work or scratch)
    report = Report(out_dir(args.out) / "gpu_check.json", args)
    report.data["work"] = str(work)
    report.run("environment", environment)
    report.run("cuda_binding", cuda_binding)
    report.run("train_amp", train_amp, models, args.size, args.batch, args.steps)
    onnx_part = report.run(
        "onnx_models", onnx_models, args.run, models, args.size, work, args.quick
    )
    report.run("ort_cuda", ort_cuda, onnx_part, args.size, args.quick)
    report.run("tensorrt", tensorrt, onnx_part, work, args.quick)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {report.path}")
    failed = [k for k, v in report.data["parts"].items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
