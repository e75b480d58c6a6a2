"""After training: how sure the model may be, and what its training data looked like.

Run once on the best checkpoint, this step

- fits the temperature on the validation split and measures calibration (ECE, NLL,
  reliability diagram ``reliability.png``) before and after it on the test split;
- records the classifier's operating point (sensitivity, false-positive rate, with the
  counts) on the test split, which the runtime needs to correct blast counts;
- fits the domain-shift model (``shift.npz``) on the train split's penultimate features
  and stain statistics, with its threshold on the validation split, and measures how
  many held-out test cells it flags;

then writes the temperature and operating point into ``spec.json``. Everything
measured goes into ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from leukedge.data.arrays import stratified_subset
from leukedge.data.records import Record
from leukedge.io import sha256_file
from leukedge.metrics import wilson_interval
from leukedge.progress import Reporter
from leukedge.rundir import RunDir
from leukedge.runtime.calibration import (
    UNCERTAIN_BAND,
    expected_calibration_error,
    fit_temperature,
    nll,
    operating_point,
    reliability_bins,
    softmax_t,
    uncertain,
)
from leukedge.runtime.shift import SHIFT_FILE, ShiftModel, ShiftModelError, fit_shift_model
from leukedge.spec import ModelSpec
from leukedge.train.evaluate import Predictions, predict
from leukedge.train.plots import plot_reliability

# The train split's features describe in-distribution; beyond this many cells they add
# little and cost a forward pass each.
MAX_SHIFT_TRAIN = 5000


def calibration_figures(pred: Predictions, temperature: float) -> dict[str, Any]:
    """NLL and ECE of ``pred`` before and after dividing its logits by ``temperature``."""
    raw, scaled = softmax_t(pred.logits), softmax_t(pred.logits, temperature)
    return {
        "n": len(pred.labels),
        "nll_raw": nll(pred.logits, pred.labels),
        "nll": nll(pred.logits, pred.labels, temperature),
        "ece_raw": expected_calibration_error(raw, pred.labels),
        "ece": expected_calibration_error(scaled, pred.labels),
    }


def fit_reliability(
    run: RunDir,
    spec: ModelSpec,
    model: nn.Module,
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    test: Predictions | None,
    device: torch.device,
    batch_size: int,
    workers: int,
    reporter: Reporter,
    seed: int = 0,
) -> tuple[ModelSpec, dict[str, Any]]:
    """Temperature, operating point and shift model of a trained run; the updated spec.

    ``test`` are the test split's predictions with features (None without a test split).
    """
    val = predict(model, val_records, spec, device, batch_size, workers, features=True)
    train_sample = stratified_subset(list(train_records), MAX_SHIFT_TRAIN, seed)
    train = predict(model, train_sample, spec, device, batch_size, workers, features=True)
    temperature = fit_temperature(val.logits, val.labels)
    held_out, held_name = (test, "test") if test is not None and len(test.labels) else (val, "val")
    op = operating_point(
        held_out.labels, held_out.logits.argmax(axis=1), spec.positive_index, held_name
    )
    probs = softmax_t(held_out.logits, temperature)
    unsure = uncertain(probs[:, spec.positive_index])
    plot_reliability(
        reliability_bins(softmax_t(held_out.logits), held_out.labels),
        reliability_bins(probs, held_out.labels),
        run.path / "reliability.png",
        held_name,
    )
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "fitted_on": "val",
        "val": calibration_figures(val, temperature),
        held_name: calibration_figures(held_out, temperature),
        "reliability": {"split": held_name, "bins": reliability_bins(probs, held_out.labels)},
        "uncertain_band": list(UNCERTAIN_BAND),
        "uncertain_fraction": float(unsure.mean()) if len(unsure) else None,
    }
    reporter.log(
        f"temperature {temperature:.3f} (val NLL {calibration['val']['nll_raw']:.3f} -> "
        f"{calibration['val']['nll']:.3f}); {held_name} ECE "
        f"{calibration[held_name]['ece_raw']:.3f} -> {calibration[held_name]['ece']:.3f}"
    )
    domain = _fit_shift(run, train, val, held_out, held_name, reporter)
    spec = replace(spec, temperature=temperature, operating_point=op)
    spec.save(run.spec_path)
    return spec, {"calibration": calibration, "operating_point": op, "domain_shift": domain}


def _fit_shift(
    run: RunDir,
    train: Predictions,
    val: Predictions,
    held_out: Predictions,
    held_name: str,
    reporter: Reporter,
) -> dict[str, Any]:
    """Fit, measure on the held-out split and save ``shift.npz``; what metrics.json records."""
    assert train.features is not None and val.features is not None
    assert train.stains is not None and val.stains is not None
    try:
        model = fit_shift_model(
            train.features, train.labels, train.stains, val.features, val.stains
        )
    except ShiftModelError as e:
        reporter.log(f"note: no domain-shift model ({e})", "note")
        return {"available": False, "reason": str(e)}
    scores = model.scores(held_out.features, held_out.stains)  # type: ignore[arg-type]
    flagged = int((scores > 1.0).sum())
    n = len(scores)
    model.info.update(
        {
            "checkpoint_sha256": sha256_file(run.checkpoint_path),
            f"{held_name}_cells": n,
            f"{held_name}_flagged_fraction": flagged / n if n else None,
        }
    )
    model.save(run.path / SHIFT_FILE)
    reporter.log(
        f"domain-shift score: flags {flagged} of {n} {held_name} cells "
        f"(threshold: 95th percentile of val)"
    )
    return {
        "available": True,
        "file": SHIFT_FILE,
        **model.info,
        f"{held_name}_flagged": flagged,
        f"{held_name}_flagged_ci95": list(wilson_interval(flagged, n)) if n else None,
        f"{held_name}_score_median": float(np.median(scores)) if n else None,
    }


def load_shift(run: RunDir) -> ShiftModel | None:
    path = run.path / SHIFT_FILE
    return ShiftModel.load(path) if path.is_file() else None
