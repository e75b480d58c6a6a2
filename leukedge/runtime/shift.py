"""Is this cell like the cells the model was trained on? A domain-shift score per cell.

A classifier answers confidently on anything, including cells from a microscope,
stain or camera it never saw; its probabilities do not say that the input is new.
Two measurements of the training cells do:

- **features**: the class-conditional Mahalanobis distance of the cell's penultimate
  features to the training cells of each class, with one covariance shared by the
  classes (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
  samples"); the covariance is shrunk (Ledoit & Wolf 2004) because a few hundred
  training cells do not determine hundreds of feature dimensions;
- **stain**: the Mahalanobis distance of the crop's stain statistics (Lab colour of its
  darkest and brightest tenth: nuclear stain and illumination, six numbers) to those of
  the training and validation crops: another lab's stain or white balance shows here
  first, whatever the model makes of it.

A cell is flagged when its feature distance exceeds the 95th percentile of the
validation split's (the model has seen its training cells, so their features are
closer than new cells' of the same lab), or its stain distance exceeds the 99.5th
percentile of the training and validation crops' (these do not depend on the model,
so all of them describe the lab). About 5% + 0.5% of cells like the training cells
are flagged by construction. The reported ``shift_score`` is the larger of the two
distances over its threshold, so 1.0 is the boundary.

The fitted model is a small ``.npz`` (``shift.npz`` in the run dir, embedded in every
exported ONNX file); numpy only, so it runs on the device next to the microscope.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SHIFT_FILE = "shift.npz"
ONNX_SHIFT_KEY = "leukedge.domain_shift"
DEFAULT_PERCENTILE = 95.0
# A run is "mostly out of distribution" when more than this fraction of its cells is flagged.
WARN_FRACTION = 0.5
WARNING = (
    "these images differ from the training data: results are unreliable — fine-tune on "
    "labelled cells from this microscope (README: 'Your own microscope')"
)
STAIN_PERCENTILE = 99.5
METHOD = (
    "larger of: class-conditional Mahalanobis distance of penultimate features (shared shrunk "
    "covariance, Lee et al. 2018) over its 95th percentile on the validation split; Mahalanobis "
    "distance of stain statistics (Lab of the darkest and brightest tenth of the crop) over its "
    "99.5th percentile on the training and validation crops"
)


class ShiftModelError(ValueError):
    """A shift model file that cannot be read or does not fit the features given."""


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance of centred rows ``x`` shrunk towards a scaled identity, and the shrinkage.

    Ledoit & Wolf 2004, as scikit-learn's ``ledoit_wolf`` computes it.
    """
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    delta = ((emp - mu * np.eye(d)) ** 2).sum() / d
    x2 = x**2
    beta = ((x2.T @ x2) / n - emp**2).sum() / (d * n)
    shrink = 0.0 if delta <= 0 else min(beta, delta) / delta
    return (1.0 - shrink) * emp + shrink * mu * np.eye(d), float(shrink)


def whitener(cov: np.ndarray) -> np.ndarray:
    """W with ||v @ W||^2 = v' cov^-1 v (eigenvalues floored for numerical safety)."""
    vals, vecs = np.linalg.eigh(cov)
    floor = max(float(vals.max()) * 1e-9, 1e-12)
    return vecs / np.sqrt(np.maximum(vals, floor))


