"""Load on one `leukedge serve`: N concurrent clients against Triton, and the same clients local.

    python benchmarks/triton_load.py --run RUN [--clients 1,2,4,8] [--cells 8]
        [--seconds 10] [--backend ort-fp32] [--max-batch 32] [--queue-delay-us 500]

Run it from an environment with the [triton] extra (PyTriton 0.7 needs numpy < 2):
it starts ``leukedge serve RUN`` with this interpreter on free loopback ports
(127.0.0.1 only), waits until the model is ready, then for each client count N
runs N threads, each a microscope: a closed loop that sends one request of
``--cells`` preprocessed cells (the parity set's crops, or random tensors where the
export has none) and waits for the answer, for ``--seconds``. The same N threads
then run with a local ONNX Runtime backend each (what every microscope does
without a server). Reported per setting: requests and cells per second, request
latency p50/p99, and, for the server, the batch sizes its dynamic batcher formed
(from Triton's statistics). The served answers are checked against the local
backend's first. Bounded: at most 16 clients and 60 s per setting.

Writes benchmarks/results/triton_load.json and .md with the machine described.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.io import atomic_write_json, atomic_write_text
from leukedge.machine import describe_machine, markdown_machine
from leukedge.runtime.backends.base import Backend
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.parityset import has_parity_set, load_parity_set
from leukedge.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
MAX_CLIENTS = 16
MAX_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inputs(run: Path, spec: ModelSpec, cells: int) -> np.ndarray:
    """One request's tensor: the parity set's first crops, preprocessed here."""
    if has_parity_set(run):
        ps = load_parity_set(run)
        crops = [ps.crop(i % len(ps)) for i in range(cells)]
        from leukedge.imaging.preprocess import preprocess_batch

        return preprocess_batch(crops, spec)
    rng = np.random.default_rng(0)
    return rng.standard_normal((cells, *spec.input_shape)).astype(np.float32)


def start_server(run: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, int]:
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "leukedge", "serve", str(run), "--backend", args.backend]
    cmd += ["--host", "127.0.0.1", "--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    cmd += ["--metrics-port", str(ports[2]), "--max-batch", str(args.max_batch)]
    cmd += ["--queue-delay-us", str(args.queue_delay_us), "--instances", str(args.instances)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"leukedge serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc, ports[1]


def closed_loop(backends: list[Backend], x: np.ndarray, seconds: float) -> dict[str, Any]:
    """Every backend in its own thread, one request after another for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in backends]
    errors: list[str] = []
    start = threading.Barrier(len(backends) + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                backends[i].infer(x)
            except Exception as e:  # reported, not hidden
                errors.append(f"{type(e).__name__}: {e}")
                return
            latencies[i].append(time.perf_counter() - t0)

    threads = [
        threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(backends))
    ]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(seconds + 60)
    wall = time.perf_counter() - t_start
    all_ms = np.array([v * 1000 for lat in latencies for v in lat]) if any(latencies) else None
    n = 0 if all_ms is None else len(all_ms)
    return {
        "clients": len(backends),
        "requests": n,
        "cells_per_request": len(x),
        "seconds": round(wall, 2),
        "requests_per_s": round(n / wall, 2),
        "cells_per_s": round(n * len(x) / wall, 1),
        "p50_ms": None if all_ms is None else round(float(np.percentile(all_ms, 50)), 2),
        "p99_ms": None if all_ms is None else round(float(np.percentile(all_ms, 99)), 2),
        "per_client_requests": [len(lat) for lat in latencies],
        "errors": errors[:5],
    }


