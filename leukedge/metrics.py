"""Classification metrics in plain numpy.

Used by training, evaluation and the parity bench on every machine (the
Jetson included), so no scikit-learn here. Definitions follow scikit-learn's
(the tests cross-check them): precision/recall/F1 are 0 where undefined,
weighted F1 is the C-NMC challenge metric, AUROC is the Mann-Whitney statistic
with ties counted half.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def auroc_binary(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [x.size]))
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    positive_index: int = 1,
) -> dict[str, Any]:
    """All the figures leukedge reports for a set of predictions.

    ``probs`` is (N, C) class probabilities. AUROC ranks one column on its own
    (the positive class's; with more than two classes, each class against the
    rest, averaged over the classes where it is defined), so it needs
    probabilities: a logit column alone does not rank like the softmax. The
    other figures use only the argmax and are the same for logits. Binary
    precision, recall and F1 are those of the positive class (ALL).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(f"probs must be (N, C) with N={y_true.shape[0]}, got {probs.shape}")
    c = len(class_names)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, c)
    precision, recall, f1, support = per_class_prf(cm)
    n = int(support.sum())
    weights = support / n if n else np.zeros(c)
    present = support > 0
    if c == 2:
        auroc = auroc_binary(y_true == positive_index, probs[:, positive_index])
    else:
        per = [auroc_binary(y_true == k, probs[:, k]) for k in range(c)]
        finite = [a for a in per if np.isfinite(a)]
        auroc = float(np.mean(finite)) if finite else float("nan")
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "precision": float(precision[positive_index]),
        "recall": float(recall[positive_index]),
        "f1": float(f1[positive_index]),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float((f1 * weights).sum()),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "specificity": float(recall[1 - positive_index]) if c == 2 else None,
        "auroc": auroc,
        "confusion": cm.tolist(),
        "classes": list(class_names),
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(class_names)
        },
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (good at small n and near 0 or 1)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def logit_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely ``candidate`` logits follow ``reference`` logits, image by image.

    Top-1 agreement is what a user sees change; the |Δlogit| statistics and the
    cosine similarity show how close a compiled model is before argmax hides it.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {cand.shape}")
    if ref.shape[0] == 0:
        raise ValueError("no logits to compare")
    delta = np.abs(ref - cand)
    per_image = delta.max(axis=1)
    dot = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 1.0)
    agree = ref.argmax(axis=1) == cand.argmax(axis=1)
    return {
        "n": int(ref.shape[0]),
        "agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "max_abs_diff": float(delta.max()),
        "mean_abs_diff": float(delta.mean()),
        "p99_abs_diff": float(np.percentile(per_image, 99)),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "all_finite": bool(np.isfinite(cand).all()),
    }
