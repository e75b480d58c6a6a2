"""Probabilities that mean what they say, and blast counts corrected for the classifier's errors.

- **Temperature scaling** (Guo et al. 2017): one scalar T fitted on the validation
  split divides the logits before softmax. It does not change any decision, only how
  sure each one claims to be; a network trained to zero loss is otherwise overconfident.
- **Expected calibration error** (ECE, top-label, equal-width bins) and the reliability
  diagram's bins measure it.
- **Adjusted classify-and-count** (Forman 2008): a classifier with sensitivity TPR and
  false-positive rate FPR calls a fraction ``p_obs = FPR + prevalence * (TPR - FPR)`` of
  cells positive, so ``prevalence = (p_obs - FPR) / (TPR - FPR)``, clipped to [0, 1]. Its
  95% interval draws ``p_obs``, TPR and FPR from their Jeffreys posteriors (Beta(k + ½,
  n - k + ½)), which carries the uncertainty of a TPR measured on a few dozen test cells
  and stays honest when a rate was measured as exactly 0 or 1.
- **Unsure cells**: a calibrated probability of the positive class inside
  :data:`UNCERTAIN_BAND` means the model cannot tell; such cells are counted apart.

numpy only: it runs on the device next to the microscope.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Cells whose calibrated probability of the positive class lies in this closed band are
# "unsure": within 0.15 of a coin flip.
UNCERTAIN_BAND = (0.35, 0.65)
ECE_BINS = 15
BOOTSTRAP_DRAWS = 4000
# Below this TPR - FPR the classifier hardly separates the classes: no correction is possible.
MIN_SEPARATION = 0.05
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(labels, dtype=np.int64)
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0
) -> float:
    """The T in [lo, hi] that minimises validation NLL (golden-section search on log T).

    NLL is convex in 1/T, so the search finds the optimum. Without labels of both
    kinds or with fewer than 2 cells, T = 1 (no change).
    """
    y = np.asarray(labels)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return 1.0
    a, b = math.log(lo), math.log(hi)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(logits, y, math.exp(c)), nll(logits, y, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(logits, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(logits, y, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Top-label confidence vs accuracy in ``bins`` equal-width bins (empty bins left out)."""
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    hit = p.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for k in range(bins):
        sel = which == k
        if sel.any():
            out.append(
                {
                    "lo": float(edges[k]),
                    "hi": float(edges[k + 1]),
                    "n": int(sel.sum()),
                    "confidence": float(conf[sel].mean()),
                    "accuracy": float(hit[sel].mean()),
                }
            )
    return out


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the cell-weighted mean |accuracy - confidence| over the reliability bins."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n)


def uncertain(positive_probs: np.ndarray, band: tuple[float, float] = UNCERTAIN_BAND) -> np.ndarray:
    """True where the positive-class probability lies within ``band`` (both ends included)."""
    p = np.asarray(positive_probs, dtype=np.float64)
    return (p >= band[0]) & (p <= band[1])


def operating_point(
    labels: np.ndarray, predicted: np.ndarray, positive_index: int, split: str
) -> dict[str, Any]:
    """Sensitivity (TPR) and false-positive rate (FPR) with the counts they come from."""
    y = np.asarray(labels) == positive_index
    yhat = np.asarray(predicted) == positive_index
    tp, fp = int((y & yhat).sum()), int((~y & yhat).sum())
    pos, neg = int(y.sum()), int((~y).sum())
    return {
        "split": split,
        "positives": pos,
        "negatives": neg,
        "true_positives": tp,
        "false_positives": fp,
        "tpr": tp / pos if pos else None,
        "fpr": fp / neg if neg else None,
    }


def adjusted_ratio(
    positive: int,
    total: int,
    op: dict[str, Any] | None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """The blast ratio corrected for the classifier's TPR and FPR, with a 95% interval."""
    method = "adjusted classify-and-count (Forman 2008), Jeffreys-posterior bootstrap"
    out: dict[str, Any] = {"ratio": None, "ci95": [None, None], "method": method}
    if op is None or not op.get("positives") or not op.get("negatives"):
        out["reason"] = "the model carries no measured sensitivity and specificity"
        return out
    if total <= 0:
        out["reason"] = "no cells"
        return out
    tpr, fpr = float(op["tpr"]), float(op["fpr"])
    out.update(tpr=round(tpr, 4), fpr=round(fpr, 4), measured_on=op.get("split"))
    if tpr - fpr < MIN_SEPARATION:
        out["reason"] = f"TPR - FPR = {tpr - fpr:.3f}: the classifier does not separate the classes"
        return out
    out["ratio"] = float(np.clip((positive / total - fpr) / (tpr - fpr), 0.0, 1.0))
    rng = np.random.default_rng(seed)
    p = rng.beta(positive + 0.5, total - positive + 0.5, draws)
    t = rng.beta(op["true_positives"] + 0.5, op["positives"] - op["true_positives"] + 0.5, draws)
    f = rng.beta(op["false_positives"] + 0.5, op["negatives"] - op["false_positives"] + 0.5, draws)
    ok = t - f >= MIN_SEPARATION
    if ok.mean() < 0.975:  # the interval would rest on draws where no correction exists
        out["ci95"] = [0.0, 1.0]
        out["note"] = "TPR and FPR are too uncertain for a narrower interval"
        return out
    adj = np.clip((p[ok] - f[ok]) / (t[ok] - f[ok]), 0.0, 1.0)
    lo, hi = np.percentile(adj, [2.5, 97.5])
    out["ci95"] = [float(min(lo, out["ratio"])), float(max(hi, out["ratio"]))]
    return out
