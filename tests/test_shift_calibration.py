"""The domain-shift score and calibration: numpy only, checked on data with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukedge.runtime import calibration as cal
from leukedge.runtime.shift import (
    SHIFT_FILE,
    WARNING,
    ShiftModel,
    ShiftModelError,
    find_shift_model,
    fit_shift_model,
    ledoit_wolf,
    summarise_flags,
)


def gaussian_cells(n: int, shift: float = 0.0, seed: int = 0, dim: int = 16):
    """Two classes of features around +-1 on the first axis, and stain statistics."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    f = rng.standard_normal((n, dim)) * 0.5
    f[:, 0] += np.where(y == 1, 1.0, -1.0)
    f += shift
    stains = rng.standard_normal((n, 6)) * [2, 1, 1, 0.5, 0.5, 0.5] + [60, 10, -5, 15, 12, 14]
    stains[:, :3] += shift * 10
    return f, y, stains


@pytest.fixture(scope="module")
def model() -> ShiftModel:
    f, y, c = gaussian_cells(600, seed=0)
    vf, _, vc = gaussian_cells(400, seed=1)
    return fit_shift_model(f, y, c, vf, vc)


def test_ledoit_wolf_matches_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.covariance")
    x = np.random.default_rng(0).standard_normal((40, 25))
    x -= x.mean(axis=0)
    cov, shrink = ledoit_wolf(x)
    ref, ref_shrink = sklearn.ledoit_wolf(x, assume_centered=True)
    np.testing.assert_allclose(cov, ref, atol=1e-10)
    assert shrink == pytest.approx(ref_shrink)


def test_thresholds_flag_about_5_percent_in_distribution_and_all_of_a_shifted_lab(
    model: ShiftModel,
) -> None:
    f, _, c = gaussian_cells(2000, seed=2)
    same = model.scores(f, c)
    assert 0.02 < (same > 1).mean() < 0.09
    f2, _, c2 = gaussian_cells(500, shift=1.5, seed=3)
    assert (model.scores(f2, c2) > 1).mean() > 0.95
    # Features alone see it too; stain alone too.
    assert (model.scores(f2, None) > 1).mean() > 0.95
    f_in, _, _ = gaussian_cells(500, seed=5)
    assert (model.scores(f_in, c2) > 1).mean() > 0.95


def test_shift_model_files_round_trip(model: ShiftModel, tmp_path: Path) -> None:
    f, _, c = gaussian_cells(50, seed=4)
    path = model.save(tmp_path / SHIFT_FILE)
    again = ShiftModel.load(path)
    np.testing.assert_allclose(again.scores(f, c), model.scores(f, c), rtol=1e-5)
    text = ShiftModel.from_text(model.to_text())
    np.testing.assert_allclose(text.scores(f, c), model.scores(f, c), rtol=1e-5)
    assert again.info["percentile"] == 95.0
    with pytest.raises(ShiftModelError):
        ShiftModel.from_bytes(b"not an npz")
    with pytest.raises(ShiftModelError, match="features"):
        model.scores(np.zeros((2, 3)))


def test_find_shift_model_from_run_dir_and_engine_path(model: ShiftModel, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert find_shift_model(run) is None
    model.save(run / SHIFT_FILE)
    assert find_shift_model(run) is not None
    engine = run / "engines" / "10.3_orin_sm87" / "model.fp16.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"")
    assert find_shift_model(engine) is not None


def test_flag_summary_warns_when_most_cells_are_flagged() -> None:
    calm = summarise_flags(100, 6, np.linspace(0, 1.2, 100))
    assert calm["warning"] is None and calm["flagged_fraction"] == 0.06
    lo, hi = calm["ci95"]
    assert lo < 0.06 < hi
    loud = summarise_flags(100, 80)
    assert loud["warning"] == WARNING


# --------------------------------------------------------------------------- calibration


def overconfident(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose calibrated version is ``logits / temperature``; labels drawn from it."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, 2))
    p = cal.softmax_t(true_logits)
    y = (rng.random(n) < p[:, 1]).astype(int)
    return true_logits * temperature, y


def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    logits, y = overconfident(5000, 3.0)
    t = cal.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert cal.nll(logits, y, t) < cal.nll(logits, y)
    raw = cal.expected_calibration_error(cal.softmax_t(logits), y)
    scaled = cal.expected_calibration_error(cal.softmax_t(logits, t), y)
    assert scaled < raw / 2
    assert cal.fit_temperature(logits[:5], np.zeros(5, int)) == 1.0  # one class: no fit


def test_reliability_bins_add_up() -> None:
    logits, y = overconfident(300, 2.0)
    bins = cal.reliability_bins(cal.softmax_t(logits), y, bins=10)
    assert sum(b["n"] for b in bins) == 300
    assert all(0.5 <= b["confidence"] <= 1.0 for b in bins)


def test_uncertain_band_includes_its_ends() -> None:
    np.testing.assert_array_equal(
        cal.uncertain(np.array([0.34, 0.35, 0.5, 0.65, 0.66])), [False, True, True, True, False]
    )


def test_operating_point_counts() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    yhat = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0])
    op = cal.operating_point(y, yhat, positive_index=1, split="test")
    assert (op["tpr"], op["fpr"]) == (0.75, 0.2)
    assert (op["positives"], op["negatives"], op["true_positives"], op["false_positives"]) == (
        4,
        5,
        3,
        1,
    )


def _op(tp: int, pos: int, fp: int, neg: int) -> dict:
    return {
        "split": "test",
        "positives": pos,
        "negatives": neg,
        "true_positives": tp,
        "false_positives": fp,
        "tpr": tp / pos,
        "fpr": fp / neg,
    }


def test_adjusted_ratio_corrects_for_false_positives_and_misses() -> None:
    op = _op(tp=180, pos=200, fp=20, neg=200)  # TPR 0.9, FPR 0.1
    # True prevalence 0.25 gives p_obs = 0.1 + 0.25 * 0.8 = 0.3.
    r = cal.adjusted_ratio(300, 1000, op)
    assert r["ratio"] == pytest.approx(0.25)
    lo, hi = r["ci95"]
    assert lo < 0.25 < hi and hi - lo < 0.15
    assert cal.adjusted_ratio(50, 1000, op)["ratio"] == 0.0  # below FPR: clipped
    assert cal.adjusted_ratio(990, 1000, op)["ratio"] == 1.0


def test_adjusted_ratio_interval_widens_with_a_small_test_split() -> None:
    big = cal.adjusted_ratio(300, 1000, _op(180, 200, 20, 200))
    small = cal.adjusted_ratio(300, 1000, _op(18, 20, 2, 20))
    assert np.diff(small["ci95"])[0] > np.diff(big["ci95"])[0]


def test_adjusted_ratio_without_a_usable_operating_point() -> None:
    assert cal.adjusted_ratio(3, 10, None)["ratio"] is None
    assert "separate" in cal.adjusted_ratio(3, 10, _op(5, 10, 5, 10))["reason"]
    assert cal.adjusted_ratio(0, 0, _op(9, 10, 1, 10))["ratio"] is None
