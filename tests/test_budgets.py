"""Parity budgets: one judgement shared by export, bench and the runtime's auto choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukedge.budgets import Budgets, judge
from leukedge.runtime.backends.base import BackendError
from leukedge.runtime.backends.resolve import resolve_candidates


def _parity(agreement: float, max_abs: float = 0.0, acc_delta: float = 0.0) -> dict:
    return {
        "agreement": agreement,
        "max_abs_diff": max_abs,
        "accuracy_delta": acc_delta,
        "all_finite": True,
    }


def test_default_budgets() -> None:
    b = Budgets()
    assert judge("fp32", _parity(1.0, 1e-5), b)["status"] == "pass"
    assert judge("fp32", _parity(1.0, 5e-3), b)["status"] == "fail"
    assert judge("fp16", _parity(0.9995), b)["status"] == "pass"
    assert judge("fp16", _parity(0.998), b)["status"] == "fail"
    assert judge("int8", _parity(0.995, 0.1, -0.005), b)["status"] == "pass"
    verdict = judge("int8", _parity(0.995, 0.1, -0.02), b)
    assert verdict["status"] == "fail" and "accuracy drop" in verdict["reasons"][0]
    bad = _parity(1.0) | {"all_finite": False}
    assert judge("fp16", bad, b)["status"] == "fail"
    assert (
        judge("int8", _parity(0.97), Budgets.with_overrides({"int8_min_agreement": 0.95}))["status"]
        == "pass"
    )
    with pytest.raises(ValueError, match="unknown budget"):
        Budgets.with_overrides({"int4_min_agreement": 0.5})


def _export_dir(tmp_path: Path, int8_agreement: float) -> Path:
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"arch": "cnn"}))
    for p in ("fp32", "int8"):
        (run / "export" / f"model.{p}.onnx").write_bytes(b"not opened here")
    files = {
        "fp32": {"parity": _parity(1.0, 1e-6)},
        "int8": {"parity": _parity(int8_agreement, 0.5, int8_agreement - 1.0)},
    }
    (run / "export" / "export.json").write_text(json.dumps({"files": files}))
    return run


def test_auto_leaves_out_an_artifact_that_failed_its_budget(tmp_path: Path) -> None:
    run = _export_dir(tmp_path, int8_agreement=0.55)
    candidates, unavailable, _ = resolve_candidates(run, "ort", "cpu")
    assert [c.name for c in candidates] == ["ort-fp32"]
    assert any("ort-int8" in u and "--backend ort-int8" in u for u in unavailable)
    # Asked for explicitly, it still runs.
    explicit, _, _ = resolve_candidates(run, "ort-int8", "cpu")
    assert [c.name for c in explicit] == ["ort-int8"]


def test_auto_keeps_an_artifact_within_budget(tmp_path: Path) -> None:
    run = _export_dir(tmp_path, int8_agreement=0.999)
    candidates, _, _ = resolve_candidates(run, "ort", "cpu")
    assert sorted(c.name for c in candidates) == ["ort-fp32", "ort-int8"]


def test_run_dir_without_export_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps({"arch": "cnn"}))
    with pytest.raises(BackendError, match="leukedge export"):
        resolve_candidates(tmp_path, "ort", "cpu")
