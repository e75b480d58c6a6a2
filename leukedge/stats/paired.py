"""Paired tests: two models on the same images.

- McNemar on the per-image right/wrong outcomes (statsmodels): exact binomial when
  the two models disagree on fewer than 25 images, else the chi-square with
  continuity correction. It treats images as independent; with several images per
  subject it is optimistic, and the subject bootstrap below is the honest test.
- Paired bootstrap of a metric difference (weighted F1, AUROC, ...): both models
  scored on the very same resamples of subjects (or images); the interval of the
  difference and a two-sided bootstrap p-value.
- Holm's step-down correction over the pairs (statsmodels ``multipletests``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from leukedge.stats.bootstrap import DEFAULT_RESAMPLES, Interval, Units, bootstrap_interval
from leukedge.stats.scores import Scorer

EXACT_BELOW = 25  # discordant pairs under which McNemar uses the exact binomial


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test of equal error rates; ``b``: only A right, ``c``: only B right."""
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("McNemar needs the two models' outcomes on the same images")
    table = np.array([[np.sum(a & b_), np.sum(a & ~b_)], [np.sum(~a & b_), np.sum(~a & ~b_)]])
    b, c = int(table[0, 1]), int(table[1, 0])
    exact = b + c < EXACT_BELOW
    if b + c == 0:  # identical outcomes: nothing to test
        return {"b": 0, "c": 0, "exact": True, "statistic": 0.0, "p_value": 1.0}
    res = mcnemar(table, exact=exact, correction=True)
    return {
        "b": b,
        "c": c,
        "exact": exact,
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
    }


def paired_difference(
    metric: str,
    a: Scorer,
    b: Scorer,
    units: Units,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``metric(A) - metric(B)`` with its percentile interval over shared resamples."""
    fa, fb = a.metric(metric), b.metric(metric)
    return bootstrap_interval(lambda w: fa(w) - fb(w), units, n_resamples, seed)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and which are significant at ``alpha`` (NaNs stay NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        rej, adj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        adjusted[ok], reject[ok] = adj, rej
    return adjusted.tolist(), reject.tolist()
