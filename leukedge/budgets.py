"""Parity budgets: how far a compiled model may drift from its PyTorch original.

One definition for the export (warnings in export.json), the bench (pass/fail
per backend) and the runtime (``--backend auto`` skips an artifact that failed
its budget on this kind of machine). Defaults are DESIGN.md's: FP32 identical
top-1 and max |Δlogit| ≤ 1e-3; FP16 agreement ≥ 99.9%; INT8 agreement ≥ 99% and
accuracy drop ≤ 1 point. Plain Python: it runs on the Jetson too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

FP32_MAX_ABS_DIFF = 1e-3
FP16_MIN_AGREEMENT = 0.999
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_ACCURACY_DROP = 0.01


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
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(f"unknown budget(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: float(v) for k, v in given.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


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
