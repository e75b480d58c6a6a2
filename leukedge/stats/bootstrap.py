"""95 % bootstrap intervals that respect who the images came from.

Cells of one patient are not independent: resampling images as if they were
gives intervals that are too narrow. Where the images have subject ids, the
subjects are resampled (a cluster bootstrap) and every image of a drawn subject
comes along; otherwise the images are. Resampling is stratified by class (by a
subject's majority class): each resample keeps the number of ALL and HEM units,
so sensitivity, specificity and AUROC are always defined (pROC's default too). A
class with a single unit cannot be resampled: that unit is in every resample, and
with no class of two units there is no interval at all (null, and no test).

The resampling and the percentile interval are :func:`scipy.stats.bootstrap`'s,
with one sample per stratum; the statistic turns the drawn unit ids into image
weights for :class:`~leukedge.stats.scores.Scorer`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

WeightFn = Callable[[np.ndarray | None], np.ndarray]
DEFAULT_RESAMPLES = 2000
BATCH = 250  # resamples per vectorized call: bounds memory at BATCH x images


@dataclass
class Units:
    """What is resampled: ``kind`` "subject" or "image", each image's unit, strata of units."""

    kind: str
    unit_of_image: np.ndarray  # (N,) int in [0, U)
    names: list[str]  # (U,) subject ids, or image files
    strata: list[np.ndarray]  # unit ids of each resampled stratum (a class with >= 2 units)
    fixed: np.ndarray  # units alone in their class: in every resample once, never varied

    @property
    def count(self) -> int:
        return len(self.names)

    def weights(self, unit_counts: np.ndarray) -> np.ndarray:
        """(B, U) draws per unit -> (B, N) draws per image."""
        return unit_counts[:, self.unit_of_image]

    def describe(self) -> str:
        return f"{self.count} {self.kind}s"

    @property
    def resampled(self) -> bool:
        """False when no class has two units: nothing can vary, there is no interval."""
        return bool(self.strata)


def resampling_units(
    labels: np.ndarray, subjects: Sequence[str | None] | None, files: Sequence[str] | None = None
) -> Units:
    """Subjects as units when every image has one, else images; strata by (majority) class."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    if subjects is not None and len(subjects) == n and n and all(subjects):
        names = sorted({str(s) for s in subjects})
        index = {s: k for k, s in enumerate(names)}
        unit_of_image = np.asarray([index[str(s)] for s in subjects], dtype=np.int64)
        majority = [
            Counter(labels[unit_of_image == k].tolist()).most_common(1)[0][0]
            for k in range(len(names))
        ]
        kind = "subject"
    else:
        names = list(files) if files is not None else [str(i) for i in range(n)]
        unit_of_image = np.arange(n, dtype=np.int64)
        majority = labels.tolist()
        kind = "image"
    unit_label = np.asarray(majority, dtype=np.int64)
    by_class = [np.flatnonzero(unit_label == c) for c in sorted(set(majority))]
    strata = [s for s in by_class if len(s) >= 2]
    lone = [s for s in by_class if len(s) < 2]
    fixed = np.concatenate(lone) if lone else np.zeros(0, dtype=np.int64)
    return Units(kind, unit_of_image, names, strata, fixed)


@dataclass
class Interval:
    """A point estimate, its percentile interval and the bootstrap distribution."""

    estimate: float
    low: float
    high: float
    distribution: np.ndarray
    confidence: float = 0.95

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided bootstrap p of ``estimate == null`` (for differences): twice the
        smaller tail of the resampled values beyond ``null``, at most 1."""
        d = self.distribution
        if d.size == 0 or not np.isfinite(d).all():  # no interval, no test
            return float("nan")
        tail = min(float(np.mean(d <= null)), float(np.mean(d >= null)))
        return min(1.0, 2.0 * tail)

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": _num(self.estimate), "ci95": [_num(self.low), _num(self.high)]}


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def bootstrap_interval(
    statistic: WeightFn,
    units: Units,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile interval of ``statistic`` (image weights (B, N) -> values (B,)).

    The same ``seed`` draws the same resamples for every statistic of the same
    units, so intervals of different metrics and models are of one bootstrap.
    """
    estimate = float(statistic(None)[0])
    if not units.resampled:
        return Interval(estimate, float("nan"), float("nan"), np.zeros(0), confidence)
    u = units.count

    def on_units(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.concatenate([np.moveaxis(s, axis, -1) for s in samples], axis=-1)
        if units.fixed.size:
            lone = np.broadcast_to(units.fixed, (*drawn.shape[:-1], units.fixed.size))
            drawn = np.concatenate([drawn, lone], axis=-1)
        lead = drawn.shape[:-1]
        flat = drawn.reshape(-1, drawn.shape[-1])
        rows = np.arange(flat.shape[0])[:, None]
        counts = np.bincount((rows * u + flat).ravel(), minlength=flat.shape[0] * u)
        values = statistic(units.weights(counts.reshape(flat.shape[0], u).astype(np.float64)))
        return values.reshape(lead)

    with np.errstate(invalid="ignore", divide="ignore"):
        res = sps.bootstrap(
            tuple(units.strata),
            on_units,
            n_resamples=n_resamples,
            batch=BATCH,
            vectorized=True,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    ci = res.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), res.bootstrap_distribution, confidence)
