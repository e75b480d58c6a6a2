"""Parity of a backend against the reference on the same preprocessed images, and its budget.

The question a user asks of a compiled model is "does it still answer like the
original?". It is answered three ways: the classification figures of both and
their change (what a study would report), top-1 agreement image by image (what
a user sees flip), and |Δlogit| / cosine statistics (how close the arithmetic
is before argmax hides it). The figures come from :mod:`leukedge.metrics` and
:func:`leukedge.export.parity.compare`, the same code ``leukedge export`` uses.

The pass/fail judgement against DESIGN.md's budgets lives in
:mod:`leukedge.budgets`, shared with the export and the runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leukedge.data.arrays import ImageSet
from leukedge.export.parity import compare
from leukedge.metrics import classification_metrics, softmax, wilson_interval
from leukedge.spec import ModelSpec

HEADLINE_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1_weighted",
    "balanced_accuracy",
    "auroc",
)


def metrics_of(logits: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> dict[str, Any]:
    """Every classification figure of ``logits`` (probabilities via softmax)."""
    return classification_metrics(labels, softmax(logits), spec.classes, spec.positive_index)


def metric_deltas(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Candidate minus reference for each headline figure (None where one is undefined)."""
    out: dict[str, Any] = {}
    for k in HEADLINE_METRICS:
        a, b = candidate.get(k), reference.get(k)
        if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
            out[k] = None
        else:
            out[k] = float(a - b)
    return out


def disagreements(
    reference: np.ndarray, candidate: np.ndarray, images: ImageSet, spec: ModelSpec
) -> list[dict[str, Any]]:
    """Every image whose top-1 class differs, with both answers and their probabilities."""
    ref_p, cand_p = softmax(reference), softmax(candidate)
    ref_y, cand_y = ref_p.argmax(axis=1), cand_p.argmax(axis=1)
    out = []
    for i in np.flatnonzero(ref_y != cand_y):
        out.append(
            {
                "index": int(i),
                "path": images.paths[i],
                "subject": images.subjects[i],
                "label": spec.classes[int(images.labels[i])],
                "reference": _answer(ref_p[i], int(ref_y[i]), spec),
                "backend": _answer(cand_p[i], int(cand_y[i]), spec),
            }
        )
    return out


def _answer(probs: np.ndarray, k: int, spec: ModelSpec) -> dict[str, Any]:
    return {
        "class": spec.classes[k],
        "prob": float(probs[k]),
        f"prob_{spec.positive_class}": float(probs[spec.positive_index]),
    }


def backend_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    images: ImageSet,
    spec: ModelSpec,
    reference_metrics: dict[str, Any],
) -> dict[str, Any]:
    """Metrics, their change, logit parity and disagreements of one backend."""
    parity = compare(reference, candidate, images.labels, spec)
    agree = parity["n"] - parity["disagreements"]
    parity["agreement_ci95"] = list(wilson_interval(agree, parity["n"]))
    metrics = metrics_of(candidate, images.labels, spec) if parity["all_finite"] else None
    return {
        "metrics": metrics,
        "delta": metric_deltas(metrics, reference_metrics) if metrics else None,
        "parity": parity,
        "disagreements": disagreements(reference, candidate, images, spec),
    }
