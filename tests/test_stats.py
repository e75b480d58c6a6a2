"""leukedge.stats against the libraries: scikit-learn metrics, SciPy's bootstrap, statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from leukedge.stats import (
    Scorer,
    bootstrap_interval,
    holm,
    mcnemar_test,
    paired_difference,
    point_scores,
    resampling_units,
)
from leukedge.stats.scores import ECE_BINS


def _fake(n: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and two-class probabilities of a model that is right more often than not."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = skill * (2 * y - 1) + rng.normal(0, 1.2, n)
    p1 = 1 / (1 + np.exp(-logit))
    p1 = np.round(p1, 2)  # ties, as real softmax outputs at low precision have
    return y, np.stack([1 - p1, p1], axis=1)


def _sklearn(name: str, y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> float:
    pred = probs.argmax(axis=1)
    if name == "accuracy":
        return accuracy_score(y, pred, sample_weight=w)
    if name == "f1_weighted":
        return f1_score(y, pred, average="weighted", sample_weight=w, zero_division=0)
    if name == "balanced_accuracy":
        return balanced_accuracy_score(y, pred, sample_weight=w)
    if name == "sensitivity":
        return recall_score(y, pred, pos_label=1, sample_weight=w)
    if name == "specificity":
        return recall_score(y, pred, pos_label=0, sample_weight=w)
    if name == "auroc":
        return roc_auc_score(y, probs[:, 1], sample_weight=w)
    raise KeyError(name)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 60))
def test_weighted_metrics_match_sklearn_sample_weight(seed: int, n: int) -> None:
    y, probs = _fake(n, seed)
    if len(set(y.tolist())) < 2:
        y[0], y[1] = 0, 1
    w = np.random.default_rng(seed + 1).integers(0, 4, n).astype(float)
    w[np.flatnonzero(y == 0)[0]] = 1.0
    w[np.flatnonzero(y == 1)[0]] = 1.0
    scorer = Scorer(y, probs)
    for name in (
        "accuracy",
        "f1_weighted",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "auroc",
    ):
        ours = scorer.metric(name)(np.stack([w, np.ones(n)]))
        assert ours[0] == pytest.approx(_sklearn(name, y, probs, w), abs=1e-12), name
        assert ours[1] == pytest.approx(_sklearn(name, y, probs, np.ones(n)), abs=1e-12), name


def test_point_scores_match_leukedge_metrics_and_sklearn() -> None:
    from leukedge.metrics import classification_metrics

    y, probs = _fake(200, 3)
    ours = point_scores(y, probs)
    theirs = classification_metrics(y, probs, ["hem", "all"], 1)
    for k in ("accuracy", "f1_weighted", "balanced_accuracy", "auroc", "specificity"):
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12)
    assert ours["sensitivity"] == pytest.approx(theirs["recall"], abs=1e-12)


def test_ece_matches_calibration_curve() -> None:
    """Top-label ECE = sum over bins of (bin share) x |accuracy - confidence| in the bin."""
    y, probs = _fake(500, 11, skill=0.8)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=ECE_BINS, strategy="uniform")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=ECE_BINS)
    shares = counts[counts > 0] / len(conf)
    expected = float(np.sum(shares * np.abs(prob_true - prob_pred)))
    assert Scorer(y, probs).ece(None)[0] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_interval_is_scipys_on_the_same_resamples() -> None:
    """Same rng, same strata: our vectorized weights give SciPy's own interval of an
    ordinary (non-vectorized) statistic that expands each resample into images and
    calls scikit-learn."""
    y, probs = _fake(60, 5)
    units = resampling_units(y, None)
    ours = bootstrap_interval(Scorer(y, probs).metric("f1_weighted"), units, 500, seed=7)

    def plain(*samples: np.ndarray) -> float:
        idx = np.concatenate(samples).astype(int)
        return f1_score(y[idx], probs[idx].argmax(axis=1), average="weighted", zero_division=0)

    ref = sps.bootstrap(
        tuple(units.strata),
        plain,
        n_resamples=500,
        batch=250,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.estimate == pytest.approx(
        f1_score(y, probs.argmax(axis=1), average="weighted"), abs=1e-12
    )


def test_subject_bootstrap_draws_whole_subjects_stratified_by_class() -> None:
    rng = np.random.default_rng(0)
    subjects = [f"S{i // 10}" for i in range(80)]  # 8 subjects of 10 cells
    y = np.asarray([0 if int(s[1:]) < 4 else 1 for s in subjects])
    units = resampling_units(y, subjects)
    assert units.kind == "subject" and units.count == 8
    assert [len(s) for s in units.strata] == [4, 4]
    counts = np.stack([rng.multinomial(8, np.ones(8) / 8) for _ in range(3)]).astype(float)
    w = units.weights(counts)
    for k in range(8):  # every cell of a subject carries that subject's draw count
        cells = [i for i, s in enumerate(subjects) if s == f"S{k}"]
        assert np.all(w[:, cells] == counts[:, [k]])
    seen: list[np.ndarray] = []

    def record(weights: np.ndarray | None) -> np.ndarray:
        if weights is None:
            return np.zeros(1)
        seen.append(weights)
        return weights[:, y == 1].sum(axis=1)

    bootstrap_interval(record, units, 200, seed=1)
    drawn = np.concatenate(seen)
    # stratified: every resample holds 4 HEM and 4 ALL subjects, 40 cells each
    assert np.all(drawn[:, y == 1].sum(axis=1) == 40)
    assert np.all(drawn[:, y == 0].sum(axis=1) == 40)


def test_subject_intervals_are_wider_than_image_intervals_when_subjects_differ() -> None:
    """Clustered data: a model that fails whole patients is less certain than N images say."""
    rng = np.random.default_rng(2)
    subjects = [f"S{i // 20}" for i in range(200)]
    y = np.asarray([int(s[1:]) % 2 for s in subjects])
    subject_skill = {f"S{k}": rng.choice([-1.0, 3.0]) for k in range(10)}
    logit = np.asarray([subject_skill[s] for s in subjects]) * (2 * y - 1)
    p1 = 1 / (1 + np.exp(-logit + rng.normal(0, 0.3, 200)))
    probs = np.stack([1 - p1, p1], axis=1)
    acc = Scorer(y, probs).metric("accuracy")
    by_subject = bootstrap_interval(acc, resampling_units(y, subjects), 1000)
    by_image = bootstrap_interval(acc, resampling_units(y, None), 1000)
    assert by_subject.high - by_subject.low > 1.5 * (by_image.high - by_image.low)


def test_paired_difference_uses_the_same_resamples() -> None:
    y, pa = _fake(80, 1, skill=2.0)
    _, pb = _fake(80, 2, skill=0.5)
    units = resampling_units(y, None)
    a, b = Scorer(y, pa), Scorer(y, pb)
    diff = paired_difference("auroc", a, b, units, 400, seed=3)
    ia = bootstrap_interval(a.metric("auroc"), units, 400, seed=3)
    ib = bootstrap_interval(b.metric("auroc"), units, 400, seed=3)
    np.testing.assert_allclose(diff.distribution, ia.distribution - ib.distribution, atol=1e-12)
    assert diff.estimate == pytest.approx(
        roc_auc_score(y, pa[:, 1]) - roc_auc_score(y, pb[:, 1]), abs=1e-12
    )
    assert 0.0 <= diff.p_value() <= 1.0


def test_bootstrap_p_value_is_small_for_a_clear_difference_and_large_for_none() -> None:
    y, pa = _fake(300, 1, skill=3.0)
    _, pb = _fake(300, 2, skill=0.2)
    units = resampling_units(y, None)
    clear = paired_difference("f1_weighted", Scorer(y, pa), Scorer(y, pb), units, 1000)
    same = paired_difference("f1_weighted", Scorer(y, pa), Scorer(y, pa), units, 1000)
    assert clear.p_value() < 0.01 and clear.low > 0
    assert same.p_value() == 1.0 and same.estimate == 0.0


@pytest.mark.parametrize(("b", "c"), [(0, 5), (3, 9), (7, 8), (20, 40), (31, 12)])
def test_mcnemar_matches_statsmodels_binomial_and_chi_square(b: int, c: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    both, neither = 50, 7
    a_right = np.array([1] * both + [1] * b + [0] * c + [0] * neither, dtype=bool)
    b_right = np.array([1] * both + [0] * b + [1] * c + [0] * neither, dtype=bool)
    ours = mcnemar_test(a_right, b_right)
    assert (ours["b"], ours["c"]) == (b, c)
    table = [[both, b], [c, neither]]
    if b + c < 25:
        assert ours["exact"]
        assert ours["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
        assert ours["p_value"] == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue)
    else:
        assert not ours["exact"]
        assert ours["p_value"] == pytest.approx(mcnemar(table, exact=False).pvalue)
        chi2 = (abs(b - c) - 1) ** 2 / (b + c)
        assert ours["p_value"] == pytest.approx(sps.chi2.sf(chi2, 1))


def test_mcnemar_of_identical_outcomes_is_one() -> None:
    right = np.array([True, False, True])
    assert mcnemar_test(right, right)["p_value"] == 1.0


def test_holm_adjusts_as_the_step_down_procedure() -> None:
    adjusted, reject = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])
    assert reject == [True, False, False, False]


def test_scorer_refuses_more_than_two_classes() -> None:
    with pytest.raises(ValueError, match="binary"):
        Scorer(np.zeros(3, int), np.full((3, 3), 1 / 3))


def test_a_lone_subject_of_a_class_is_in_every_resample() -> None:
    subjects = ["H1"] * 10 + [f"A{i // 5}" for i in range(20)]
    y = np.asarray([0] * 10 + [1] * 20)
    units = resampling_units(y, subjects)
    assert [units.names[i] for i in units.fixed] == ["H1"]
    seen: list[np.ndarray] = []

    def record(weights: np.ndarray | None) -> np.ndarray:
        if weights is not None:
            seen.append(weights)
            return weights.sum(axis=1)
        return np.zeros(1)

    bootstrap_interval(record, units, 100)
    drawn = np.concatenate(seen)
    assert np.all(drawn[:, :10] == 1)  # H1 once in every resample
    assert np.all(drawn[:, 10:].sum(axis=1) == 20)


def test_no_interval_and_no_test_when_nothing_can_be_resampled() -> None:
    y, probs = _fake(20, 0)
    y[:10], y[10:] = 0, 1
    units = resampling_units(y, ["H"] * 10 + ["A"] * 10)
    a = Scorer(y, probs)
    ci = bootstrap_interval(a.metric("auroc"), units, 100)
    assert np.isnan(ci.low) and np.isnan(ci.high) and np.isfinite(ci.estimate)
    assert np.isnan(paired_difference("auroc", a, a, units, 100).p_value())
    assert ci.to_dict()["ci95"] == [None, None]
