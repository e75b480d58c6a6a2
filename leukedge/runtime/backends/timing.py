"""Timing a backend: warm, synchronised calls, interleaved, with an adaptive stopping rule.

The one timing loop of leukedge: ``--backend auto`` times its candidates with it
and ``leukedge bench`` times every backend side by side with it. Each timed call
ends with ``backend.synchronize()`` so queued GPU work is counted; backends that
time the device themselves with CUDA events (``last_device_ms``) add device time.
Torch-free, so the runtime on a Jetson measures exactly as the bench does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from leukedge.runtime.backends.base import Backend

Clock = Callable[[], float]


@dataclass(frozen=True)
class StopRule:
    """When a backend has been timed enough at one batch size."""

    min_iters: int = 30
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    max_iters: int = 100_000

    def __post_init__(self) -> None:
        if self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ValueError(
                f"need 1 <= min_iters <= max_iters, got {self.min_iters}, {self.max_iters}"
            )
        if self.min_time_s < 0 or self.max_time_s <= 0 or self.max_time_s < self.min_time_s:
            raise ValueError(
                f"need 0 <= min_time_s <= max_time_s and max_time_s > 0, "
                f"got {self.min_time_s}, {self.max_time_s}"
            )

    def stop_reason(self, n: int, measured_s: float) -> str | None:
        """Why timing stops after ``n`` samples totalling ``measured_s`` (None: go on).

        ``"enough"``: the iteration and time minimums are both met;
        ``"max_time"``/``"max_iters"``: a cap was hit first (always after one sample).
        """
        if n >= self.min_iters and measured_s >= self.min_time_s:
            return "enough"
        if n >= self.max_iters:
            return "max_iters"
        if n >= 1 and measured_s >= self.max_time_s:
            return "max_time"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` starting at position ``round_index``: no backend always goes first."""
    if not names:
        return []
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


@dataclass
class Samples:
    """Timings of one backend at one batch size."""

    host_ms: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    stopped: str | None = None

    @property
    def measured_s(self) -> float:
        return sum(self.host_ms) / 1000.0


# One timed call: host milliseconds, and device milliseconds where the backend knows them.
TimedCall = Callable[[], tuple[float, float | None]]


def interleave(calls: Mapping[str, TimedCall], rule: StopRule) -> dict[str, Samples]:
    """Round-robin ``calls`` until each one's :class:`StopRule` says it is done."""
    samples = {name: Samples() for name in calls}
    active = list(calls)
    round_index = 0
    while active:
        for name in rotated(active, round_index):
            host, device = calls[name]()
            s = samples[name]
            s.host_ms.append(host)
            if device is not None:
                s.device_ms.append(device)
            s.stopped = rule.stop_reason(len(s.host_ms), s.measured_s)
        active = [n for n in active if samples[n].stopped is None]
        round_index += 1
    return samples


def timed_call(backend: Backend, x: np.ndarray, clock: Clock = time.perf_counter) -> TimedCall:
    """One synchronised inference of ``x``, timed on the host (and on the device if known)."""

    def call() -> tuple[float, float | None]:
        t0 = clock()
        backend.infer(x)
        backend.synchronize()
        host = (clock() - t0) * 1000.0
        device = getattr(backend, "last_device_ms", None)
        return host, (float(device) if device is not None else None)

    return call


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` images, repeated when there are fewer: real pixels, not zeros."""
    if len(images) == 0:
        raise ValueError("no images to time")
    reps = -(-batch // len(images))
    x = np.concatenate([images] * reps)[:batch] if reps > 1 else images[:batch]
    return np.ascontiguousarray(x, dtype=np.float32)
