"""Parity of a backend against the reference on the same preprocessed images, and its budget.

The question a user asks of a compiled model is "does it still answer like the
original?". It is answered three ways: the classification figures of both and
their change (what a study would report), top-1 agreement image by image (what
a user sees flip), and |Δlogit| / cosine statistics (how close the arithmetic
is before argmax hides it). The figures come from :mod:`leukedge.metrics` and
:func:`leukedge.export.parity.compare`, the same code ``leukedge export`` uses.

Budgets follow DESIGN.md ("Parity and latency"): FP32 agrees on every image
within 1e-3 of the logits; FP16 agrees on >= 99.9% of images; INT8 agrees on
>= 99% and loses at most 1 point of accuracy. Every check is kept with its
value and limit, so a failed row says exactly why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from leukedge.data.arrays import ImageSet
from leukedge.export.parity import compare
from leukedge.export.pipeline import (
    FP16_MIN_AGREEMENT,
    FP32_MAX_ABS_DIFF,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_AGREEMENT,
)
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


@dataclass(frozen=True)
class Budgets:
    """Parity limits per precision; defaults are DESIGN.md's."""

    fp32_min_agreement: float = 1.0
    fp32_max_abs_diff: float = FP32_MAX_ABS_DIFF
    fp16_min_agreement: float = FP16_MIN_AGREEMENT
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP

    @classmethod
    def with_overrides(cls, overrides: dict[str, float | None] | None = None) -> Budgets:
        """Defaults with the given (non-None) fields replaced; unknown names are refused."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown budget(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: float(v) for k, v in overrides.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS}


def metrics_of(logits: np.ndarray, labels: np.ndarray, spec: ModelSpec) -> dict[str, Any]:
    """Every classification figure of ``logits`` (probabilities via softmax)."""
    return classification_metrics(labels, softmax(logits), spec.classes, spec.positive_index)


def metric_deltas(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Candidate minus reference for each headline figure (None where one is undefined)."""
    out: dict[str, Any] = {}
    for k in HEADLINE_METRICS:
        a, b = candidate.get(k), reference.get(k)
        ok = a is not None and b is not None and np.isfinite(a) and np.isfinite(b)
        out[k] = float(a - b) if ok else None
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


def _check(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    passed = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"name": name, "value": value, "op": op, "limit": limit, "passed": bool(passed)}


def budget_checks(
    precision: str | None, parity: dict[str, Any], b: Budgets
) -> list[dict[str, Any]]:
    """The checks a backend of ``precision`` must pass (empty for an unknown precision)."""
    finite = _check("finite logits", 1.0 if parity["all_finite"] else 0.0, ">=", 1.0)
    agreement = parity["agreement"]
    if precision == "fp32":
        return [
            finite,
            _check("agreement", agreement, ">=", b.fp32_min_agreement),
            _check("max |Δlogit|", parity["max_abs_diff"], "<=", b.fp32_max_abs_diff),
        ]
    if precision == "fp16":
        return [finite, _check("agreement", agreement, ">=", b.fp16_min_agreement)]
    if precision == "int8":
        drop = -parity["accuracy_delta"] if "accuracy_delta" in parity else None
        return [
            finite,
            _check("agreement", agreement, ">=", b.int8_min_agreement),
            _check("accuracy drop", drop, "<=", b.int8_max_accuracy_drop),
        ]
    return []


def judge(precision: str | None, parity: dict[str, Any], b: Budgets) -> dict[str, Any]:
    """``{"status": "pass"|"fail"|"none", "checks": [...], "reasons": [...]}``."""
    checks = budget_checks(precision, parity, b)
    if not checks:
        return {"status": "none", "checks": [], "reasons": [f"no budget for {precision}"]}
    failed = [c for c in checks if not c["passed"]]
    return {
        "status": "fail" if failed else "pass",
        "checks": checks,
        "reasons": [_reason(c) for c in failed] or ["within every budget"],
    }


def _reason(c: dict[str, Any]) -> str:
    if c["name"] == "finite logits":
        return "non-finite logits (NaN or infinity)"
    value = "undefined" if c["value"] is None else f"{c['value']:.4g}"
    fails = "<" if c["op"] == ">=" else ">"
    return f"{c['name']} {value} {fails} {c['limit']:g}"
