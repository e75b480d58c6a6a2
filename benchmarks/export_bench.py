"""Export benchmark: file sizes, export time, parity and CPU latency of each run's ONNX files.

For every run dir given: ``leukedge.export.export_run`` (or the files already in
``RUN/export`` with ``--reuse``), parity of FP32/FP16/INT8 ONNX against PyTorch on the
run's *test* split (agreement, max/mean |Δlogit|, accuracy change; INT8 also as exact
Q/DQ arithmetic) and whether TensorRT's ONNX parser takes each file (the export's own
check, :mod:`leukedge.export.trt_compat`), and batch-1 CPU latency of PyTorch eager, ONNX Runtime FP32 and ONNX
Runtime INT8 measured side by side: one warm-up phase, then every iteration runs each
backend once in rotating order on the same image, so a load spike on a shared machine
hits all three alike. Medians of many iterations; torch and ONNX Runtime get the same
thread count, and neither spins its idle threads (ONNX Runtime's
``allow_spinning=0``, ``OMP_WAIT_POLICY=PASSIVE`` for torch): spinning threads of one
would steal the cores of the other in an interleaved run.

    python benchmarks/export_bench.py runs/allidb2-cnn runs/allidb2-resnet50 \\
        --iterations 200 --threads 2

Writes ``benchmarks/results/export.json`` and ``export.md`` (with the machine).
``--baseline OLD/export.json`` puts the INT8 figures of an earlier run of this script
(say, the same checkpoints exported by an earlier leukedge) beside the new ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP

from leukedge.artifacts import PRECISIONS, read_export_record  # noqa: E402
from leukedge.data.arrays import load_image_set  # noqa: E402
from leukedge.export.parity import (  # noqa: E402
    compare,
    onnx_logits,
    reference_logits,
    torch_logits,
)
from leukedge.export.pipeline import export_run  # noqa: E402
from leukedge.io import atomic_write_json, atomic_write_text, sha256_file  # noqa: E402
from leukedge.machine import describe_machine, markdown_machine  # noqa: E402
from leukedge.rundir import RunDir  # noqa: E402
from leukedge.train.models import load_run_model  # noqa: E402

LATENCY_BACKENDS = ("torch", "ort-fp32", "ort-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (leukedge train output)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--split", default="test", help="split for parity (default: test)")
    p.add_argument("--data", type=Path, default=None, help="the runs' data folder if it moved")
    p.add_argument("--calib-method", default="minmax")
    p.add_argument("--calib-size", type=int, default=None)
    p.add_argument("--reuse", action="store_true", help="use RUN/export files when present")
    p.add_argument("--iterations", type=int, default=200, help="timed iterations per backend")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier export.json of this script: its INT8 figures side by side",
    )
    p.add_argument("--baseline-label", default="baseline", help="what the baseline was")
    return p.parse_args(argv)


# --- machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the latency figures depend on, the shared-machine load included."""
    info = describe_machine()
    info["load_average_at_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info


# --- parity ----------------------------------------------------------------------------


def ensure_export(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """export.json of the run: existing (``--reuse``, same checkpoint) or made now."""
    record = read_export_record(run)
    if args.reuse and record:
        same = record.get("checkpoint_sha256") == sha256_file(run / "checkpoint.pt")
        if same and set(PRECISIONS) <= set(record.get("files", {})):
            return record
    return export_run(
        run, calib_method=args.calib_method, calib_size=args.calib_size, data=args.data
    )


def split_parity(run: Path, record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Each ONNX file against PyTorch on ``args.split``."""
    rd = RunDir(run)
    spec = rd.spec()
    dataset, split = rd.dataset_and_split(args.data)
    images = load_image_set(split.records(dataset, args.split), spec)
    if not len(images):
        return {"split": args.split, "n": 0, "files": {}}
    model = load_run_model(rd)
    ref = torch_logits(model, images.x)
    out: dict[str, Any] = {"split": args.split, "n": len(images), "files": {}}
    for precision in record["files"]:
        path = run / "export" / record["files"][precision]["file"]
        entry = {"ort_cpu": compare(ref, onnx_logits(path, images.x, spec), images.labels, spec)}
        if precision == "int8":
            exact = reference_logits(path, images.x)
            entry["qdq_reference"] = compare(ref, exact, images.labels, spec)
        out["files"][precision] = entry
    return out


# --- latency ---------------------------------------------------------------------------


def latency(run: Path, record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Batch-1 latency of torch eager, ORT FP32 and ORT INT8, interleaved."""
    import torch

    torch.set_num_threads(args.threads)
    rd = RunDir(run)
    spec = rd.spec()
    model = load_run_model(rd)
    files = record["files"]
    fp32 = ort_runner(run / "export" / files["fp32"]["file"], args.threads)
    int8 = ort_runner(run / "export" / files["int8"]["file"], args.threads)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((8, 1, *spec.input_shape)).astype(np.float32)

    def torch_call(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    calls: dict[str, Callable[[np.ndarray], Any]] = {
        "torch": torch_call,
        "ort-fp32": fp32,
        "ort-int8": int8,
    }
    for _ in range(args.warmup):
        for call in calls.values():
            call(pool[0])
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(args.iterations):
        x = pool[i % len(pool)]
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            calls[name](x)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {
        "batch": 1,
        "threads": args.threads,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "ms": {name: summarize(t) for name, t in times.items()},
    }


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    """An ONNX Runtime session as the runtime backend opens it, minus idle-thread spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def summarize(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "stdev": float(statistics.pstdev(ms)),
    }


# --- report ----------------------------------------------------------------------------


TRAINING_KEYS = ("model", "img_size", "epochs", "batch_size", "lr", "patience", "seed")


def training(run: Path) -> dict[str, Any]:
    """The training settings the figures belong to, and how far training went."""
    rd = RunDir(run)
    config = rd.config() if rd.config_path.is_file() else {}
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return {
        **{k: config.get(k) for k in TRAINING_KEYS},
        "epochs_run": metrics.get("epochs_run"),
        "best_epoch": metrics.get("best_epoch"),
        "split_unit": metrics.get("split_unit") or config.get("split"),
    }


def bench_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    record = ensure_export(run, args)
    files = record["files"]
    return {
        "run": str(run),
        "arch": record["arch"],
        "input_size": record["input_size"],
        "training": training(run),
        "files": {
            p: {
                "size_bytes": e["size_bytes"],
                "sha256": e["sha256"],
                "seconds": e.get("export_seconds")
                or e.get("convert_seconds")
                or e.get("quantize_seconds"),
                "tensorrt_compatible": e.get("tensorrt_compatible"),
                "tensorrt_issues": e.get("tensorrt_issues"),
            }
            for p, e in files.items()
        },
        "int8_layout": {
            "settings": files["int8"].get("settings"),
            "residual_adds_quantized": files["int8"].get("residual_adds_quantized"),
        },
        "calibration": files["int8"].get("calibration"),
        "export_warnings": record.get("warnings", []),
        "parity": split_parity(run, record, args),
        "latency": latency(run, record, args),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Export benchmark",
        "",
        f"Generated {result['created']} by `benchmarks/export_bench.py`.",
        "",
        markdown_machine(m),
        f"- Load average at start: {m['load_average_at_start']}",
        "",
        "## Runs",
        "",
        "| model | px | epochs (run, best) | batch | lr | seed | split | calibration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        t, cal = r["training"], r.get("calibration") or {}
        lines.append(
            f"| {r['arch']} | {r['input_size']} | {t['epochs']} ({t['epochs_run']}, "
            f"{t['best_epoch']}) | {t['batch_size']} | {t['lr'] or 'default'} | {t['seed']}"
            f" | by {t['split_unit']} | {cal.get('method')} on {cal.get('images')} val images |"
        )
    lines += [
        "",
        "## Files and parity against PyTorch",
        "",
        "| model | px | file | MB | made in s | split n | agreement | max abs Δ | mean abs Δ"
        " | Δ accuracy | TensorRT parses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        par = r["parity"]
        for p, f in r["files"].items():
            rows = par["files"].get(p, {})
            for kind, q in rows.items():
                label = p if kind == "ort_cpu" else f"{p} (Q/DQ exact)"
                lines.append(
                    f"| {r['arch']} | {r['input_size']} | {label} | {f['size_bytes'] / 1e6:.1f}"
                    f" | {f['seconds'] if f['seconds'] is not None else '-'} | {par['n']}"
                    f" | {q['agreement']:.4f} | {q['max_abs_diff']:.3g} | {q['mean_abs_diff']:.3g}"
                    f" | {q.get('accuracy_delta', float('nan')):+.4f} | {_parses(f)} |"
                )
    lines += [
        "",
        *baseline_markdown(result),
        "## CPU latency, batch 1 (ms, median / p90; interleaved, no thread spinning)",
        "",
        "| model | px | threads | " + " | ".join(LATENCY_BACKENDS) + " |",
        "|---|---|---|" + "---|" * len(LATENCY_BACKENDS),
    ]
    for r in result["runs"]:
        lat = r["latency"]
        cells = [f"{lat['ms'][b]['p50']:.2f} / {lat['ms'][b]['p90']:.2f}" for b in LATENCY_BACKENDS]
        lines.append(
            f"| {r['arch']} | {r['input_size']} | {lat['threads']} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "INT8 parity is given twice: as ONNX Runtime runs it on this CPU and as exact Q/DQ"
        " arithmetic (graph optimisations off), which is what TensorRT and VNNI/ARM kernels"
        " compute. The INT8 files are laid out for TensorRT (Q/DQ on the inputs of weighted ops"
        " only, float biases, float logits): ONNX Runtime's QLinearConv needs a Q after each Conv,"
        " so on a CPU it runs the convolutions in float on dequantized values and ort-int8 is no"
        " faster than ort-fp32 there.",
        "",
    ]
    load, cpus = m.get("load_average_at_start"), m.get("cpu_cores") or 1
    if load and load[0] > cpus:
        lines.append(
            f"- The machine was shared while this ran (load average {load[0]:.1f} on {cpus}"
            " logical CPUs): latencies are slow and noisy; compare backends within a row only"
            " (they ran interleaved)."
        )
    for r in result["runs"]:
        layout = r.get("int8_layout") or {}
        if layout.get("residual_adds_quantized"):
            lines.append(
                f"- {r['arch']}: {layout['residual_adds_quantized']} residual Adds with the skip"
                " input quantized for Conv+Add fusion."
            )
    return "\n".join(lines) + "\n"


def baseline_int8(path: Path, label: str) -> dict[str, Any]:
    """The INT8 parity and latency of an earlier result file, by model."""
    data = json.loads(path.read_text())
    return {
        "label": label,
        "created": data.get("created"),
        "runs": {
            r["arch"]: {
                "input_size": r["input_size"],
                "int8": r["parity"]["files"].get("int8", {}),
                "ort_int8_ms": r["latency"]["ms"].get("ort-int8", {}).get("p50"),
            }
            for r in data["runs"]
        },
    }


def baseline_markdown(result: dict[str, Any]) -> list[str]:
    base = result.get("baseline")
    if not base:
        return []
    lines = [
        f"## INT8 against {base['label']} (measured {base['created']})",
        "",
        "| model | px | n | ORT agreement | ORT max abs Δ | exact agreement | exact max abs Δ"
        " | exact mean abs Δ | exact Δ accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    for r in result["runs"]:
        old = base["runs"].get(r["arch"])
        if not old or old["input_size"] != r["input_size"]:
            continue
        new = r["parity"]["files"].get("int8", {})
        o_ort, n_ort = old["int8"].get("ort_cpu", {}), new.get("ort_cpu", {})
        o_ex, n_ex = old["int8"].get("qdq_reference", {}), new.get("qdq_reference", {})
        lines.append(
            f"| {r['arch']} | {r['input_size']} | {r['parity']['n']}"
            f" | {pair(o_ort.get('agreement'), n_ort.get('agreement'), '.4f')}"
            f" | {pair(o_ort.get('max_abs_diff'), n_ort.get('max_abs_diff'), '.3g')}"
            f" | {pair(o_ex.get('agreement'), n_ex.get('agreement'), '.4f')}"
            f" | {pair(o_ex.get('max_abs_diff'), n_ex.get('max_abs_diff'), '.3g')}"
            f" | {pair(o_ex.get('mean_abs_diff'), n_ex.get('mean_abs_diff'), '.3g')}"
            f" | {pair(o_ex.get('accuracy_delta'), n_ex.get('accuracy_delta'), '+.4f')} |"
        )
    lines.append("")
    lines.append(
        "Latencies of the two runs are not compared: they were measured at different times"
        f" on a shared machine (the baseline's ort-int8 p50 in ms: {_baseline_ms(base)})."
    )
    return [*lines, ""]


def _baseline_ms(base: dict[str, Any]) -> str:
    return ", ".join(
        f"{arch} {run['ort_int8_ms']:.2f}"
        for arch, run in base["runs"].items()
        if run.get("ort_int8_ms") is not None
    )


def pair(old: Any, new: Any, spec: str) -> str:
    """``old → new``, each formatted with ``spec`` ('-' where missing)."""
    return " → ".join("-" if v is None else format(v, spec) for v in (old, new))


def _parses(f: dict[str, Any]) -> str:
    ok = f.get("tensorrt_compatible")
    if ok is None:
        return "-"
    return "yes" if ok else "no: " + "; ".join(f.get("tensorrt_issues") or [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "split": args.split,
            "calib_method": args.calib_method,
            "calib_size": args.calib_size,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "threads": args.threads,
        },
        "runs": [],
        "baseline": baseline_int8(args.baseline, args.baseline_label) if args.baseline else None,
    }
    for run in args.runs:
        print(f"[export_bench] {run}", flush=True)
        result["runs"].append(bench_run(run, args))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "export.json", result)
    atomic_write_text(args.out / "export.md", markdown(result))
    print(json.dumps({r["run"]: r["latency"]["ms"] for r in result["runs"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
