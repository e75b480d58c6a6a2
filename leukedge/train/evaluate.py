"""Evaluation of a PyTorch model on records: logits, metrics, per-subject accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from leukedge.data.records import Dataset, Record
from leukedge.metrics import classification_metrics, softmax
from leukedge.predictions import PredictionTable
from leukedge.spec import ModelSpec
from leukedge.train.dataset import CellDataset, make_loader
from leukedge.train.features import WithFeatures


@dataclass
class Predictions:
    logits: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,)
    records: list[Record]
    errors: list[tuple[str, str]] = field(default_factory=list)
    loss: float = float("nan")
    features: np.ndarray | None = None  # (N, D) penultimate features when asked for
    stains: np.ndarray | None = None  # (N, 6) Lab stain statistics, with the features


@torch.no_grad()
def predict(
    model: nn.Module,
    records: Sequence[Record],
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    loss_fn: nn.Module | None = None,
    progress: Callable[[int], None] | None = None,
    features: bool = False,
) -> Predictions:
    """Logits (and penultimate features) for every readable record, in record order.

    Unreadable records are listed in ``errors``.
    """
    device = torch.device(device)
    model.eval()
    net: nn.Module = WithFeatures(model) if features else model
    dataset = CellDataset(records, spec, train=False, stains=features)
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    logits, feats, stains, indices, errors = [], [], [], [], []
    total_loss, seen = 0.0, 0
    for batch in loader:
        errors.extend(batch["errors"])
        if batch["x"] is not None:
            x = batch["x"].to(device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = net(x)
                if features:
                    out, f = out
                    feats.append(f.float().cpu().numpy())
                    stains.append(batch["stain"])
                out = out.float()
            if loss_fn is not None:
                total_loss += float(loss_fn(out, batch["y"].to(device))) * len(x)
                seen += len(x)
            logits.append(out.cpu().numpy())
            indices.append(batch["index"].numpy())
        if progress:
            progress(len(batch["errors"]) + (0 if batch["x"] is None else len(batch["x"])))
    idx = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    kept = [dataset.records[i] for i in idx]
    return Predictions(
        logits=np.concatenate(logits).astype(np.float32)
        if logits
        else np.zeros((0, spec.num_classes), np.float32),
        labels=np.asarray([r.label for r in kept], dtype=np.int64),
        records=kept,
        errors=errors,
        loss=total_loss / seen if seen else float("nan"),
        features=_stack(feats, 0) if features else None,
        stains=_stack(stains, 6) if features else None,
    )


def _stack(parts: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float64)


def per_subject_accuracy(pred: Predictions, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy per subject: a model that fails one patient entirely shows here."""
    out: dict[str, dict[str, Any]] = {}
    hits = pred.logits.argmax(axis=1) == pred.labels if len(pred.labels) else np.zeros(0, bool)
    for i, r in enumerate(pred.records):
        if r.subject is None:
            continue
        s = out.setdefault(r.subject, {"class": classes[r.label], "n": 0, "correct": 0})
        s["n"] += 1
        s["correct"] += int(hits[i])
    for s in out.values():
        s["accuracy"] = s["correct"] / s["n"]
    return dict(sorted(out.items()))


def metrics_of(pred: Predictions, spec: ModelSpec) -> dict[str, Any]:
    if len(pred.labels) == 0:
        raise ValueError("no readable images to evaluate")
    m = classification_metrics(pred.labels, softmax(pred.logits), spec.classes, spec.positive_index)
    m["loss"] = pred.loss
    return m


def prediction_table(pred: Predictions, spec: ModelSpec, dataset: Dataset) -> PredictionTable:
    """Per-image probabilities with file (relative to the data root), subject and label."""
    return PredictionTable(
        files=[dataset.relpath(r.path) for r in pred.records],
        subjects=[r.subject for r in pred.records],
        labels=pred.labels.astype(np.int64),
        probs=softmax(pred.logits),
        classes=list(spec.classes),
    )
