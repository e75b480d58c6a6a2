"""The comparison metrics, for thousands of bootstrap resamples in one pass.

A bootstrap resample of images (or of subjects) is the same as giving each image
an integer weight: how many times it was drawn. :class:`Scorer` takes a
``(B, N)`` matrix of such weights and returns each metric for all ``B`` resamples
at once, with the definitions of scikit-learn's ``sample_weight`` (the tests check
them against ``accuracy_score``, ``f1_score(average="weighted")``,
``balanced_accuracy_score``, ``recall_score`` and ``roc_auc_score``). Binary tasks
only: sensitivity, specificity and AUROC are about the positive class (ALL).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# name -> what the report calls it; the order is the report's.
METRICS: dict[str, str] = {
    "accuracy": "accuracy",
    "f1_weighted": "weighted F1",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "auroc": "AUROC",
    "ece": "ECE",
}
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = frozenset({"ece"})
ECE_BINS = 15


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


class Scorer:
    """Metrics of one model's predictions under any image weights.

    ``labels`` are class indices, ``probs`` ``(N, 2)`` probabilities; the predicted
    class is the argmax, as everywhere in leukedge.
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != 2 or probs.shape[0] != labels.shape[0]:
            raise ValueError(
                f"two-class probabilities (N, 2) with N={labels.shape[0]} expected, "
                f"got {probs.shape}: model comparison handles binary tasks"
            )
        self.n = labels.shape[0]
        self.pos = labels == positive_index
        pred = probs.argmax(axis=1)
        self.pred_pos = pred == positive_index
        self.correct = pred == labels
        score = probs[:, positive_index]
        # AUROC: images sorted by score once; equal scores form one group (ties count half).
        self._order = np.argsort(score, kind="mergesort")
        s = score[self._order]
        self._starts = np.concatenate(([0], np.flatnonzero(np.diff(s)) + 1))
        # ECE: top-label confidence in 15 equal-width bins, binned as sklearn's
        # calibration_curve bins (right-closed, 0 in the first bin).
        self.confidence = probs.max(axis=1)
        edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
        bins = np.searchsorted(edges[1:-1], self.confidence)
        self._bin_onehot = np.eye(ECE_BINS)[bins]  # (N, bins)

    def _w(self, weights: np.ndarray | None) -> np.ndarray:
        if weights is None:
            return np.ones((1, self.n))
        w = np.asarray(weights, dtype=np.float64)
        return w[None, :] if w.ndim == 1 else w

    def confusion(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Weighted tp, fn, fp, tn, each of shape (B,)."""
        w = self._w(weights)
        tp = w @ (self.pos & self.pred_pos)
        fn = w @ (self.pos & ~self.pred_pos)
        fp = w @ (~self.pos & self.pred_pos)
        tn = w @ (~self.pos & ~self.pred_pos)
        return tp, fn, fp, tn

    def accuracy(self, w: np.ndarray | None = None) -> np.ndarray:
        tp, fn, fp, tn = self.confusion(w)
        return _div(tp + tn, tp + fn + fp + tn)

    def sensitivity(self, w: np.ndarray | None = None) -> np.ndarray:
        tp, fn, _, _ = self.confusion(w)
        return _div(tp, tp + fn)

    def specificity(self, w: np.ndarray | None = None) -> np.ndarray:
        _, _, fp, tn = self.confusion(w)
        return _div(tn, tn + fp)

    def balanced_accuracy(self, w: np.ndarray | None = None) -> np.ndarray:
        return (self.sensitivity(w) + self.specificity(w)) / 2.0

    def f1_weighted(self, w: np.ndarray | None = None) -> np.ndarray:
        """F1 of each class weighted by its (weighted) support: the C-NMC metric."""
        tp, fn, fp, tn = self.confusion(w)
        f1_pos = np.nan_to_num(_div(2 * tp, 2 * tp + fp + fn))
        f1_neg = np.nan_to_num(_div(2 * tn, 2 * tn + fn + fp))
        return _div((tp + fn) * f1_pos + (tn + fp) * f1_neg, tp + fn + fp + tn)

    def auroc(self, w: np.ndarray | None = None) -> np.ndarray:
        """Weighted Mann-Whitney statistic, ties counted half."""
        ws = self._w(w)[:, self._order]
        pos = self.pos[self._order]
        gp = np.add.reduceat(ws * pos, self._starts, axis=1)
        gn = np.add.reduceat(ws * ~pos, self._starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        num = (gp * (below + 0.5 * gn)).sum(axis=1)
        return _div(num, gp.sum(axis=1) * gn.sum(axis=1))

    def ece(self, w: np.ndarray | None = None) -> np.ndarray:
        """Expected calibration error: top-label confidence, 15 equal-width bins."""
        ww = self._w(w)
        hits = (ww * self.correct) @ self._bin_onehot
        conf = (ww * self.confidence) @ self._bin_onehot
        return _div(np.abs(hits - conf).sum(axis=1), ww.sum(axis=1))

    def metric(self, name: str) -> Callable[[np.ndarray | None], np.ndarray]:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        fn: Callable[[np.ndarray | None], np.ndarray] = getattr(self, name)
        return fn


def point_scores(
    labels: np.ndarray, probs: np.ndarray, positive_index: int = 1
) -> dict[str, float]:
    """Every metric of :data:`METRICS` on the predictions as they are (NaN when undefined)."""
    scorer = Scorer(labels, probs, positive_index)
    return {name: float(scorer.metric(name)(None)[0]) for name in METRICS}
