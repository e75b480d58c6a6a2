"""One thread budget for a run: capture, finding, inference and writing share the cores.

A run has its own threads: the capture thread (reading, finding cells,
preprocessing: OpenCV), the main thread (inference: ONNX Runtime's intra-op
pool) and, when frames are drawn, the writer thread (OpenCV drawing and
encoding). Left alone, ONNX Runtime takes one thread per core and spins them
between calls, and OpenCV its own pool per core: on a 2-core machine that is 5+
busy threads on 2 cores, and the pipeline waits on itself. The budget gives the
capture thread one core (and the writer thread its share of it), ONNX Runtime
the rest (at least one), OpenCV's parallel loops whatever ONNX Runtime does not
use, and turns off ONNX Runtime's spinning, which only pays for a core of its own.
``LEUKEDGE_ORT_THREADS`` still overrides the ONNX Runtime part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leukedge.runtime.backends.resolve import OpenOptions


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or `taskset`'s)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover (macOS, Windows)
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadBudget:
    """How many threads each part of a run gets on ``cores`` cores."""

    cores: int
    ort_threads: int
    cv2_threads: int
    spinning: bool

    def open_options(self, device: str = "auto") -> OpenOptions:
        """How the backends of this run open (``device``: ``cuda:N`` picks the GPU)."""
        from leukedge.runtime.backends.resolve import OpenOptions, device_index

        env = os.environ.get("LEUKEDGE_ORT_THREADS", "").strip()
        threads = int(env) if env.isdigit() else self.ort_threads
        return OpenOptions(threads=threads, spinning=self.spinning, gpu=device_index(device))

    def apply_cv2(self) -> None:
        """Size OpenCV's pool for the threads of this run (process-wide, as OpenCV has one)."""
        import cv2

        cv2.setNumThreads(self.cv2_threads)

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "cores": self.cores,
            "ort_intra_op_threads": self.ort_threads,
            "opencv_threads": self.cv2_threads,
            "ort_spinning": self.spinning,
        }


def plan_threads(cores: int | None = None) -> ThreadBudget:
    """The budget for ``cores`` (default: the cores this process may use)."""
    n = cores if cores is not None else usable_cores()
    ort = max(1, n - 1)  # one core for capture (and the writer beside it)
    cv2_threads = max(1, n - ort)
    return ThreadBudget(cores=n, ort_threads=ort, cv2_threads=cv2_threads, spinning=False)
