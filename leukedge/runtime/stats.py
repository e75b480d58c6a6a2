"""Running statistics of a pipeline run: counts, stage latencies and the blast ratio.

Latencies are kept in a fixed-size reservoir sample per stage, so a camera left
running for days uses the same memory as a ten-frame test while the percentiles
stay unbiased; count, mean and maximum are exact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leukedge.metrics import wilson_interval

PERCENTILES = (50, 90, 99)
RESERVOIR = 20_000
STAGES = ("capture", "find", "preprocess", "infer", "end_to_end")
MAX_LISTED_SKIPS = 1000


def percentiles(
    values: Sequence[float], qs: Sequence[float] = PERCENTILES
) -> dict[str, float | None]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``values`` (None for an empty list)."""
    if len(values) == 0:
        return {f"p{q:g}": None for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


def blast_ratio(positive: int, total: int, z: float = 1.959964) -> dict[str, Any]:
    """Fraction of cells classified positive (ALL) with its 95% Wilson score interval.

    Wilson rather than the normal approximation: frames hold a handful of cells and
    ratios near 0 or 1 are common, where the normal interval leaves [0, 1].
    """
    if total < 0 or positive < 0 or positive > total:
        raise ValueError(f"need 0 <= positive <= total, got {positive} of {total}")
    if total == 0:
        return {"positive": 0, "cells": 0, "ratio": None, "ci95": [None, None], "method": "wilson"}
    ratio = positive / total
    lo, hi = wilson_interval(positive, total, z)
    # At 0 or 1 the bound equals the ratio; floating point can land a hair inside it.
    return {
        "positive": positive,
        "cells": total,
        "ratio": ratio,
        "ci95": [min(lo, ratio), max(hi, ratio)],
        "method": "wilson",
    }


class StageStats:
    """Latency of one stage: exact count/mean/max, percentiles from a reservoir sample."""

    def __init__(self, capacity: int = RESERVOIR, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)
        if len(self.sample) < self.capacity:
            self.sample.append(seconds)
            return
        j = self._rng.randrange(self.count)  # Vitter's algorithm R
        if j < self.capacity:
            self.sample[j] = seconds

    def summary(self) -> dict[str, Any]:
        """Milliseconds: n, mean, p50, p90, p99, max."""
        out: dict[str, Any] = {"n": self.count}
        if not self.count:
            return {
                **out,
                "mean_ms": None,
                **{f"{k}_ms": v for k, v in percentiles([]).items()},
                "max_ms": None,
            }
        out["mean_ms"] = round(1000.0 * self.total / self.count, 3)
        for k, v in percentiles(self.sample).items():
            out[f"{k}_ms"] = None if v is None else round(1000.0 * v, 3)
        out["max_ms"] = round(1000.0 * self.max, 3)
        return out


class Reservoir:
    """A fixed-size uniform sample of a stream of numbers (Vitter's algorithm R)."""

    def __init__(self, capacity: int = RESERVOIR, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self.sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.sample) < self.capacity:
            self.sample.append(value)
            return
        j = self._rng.randrange(self.count)
        if j < self.capacity:
            self.sample[j] = value


@dataclass
class Totals:
    """Everything counted so far; the summary is made from it at any moment."""

    classes: list[str]
    positive: str
    frames: int = 0
    processed: int = 0
    skipped: int = 0
    cells: int = 0
    edge_cells: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    skipped_list: list[dict[str, Any]] = field(default_factory=list)
    infer_batches: int = 0
    infer_cells: int = 0
    uncertain: int = 0  # cells whose probability is within the unsure band
    uncertain_positive: int = 0  # of those, the ones classified positive
    shift_scored: int = 0
    shift_flagged: int = 0
    shift_sample: Reservoir = field(default_factory=lambda: Reservoir())
    shift_unavailable: str | None = None  # why cells got no shift score
    stages: dict[str, StageStats] = field(default_factory=lambda: {s: StageStats() for s in STAGES})

    def __post_init__(self) -> None:
        self.by_class = {c: 0 for c in self.classes}

    def skip(self, frame: int, name: str, reason: str | None) -> None:
        self.frames += 1
        self.skipped += 1
        if len(self.skipped_list) < MAX_LISTED_SKIPS:
            self.skipped_list.append({"frame": frame, "name": name, "reason": reason})

    def count(self, labels: list[str], edges: list[bool]) -> None:
        self.frames += 1
        self.processed += 1
        self.cells += len(labels)
        self.edge_cells += sum(edges)
        for label in labels:
            self.by_class[label] = self.by_class.get(label, 0) + 1

    def count_reliability(
        self, labels: list[str], unsure: list[bool], shift_scores: np.ndarray | None
    ) -> None:
        """Unsure cells and domain-shift scores of one frame's cells."""
        self.uncertain += sum(unsure)
        self.uncertain_positive += sum(
            u and c == self.positive for c, u in zip(labels, unsure, strict=True)
        )
        if shift_scores is not None:
            self.shift_scored += len(shift_scores)
            self.shift_flagged += int((np.asarray(shift_scores) > 1.0).sum())
            for v in shift_scores:
                self.shift_sample.add(float(v))

    @property
    def positive_count(self) -> int:
        return self.by_class.get(self.positive, 0)
