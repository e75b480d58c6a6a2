"""The statistics of a comparison: every metric with its interval, every pair tested.

All intervals come from one bootstrap: the same seed and the same units (subjects,
else images) give every model and every metric the same resamples, so the
intervals and the paired differences are of one experiment. Pairs are tested
three ways (McNemar on right/wrong per image, paired bootstrap of the weighted-F1
and of the AUROC difference); each test's p-values are Holm-corrected over the
pairs.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from leukedge.compare.runs import Aligned
from leukedge.stats import (
    METRICS,
    Scorer,
    bootstrap_interval,
    holm,
    mcnemar_test,
    paired_difference,
    resampling_units,
)

ALPHA = 0.05
PAIRED_METRICS = ("f1_weighted", "auroc")  # differences tested by paired bootstrap


def analyse(
    data: Aligned, n_resamples: int = 2000, seed: int = 0, alpha: float = ALPHA
) -> dict[str, Any]:
    """Metrics with 95 % intervals per model, and the pairwise tests with Holm's correction."""
    units = resampling_units(data.labels, data.subjects, data.files)
    scorers = {name: Scorer(data.labels, p, data.positive_index) for name, p in data.probs.items()}
    metrics = {
        name: {
            m: bootstrap_interval(s.metric(m), units, n_resamples, seed).to_dict() for m in METRICS
        }
        for name, s in scorers.items()
    }
    pairs: list[dict[str, Any]] = []
    for a, b in combinations(scorers, 2):
        sa, sb = scorers[a], scorers[b]
        entry: dict[str, Any] = {"a": a, "b": b, "mcnemar": mcnemar_test(sa.correct, sb.correct)}
        for m in PAIRED_METRICS:
            diff = paired_difference(m, sa, sb, units, n_resamples, seed)
            entry[m] = {**diff.to_dict(), "p_value": diff.p_value()}
        pairs.append(entry)
    for key in ("mcnemar", *PAIRED_METRICS):
        adjusted, reject = holm([p[key]["p_value"] for p in pairs], alpha)
        for p, adj, rej in zip(pairs, adjusted, reject, strict=True):
            p[key]["p_holm"] = adj if np.isfinite(adj) else None
            p[key]["significant"] = bool(rej)
    for p in pairs:
        p["significant"] = any(p[k]["significant"] for k in ("mcnemar", *PAIRED_METRICS))
    return {
        "resampling": {
            "unit": units.kind,
            "units": units.count,
            "strata": [len(s) for s in units.strata],
            "fixed": [units.names[i] for i in units.fixed],
            "resamples": n_resamples,
            "seed": seed,
            "method": "percentile bootstrap, resampling stratified by class",
            "confidence": 0.95,
        },
        "correction": {"method": "holm", "alpha": alpha, "pairs": len(pairs)},
        "metrics": metrics,
        "pairs": pairs,
    }