@dataclass
class ShiftModel:
    """What in-distribution looks like, and the thresholds beyond which a cell is flagged."""

    class_means: np.ndarray  # (C, D) mean penultimate features of each class (train split)
    feature_whitener: np.ndarray  # (D, D)
    stain_mean: np.ndarray  # (6,)
    stain_whitener: np.ndarray  # (6, 6)
    feature_threshold: float  # percentile of the validation split's feature distances
    stain_threshold: float  # percentile of the train and val crops' stain distances
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.class_means.shape[1])

    def feature_distance(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per feature dimension."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise ShiftModelError(
                f"features of shape {f.shape} do not fit a shift model of {self.feature_dim} "
                "features: was the model retrained after the shift model was fitted?"
            )
        d = np.stack(
            [(((f - m) @ self.feature_whitener) ** 2).sum(axis=1) for m in self.class_means]
        )
        return d.min(axis=0) / self.feature_dim

    def stain_distance(self, stains: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of stain statistics (N, 6), per dimension."""
        c = np.asarray(stains, dtype=np.float64).reshape(-1, 6)
        return (((c - self.stain_mean) @ self.stain_whitener) ** 2).sum(axis=1) / 6.0

    def scores(self, features: np.ndarray, stains: np.ndarray | None = None) -> np.ndarray:
        """Shift score per cell: 1.0 is the threshold, above it the cell is out of distribution."""
        score = self.feature_distance(features) / self.feature_threshold
        if stains is not None:
            score = np.maximum(score, self.stain_distance(stains) / self.stain_threshold)
        return score

    # ------------------------------------------------------------ files

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            class_means=self.class_means.astype(np.float32),
            feature_whitener=self.feature_whitener.astype(np.float32),
            stain_mean=self.stain_mean,
            stain_whitener=self.stain_whitener,
            thresholds=np.array([self.feature_threshold, self.stain_threshold]),
            info=np.array(json.dumps(self.info, sort_keys=True)),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShiftModel:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                thresholds = z["thresholds"]
                return cls(
                    class_means=z["class_means"].astype(np.float64),
                    feature_whitener=z["feature_whitener"].astype(np.float64),
                    stain_mean=z["stain_mean"],
                    stain_whitener=z["stain_whitener"],
                    feature_threshold=float(thresholds[0]),
                    stain_threshold=float(thresholds[1]),
                    info=json.loads(str(z["info"])),
                )
        except (OSError, KeyError, ValueError) as e:
            raise ShiftModelError(f"not a leukedge shift model: {e}") from e

    def save(self, path: str | Path) -> Path:
        from leukedge.io import atomic_write_bytes

        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> ShiftModel:
        return cls.from_bytes(Path(path).read_bytes())

    def to_text(self) -> str:
        """Base64 of the file, for an ONNX ``metadata_props`` entry."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> ShiftModel:
        return cls.from_bytes(base64.b64decode(text))


def fit_shift_model(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_stains: np.ndarray,
    val_features: np.ndarray,
    val_stains: np.ndarray,
    percentile: float = DEFAULT_PERCENTILE,
    stain_percentile: float = STAIN_PERCENTILE,
) -> ShiftModel:
    """Class means and shared covariance from train, the feature threshold from val.

    Stain statistics do not depend on the model: their mean, covariance and threshold
    come from the train and validation crops together.
    """
    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels)
    classes = sorted(set(y.tolist()))
    if len(f) < 2 or len(val_features) < 1:
        raise ShiftModelError("a shift model needs train and validation cells")
    means = np.stack([f[y == k].mean(axis=0) for k in classes])
    centred = f - means[np.searchsorted(classes, y)]
    cov, shrink = ledoit_wolf(centred)
    stains = np.concatenate([np.asarray(train_stains), np.asarray(val_stains)]).astype(np.float64)
    stain_mean = stains.mean(axis=0)
    stain_cov, stain_shrink = ledoit_wolf(stains - stain_mean)
    model = ShiftModel(
        class_means=means,
        feature_whitener=whitener(cov),
        stain_mean=stain_mean,
        stain_whitener=whitener(stain_cov),
        feature_threshold=1.0,
        stain_threshold=1.0,
    )
    model.feature_threshold = _positive(
        np.percentile(model.feature_distance(val_features), percentile)
    )
    model.stain_threshold = _positive(np.percentile(model.stain_distance(stains), stain_percentile))
    model.info = {
        "method": METHOD,
        "percentile": percentile,
        "stain_percentile": stain_percentile,
        "train_cells": len(f),
        "val_cells": len(val_features),
        "feature_dim": model.feature_dim,
        "feature_shrinkage": round(shrink, 4),
        "stain_shrinkage": round(stain_shrink, 4),
    }
    return model


def _positive(v: float) -> float:
    return float(v) if np.isfinite(v) and v > 0 else 1e-12


# --------------------------------------------------------------------------- per run


def summarise_flags(n: int, flagged: int, sample: np.ndarray | None = None) -> dict[str, Any]:
    """summary.json's ``domain_shift`` from the counts (and a sample of scores for percentiles)."""
    from leukedge.metrics import wilson_interval

    out: dict[str, Any] = {
        "available": True,
        "cells_scored": n,
        "flagged": flagged,
        "flagged_fraction": flagged / n if n else None,
        "ci95": list(wilson_interval(flagged, n)) if n else [None, None],
        "threshold": 1.0,
        "expected_in_distribution": round(
            (100.0 - DEFAULT_PERCENTILE + 100.0 - STAIN_PERCENTILE) / 100.0, 4
        ),
    }
    if sample is not None and len(sample):
        p50, p90 = np.percentile(np.asarray(sample, dtype=np.float64), [50, 90])
        out["score_p50"], out["score_p90"] = round(float(p50), 3), round(float(p90), 3)
    out["warning"] = WARNING if n and flagged / n > WARN_FRACTION else None
    return out


def unavailable(reason: str) -> dict[str, Any]:
    """``domain_shift`` of a run whose model cannot be scored, and why."""
    return {"available": False, "reason": reason, "warning": None}


# --------------------------------------------------------------------------- finding the file


def find_shift_model(model: str | Path) -> ShiftModel | None:
    """The shift model that belongs to a run dir, an ``.onnx`` or an ``.engine``; None if none.

    A run dir has ``shift.npz``; an ONNX file carries it in its metadata; an engine
    (``RUN/engines/<target>/model.*.engine``) or a lone ONNX file finds the run dir's
    ``shift.npz`` among its parent folders.
    """
    path = Path(model)
    if path.is_dir():
        candidate = path / SHIFT_FILE
        return ShiftModel.load(candidate) if candidate.is_file() else None
    if path.suffix == ".onnx":
        embedded = _from_onnx(path)
        if embedded is not None:
            return embedded
    for parent in list(path.parents)[:3]:
        candidate = parent / SHIFT_FILE
        if candidate.is_file():
            return ShiftModel.load(candidate)
    return None


def _from_onnx(path: Path) -> ShiftModel | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == ONNX_SHIFT_KEY:
            return ShiftModel.from_text(prop.value)
    return None