def diff_counts(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def mean_batch(counts: dict[int, int]) -> float | None:
    batches = sum(counts.values())
    return round(sum(k * v for k, v in counts.items()) / batches, 2) if batches else None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="An exported run dir (leukedge export RUN).")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--cells", type=int, default=8, help="Cells per request (one frame's cells).")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backend", default="ort-fp32", help="What the server and the clients run.")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--queue-delay-us", type=int, default=500)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--note", default="", help="How the run was made (printed in the report).")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "triton_load"))
    args = ap.parse_args()
    clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not clients or min(clients) < 1 or max(clients) > MAX_CLIENTS:
        raise SystemExit(f"--clients must be between 1 and {MAX_CLIENTS}")
    seconds = min(max(args.seconds, 1.0), MAX_SECONDS)
    run = Path(args.run)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.load(run / "spec.json")
    x = inputs(run, spec, args.cells)
    machine = describe_machine()  # before the server starts: its load average is the idle one

    proc, grpc_port = start_server(run, args, work / "serve.log")
    url = f"triton://127.0.0.1:{grpc_port}/leukedge-{spec.arch}"
    rows: list[dict[str, Any]] = []
    try:
        probe = Classifier.load(run, backend=url)
        local_probe = Classifier.load(run, backend=args.backend, device="cpu")
        z_remote, z_local = probe.infer(x), local_probe.infer(x)
        agreement = float((z_remote.argmax(1) == z_local.argmax(1)).mean())
        max_diff = float(np.abs(z_remote - z_local).max())
        probe.close()
        local_probe.close()
        for n in clients:
            remote = [Classifier.load(run, backend=url).backend for _ in range(n)]
            stats = remote[0]
            before = stats.batch_statistics()  # type: ignore[attr-defined]
            row = closed_loop(remote, x, seconds)
            formed = diff_counts(stats.batch_statistics(), before)  # type: ignore[attr-defined]
            row.update(where="triton", batches_formed=formed, mean_batch=mean_batch(formed))
            rows.append(row)
            print(row, flush=True)
            for b in remote:
                b.close()
            local = [
                Classifier.load(run, backend=args.backend, device="cpu").backend for _ in range(n)
            ]
            row = closed_loop(local, x, seconds)
            row.update(where="local", batches_formed=None, mean_batch=None)
            rows.append(row)
            print(row, flush=True)
            for b in local:
                b.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

    result = {
        "run": str(run),
        "note": args.note,
        "arch": spec.arch,
        "input_size": spec.input_size,
        "backend": args.backend,
        "cells_per_request": args.cells,
        "seconds_per_setting": seconds,
        "server": {
            "max_batch": args.max_batch,
            "queue_delay_us": args.queue_delay_us,
            "instances": args.instances,
            "served_vs_local": {"agreement": agreement, "max_abs_diff": max_diff},
        },
        "rows": rows,
        "machine": machine,
    }
    results = Path(args.results)
    atomic_write_json(results / "triton_load.json", result)
    atomic_write_text(results / "triton_load.md", markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    s = r["server"]
    lines = [
        "# Load on one `leukedge serve` (Triton Inference Server through PyTriton)",
        "",
        f"Model: {r['arch']} at {r['input_size']} px (run `{Path(r['run']).name}`), {r['backend']} on the "
        f"server and in each local client. Each client is one thread in a closed loop sending "
        f"{r['cells_per_request']} preprocessed cells per request (one frame's cells) over "
        f"gRPC on 127.0.0.1, for {r['seconds_per_setting']:g} s per setting. Server: dynamic "
        f"batching up to {s['max_batch']}, queue delay {s['queue_delay_us']} us, "
        f"{s['instances']} instance(s). Served answers against the local backend: agreement "
        f"{s['served_vs_local']['agreement']:.3f}, max |Δlogit| "
        f"{s['served_vs_local']['max_abs_diff']:.2g}. {r.get('note') or ''}".rstrip(),
        "",
        "| clients | where | requests/s | cells/s | p50 ms | p99 ms | mean batch formed | "
        "batches formed (size: count) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        formed = row["batches_formed"]
        formed_text = (
            ", ".join(f"{k}: {v}" for k, v in sorted(formed.items(), key=lambda kv: int(kv[0])))
            if formed
            else "-"
        )
        lines.append(
            f"| {row['clients']} | {row['where']} | {row['requests_per_s']:.1f} | "
            f"{row['cells_per_s']:.0f} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['mean_batch'] or '-'} | {formed_text} |"
        )
    lines += [
        "",
        "Batch sizes are in images: a request of "
        f"{r['cells_per_request']} cells is {r['cells_per_request']} images; the batcher joins "
        "requests up to the maximum batch. Local clients each run their own ONNX Runtime "
        "session (default threads) on the same CPU, so on a small CPU they compete for the "
        "same cores the server would use: the server pays off when the clients are other "
        "machines (microscope PCs, Jetsons) and the server has the GPU.",
        "",
        "## Machine",
        "",
        markdown_machine(r["machine"]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
