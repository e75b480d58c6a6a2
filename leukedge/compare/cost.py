"""What each model costs: parameters, FLOPs, file sizes, and latency from its bench report.

FLOPs are counted, not looked up: one batch-1 forward pass at the spec's input
size under :class:`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per
multiply-add; convolutions, matmuls and attention), only where torch is
importable. Latency and throughput are read from ``bench/report.json`` as
``leukedge bench`` measured them (p50 at batch 1, images/s at the largest batch),
with the machine they were measured on: latencies of different machines are not
put side by side without saying so.
"""

from __future__ import annotations

from typing import Any

from leukedge.artifacts import ARTIFACTS
from leukedge.compare.runs import ModelRun
from leukedge.io import read_json
from leukedge.spec import ModelSpec

BENCH_REPORT = "bench/report.json"


def count_flops(spec: ModelSpec) -> tuple[float | None, int | None]:
    """(FLOPs, parameters) of one forward pass of an untrained model of ``spec``.

    (None, None) without torch or for an architecture that cannot be built here.
    """
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from leukedge.train.models import count_parameters, model_from_spec
    except ImportError:
        return None, None
    try:
        model = model_from_spec(spec).eval()
    except Exception:  # an unknown timm name on this machine: leave the figure out
        return None, None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    return float(counter.get_total_flops()), count_parameters(model)


def file_sizes(run: ModelRun) -> dict[str, float | None]:
    """Checkpoint and exported ONNX sizes in MB (None where not there)."""
    out: dict[str, float | None] = {}
    ckpt = run.first("checkpoint.pt")
    out["checkpoint"] = ckpt.stat().st_size / 1e6 if ckpt else None
    for a in ARTIFACTS:
        f = run.first(f"export/{a.onnx_name}")
        out[f"onnx_{a.precision}"] = f.stat().st_size / 1e6 if f else None
    return out


def latency_rows(run: ModelRun) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One row per measured backend of the run's bench report, and the report's machine."""
    path = run.first(BENCH_REPORT)
    if path is None:
        return [], None
    report = read_json(path)
    rows = []
    for name, row in report.get("backends", {}).items():
        latency = {b: e for b, e in row.get("latency", {}).items() if "host_ms" in e}
        if not latency:
            continue
        largest = max(latency, key=int)
        one = latency.get("1")
        rows.append(
            {
                "backend": name,
                "precision": row.get("precision"),
                "device": row.get("device"),
                "batch1_p50_ms": one["host_ms"]["p50"] if one else None,
                "batch1_p90_ms": one["host_ms"]["p90"] if one else None,
                "throughput_batch": int(largest),
                "images_per_s": latency[largest].get("images_per_s"),
                "agreement": (row.get("parity") or {}).get("agreement"),
            }
        )
    machine = report.get("machine", {})
    return rows, {
        "report": str(path),
        "cpu": machine.get("cpu"),
        "cpu_cores": machine.get("cpu_cores"),
        "gpus": [
            g.get("name", str(g)) if isinstance(g, dict) else str(g)
            for g in machine.get("gpus", [])
        ],
        "jetson": machine.get("jetson"),
        "split": report.get("data", {}).get("split"),
    }


def model_cost(run: ModelRun) -> dict[str, Any]:
    """Parameters, GFLOPs, sizes, input size and latency rows of one run."""
    flops, params = count_flops(run.spec) if run.spec else (None, None)
    if params is None:
        params = run.metrics.get("parameters")
    rows, machine = latency_rows(run)
    return {
        "arch": run.arch,
        "input_size": run.spec.input_size if run.spec else None,
        "parameters": params,
        "gflops": flops / 1e9 if flops is not None else None,
        "sizes_mb": file_sizes(run),
        "latency": rows,
        "latency_machine": machine,
    }
