"""Per-image predictions on disk: ``predictions.csv`` of a run, ``oof.csv`` of a k-fold run.

Comparing models needs the same images scored by each, image by image (paired
tests), not only summary metrics. So every evaluation leaves one row per image:

```
file,subject,label,prob_<class0>,prob_<class1>[,fold]
```

``file`` is relative to the dataset root (as in ``split.json``), so runs made on
different machines line up; ``subject`` is empty where the layout has none;
``label`` is the class name; probabilities are softmax outputs. Pure Python and
numpy: read on machines without torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.io import atomic_write_text

PREDICTIONS_FILE = "predictions.csv"
OOF_FILE = "oof.csv"
PROB_PREFIX = "prob_"


class PredictionsError(ValueError):
    """A predictions file that cannot be read or does not fit the others."""


@dataclass
class PredictionTable:
    """One row per image: who it is, what it is, what the model said."""

    files: list[str]
    subjects: list[str | None]
    labels: np.ndarray  # (N,) class indices into ``classes``
    probs: np.ndarray  # (N, C) float64
    classes: list[str]
    folds: np.ndarray | None = None  # (N,) fold of each image in an out-of-fold table

    def __len__(self) -> int:
        return len(self.files)

    @property
    def has_subjects(self) -> bool:
        return bool(self.subjects) and all(s for s in self.subjects)

    def subset(self, order: Sequence[int]) -> PredictionTable:
        idx = np.asarray(order, dtype=np.int64)
        return PredictionTable(
            files=[self.files[i] for i in idx],
            subjects=[self.subjects[i] for i in idx],
            labels=self.labels[idx],
            probs=self.probs[idx],
            classes=list(self.classes),
            folds=None if self.folds is None else self.folds[idx],
        )

    @staticmethod
    def concat(tables: Sequence[PredictionTable], folds: Sequence[int]) -> PredictionTable:
        """Pool the test predictions of several folds into one out-of-fold table."""
        if not tables:
            raise PredictionsError("no predictions to pool")
        classes = tables[0].classes
        if any(t.classes != classes for t in tables):
            raise PredictionsError("folds disagree on the classes")
        return PredictionTable(
            files=[f for t in tables for f in t.files],
            subjects=[s for t in tables for s in t.subjects],
            labels=np.concatenate([t.labels for t in tables]),
            probs=np.concatenate([t.probs for t in tables]),
            classes=list(classes),
            folds=np.concatenate(
                [np.full(len(t), k, dtype=np.int64) for t, k in zip(tables, folds, strict=True)]
            ),
        )


def to_csv(table: PredictionTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["file", "subject", "label", *(PROB_PREFIX + c for c in table.classes)]
    if table.folds is not None:
        header.append("fold")
    writer.writerow(header)
    for i, f in enumerate(table.files):
        row = [f, table.subjects[i] or "", table.classes[int(table.labels[i])]]
        row += [f"{p:.8g}" for p in table.probs[i]]
        if table.folds is not None:
            row.append(str(int(table.folds[i])))
        writer.writerow(row)
    return buf.getvalue()


def write_predictions(path: str | Path, table: PredictionTable) -> Path:
    return atomic_write_text(path, to_csv(table))


def read_predictions(path: str | Path) -> PredictionTable:
    """Read a predictions.csv / oof.csv back; a malformed file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"no predictions file at {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise PredictionsError(f"{path} is empty")
    header = rows[0]
    classes = [h[len(PROB_PREFIX) :] for h in header if h.startswith(PROB_PREFIX)]
    if header[:3] != ["file", "subject", "label"] or len(classes) < 2:
        raise PredictionsError(
            f"{path} is not a leukedge predictions file (header {header[:6]}); expected "
            "file,subject,label,prob_<class>,..."
        )
    prob_cols = [header.index(PROB_PREFIX + c) for c in classes]
    fold_col = header.index("fold") if "fold" in header else None
    index = {c: k for k, c in enumerate(classes)}
    files, subjects, labels, probs, folds = [], [], [], [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            files.append(row[0])
            subjects.append(row[1] or None)
            labels.append(index[row[2]])
            probs.append([float(row[c]) for c in prob_cols])
            if fold_col is not None:
                folds.append(int(row[fold_col]))
        except (KeyError, IndexError, ValueError) as e:
            raise PredictionsError(f"{path} line {line_no}: cannot read {row} ({e})") from None
    if len(set(files)) != len(files):
        raise PredictionsError(f"{path} lists some images more than once")
    return PredictionTable(
        files=files,
        subjects=subjects,
        labels=np.asarray(labels, dtype=np.int64),
        probs=np.asarray(probs, dtype=np.float64).reshape(len(files), len(classes)),
        classes=classes,
        folds=np.asarray(folds, dtype=np.int64) if fold_col is not None else None,
    )
