"""Metrics against scikit-learn's independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from leukedge.metrics import (
    auroc_binary,
    classification_metrics,
    confusion_matrix,
    logit_parity,
    softmax,
    wilson_interval,
)


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n)
    # Informative but imperfect scores, rounded so that ties occur.
    score = np.round(np.clip(y * 0.3 + rng.normal(0.35, 0.25, n), 0, 1), 2)
    probs = np.stack([1 - score, score], axis=1)
    m = classification_metrics(y, probs, ["hem", "all"], positive_index=1)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["f1_weighted"] == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()


def test_multiclass_weighted_f1_and_macro_auroc() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y] * 1.5
    probs = softmax(logits)
    m = classification_metrics(y, probs, ["a", "b", "c"], positive_index=2)
    pred = probs.argmax(1)
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["auroc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )


def test_undefined_cases() -> None:
    assert np.isnan(auroc_binary(np.ones(5), np.linspace(0, 1, 5)))
    # A class never predicted: precision 0 (as scikit-learn with zero_division=0), no crash.
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1]] * 4)
    m = classification_metrics(y, probs, ["hem", "all"])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["accuracy"] == 0.5
    assert confusion_matrix(y, np.zeros(4, int), 2).tolist() == [[2, 0], [2, 0]]


def test_logit_parity_identical_and_perturbed() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(100, 2)).astype(np.float32)
    same = logit_parity(ref, ref.copy())
    assert (
        same["agreement"] == 1.0
        and same["max_abs_diff"] == 0.0
        and same["cosine_min"] == pytest.approx(1.0)
    )
    flipped = ref.copy()
    flipped[:10] = flipped[:10, ::-1]
    p = logit_parity(ref, flipped)
    changed = (ref[:10].argmax(1) != flipped[:10].argmax(1)).sum()
    assert p["disagreements"] == changed
    assert p["agreement"] == pytest.approx(1 - changed / 100)
    with pytest.raises(ValueError):
        logit_parity(ref, ref[:5])


def test_wilson_interval_contains_the_proportion() -> None:
    lo, hi = wilson_interval(30, 100)
    assert lo < 0.3 < hi
    assert lo > 0.2 and hi < 0.4
    assert wilson_interval(0, 10)[0] == 0.0
