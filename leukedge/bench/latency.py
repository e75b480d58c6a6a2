"""Latency of backends measured side by side, and the statistics reported for it.

Every backend sees the same batch at each batch size. After a warm-up (lazy
allocation, kernel selection, caches), backends are timed round-robin, one
call each per round, in a rotating order: a load spike on a shared machine, a
thermal throttle or a clock change then hits every backend alike, and the
speed-up of one against another measured in the same run stays meaningful.

Each timed call ends with ``backend.synchronize()`` so queued GPU work is
counted. Host wall time is always recorded; backends that time the device
themselves with CUDA events (``last_device_ms``: TensorRT and the PyTorch
backend on GPU) add device time beside it.

How long a backend is timed adapts: it stops once it has at least
``min_iters`` samples *and* ``min_time_s`` of measured time, or once
``max_time_s`` (or ``max_iters``) is reached. Fast backends thus get thousands
of samples and a slow model on a small CPU still finishes. The statistics and
the stopping rule are pure functions, tested on known timings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leukedge.runtime.backends.base import Backend
from leukedge.runtime.backends.timing import (
    Clock,
    Samples,
    StopRule,
    batch_of,
    interleave,
    timed_call,
)
from leukedge.runtime.stats import percentiles
from leukedge.spec import ModelSpec


def summarize_ms(samples_ms: Sequence[float]) -> dict[str, Any]:
    """n, mean, std, min, max and p50/p90/p99 of millisecond samples (None when empty)."""
    if len(samples_ms) == 0:
        keys = ("mean", "std", "min", "max", "p50", "p90", "p99")
        return {"n": 0, **dict.fromkeys(keys)}
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        **percentiles(a.tolist()),
    }


def throughput(batch: int, mean_ms: float | None) -> float | None:
    """Images per second at ``batch`` from the mean time of one batch."""
    if not mean_ms or mean_ms <= 0:
        return None
    return batch * 1000.0 / mean_ms


def speedup(reference: float | None, candidate: float | None) -> float | None:
    """How many times faster ``candidate`` is: reference time / candidate time."""
    if not reference or not candidate or reference <= 0 or candidate <= 0:
        return None
    return reference / candidate


def latency_entry(batch: int, warmup: int, samples: Samples) -> dict[str, Any]:
    """What report.json keeps of one backend at one batch size."""
    host = summarize_ms(samples.host_ms)
    device = summarize_ms(samples.device_ms) if samples.device_ms else None
    return {
        "batch": batch,
        "warmup": warmup,
        "stopped": samples.stopped,
        "host_ms": host,
        "device_ms": device,
        "ms_per_image": host["p50"] / batch if host["p50"] is not None else None,
        "images_per_s": throughput(batch, host["mean"]),
    }


def measure_batch(
    backends: Mapping[str, Backend],
    images: np.ndarray,
    batch: int,
    warmup: int,
    rule: StopRule,
    clock: Clock = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Warm up, then time every backend that accepts ``batch``, interleaved.

    A backend whose maximum batch is smaller (a TensorRT profile) gets an entry
    saying so instead of figures.
    """
    x = batch_of(images, batch)
    too_big = {
        name: f"batch {batch} exceeds its maximum {b.max_batch}"
        for name, b in backends.items()
        if b.max_batch is not None and batch > b.max_batch
    }
    runnable = {n: b for n, b in backends.items() if n not in too_big}
    for _ in range(warmup):
        for b in runnable.values():
            b.infer(x)
    for b in runnable.values():
        b.synchronize()
    samples = interleave({n: timed_call(b, x, clock) for n, b in runnable.items()}, rule)
    return {
        name: (
            {"batch": batch, "skipped": too_big[name]}
            if name in too_big
            else latency_entry(batch, warmup, samples[name])
        )
        for name in backends
    }


def preprocess_cost(
    paths: Sequence[str],
    spec: ModelSpec,
    max_images: int = 64,
    max_time_s: float = 3.0,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Per-image cost of the stages before inference: decode, then ``preprocess``.

    Timed on up to ``max_images`` of the split's files (read once already, so the
    file is in the page cache: this is decoding, not disk). Reported apart from
    inference because the microscope pays it per cell whatever the backend.
    """
    from leukedge.imaging.images import ImageReadError, read_image
    from leukedge.imaging.preprocess import preprocess

    decode, prep = [], []
    started = clock()
    for path in paths[:max_images]:
        t0 = clock()
        try:
            image = read_image(path)
        except ImageReadError:
            continue
        t1 = clock()
        preprocess(image, spec)
        t2 = clock()
        decode.append((t1 - t0) * 1000.0)
        prep.append((t2 - t1) * 1000.0)
        if clock() - started > max_time_s:
            break
    total = [a + b for a, b in zip(decode, prep, strict=True)]
    return {
        "n": len(total),
        "decode_ms": summarize_ms(decode),
        "preprocess_ms": summarize_ms(prep),
        "total_ms": summarize_ms(total),
    }
