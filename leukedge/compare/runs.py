"""Runs to compare, and the images they were all scored on.

A run is an ordinary run dir (its test predictions, ``predictions.csv``) or a
k-fold run (``oof.csv``: every image scored by the fold that held it out). Its
spec, export and bench report come from the run itself or, for a k-fold run,
from its first fold that has them: cost and latency do not depend on the fold.

Paired tests need the same images under every model. Runs scored on different
images are refused unless ``align`` is asked for; then only the images common
to all are used, and the report says how many of each run's that is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.io import read_json
from leukedge.predictions import OOF_FILE, PREDICTIONS_FILE, PredictionTable, read_predictions
from leukedge.spec import ModelSpec


class CompareError(ValueError):
    """Runs that cannot be compared as given; the message says what to do."""

    exit_code = 2  # a usage error: other runs, or --align


@dataclass
class ModelRun:
    """One model to compare: its predictions and where its spec, export and bench live."""

    path: Path
    name: str
    kind: str  # "run" | "kfold"
    table: PredictionTable
    positive_class: str
    model_dirs: list[Path]  # the run itself, or its folds in order
    spec: ModelSpec | None
    data_root: str | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.spec.arch if self.spec else "?"

    def first(self, relative: str) -> Path | None:
        """The first of the model dirs (run, or folds) that holds ``relative``."""
        for d in self.model_dirs:
            if (d / relative).exists():
                return d / relative
        return None


def load_run(path: str | Path) -> ModelRun:
    """A run dir or a k-fold run dir, with its per-image predictions."""
    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"{path} is not a folder (give run dirs made by `leukedge train`)")
    folds_json = path / "folds.json"
    if folds_json.is_file():
        saved = read_json(folds_json)
        if not (path / OOF_FILE).is_file():
            raise CompareError(
                f"{path} is an unfinished {saved['folds']}-fold run (no {OOF_FILE}); re-run its "
                "`leukedge train ... --folds` command to finish it"
            )
        dirs = [path / f"fold-{k}" for k in range(int(saved["folds"]))]
        table = read_predictions(path / OOF_FILE)
        kind, positive, root = "kfold", saved["positive_class"], saved.get("data_root")
    else:
        if not (path / "spec.json").is_file():
            raise CompareError(f"{path} is not a run dir (no spec.json, no folds.json)")
        if not (path / PREDICTIONS_FILE).is_file():
            raise CompareError(
                f"{path} has no {PREDICTIONS_FILE} (runs trained before it existed): write it "
                f"with `leukedge evaluate {path}`"
            )
        dirs = [path]
        table = read_predictions(path / PREDICTIONS_FILE)
        kind, positive = "run", ModelSpec.load(path / "spec.json").positive_class
        split = path / "split.json"
        root = read_json(split).get("data_root") if split.is_file() else None
    spec_path = next((d / "spec.json" for d in dirs if (d / "spec.json").is_file()), None)
    metrics_path = path / "metrics.json"
    return ModelRun(
        path=path,
        name=path.name,
        kind=kind,
        table=table,
        positive_class=positive,
        model_dirs=dirs,
        spec=ModelSpec.load(spec_path) if spec_path else None,
        data_root=root,
        metrics=read_json(metrics_path) if metrics_path.is_file() else {},
    )


def unique_names(runs: list[ModelRun]) -> None:
    """Name runs by folder; where two share a name, prefix their parents until unique."""
    for depth in range(1, 6):
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            for r, n in zip(runs, names, strict=True):
                r.name = n
            return
    for i, r in enumerate(runs):
        r.name = f"{r.path.name}#{i + 1}"


@dataclass
class Aligned:
    """The images every run scored, in one order, with each run's probabilities."""

    files: list[str]
    subjects: list[str | None]
    labels: np.ndarray
    classes: list[str]
    positive_index: int
    probs: dict[str, np.ndarray]  # run name -> (N, C)
    scored: dict[str, int]  # run name -> images it scored
    aligned: bool  # True when runs scored different images and only the common ones are used

    @property
    def n(self) -> int:
        return len(self.files)


def align_runs(runs: list[ModelRun], align: bool = False) -> Aligned:
    """The common images of ``runs``; refused when they differ unless ``align``."""
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs")
    classes = runs[0].table.classes
    positive = runs[0].positive_class
    for r in runs[1:]:
        if r.table.classes != classes or r.positive_class != positive:
            raise CompareError(
                f"{r.name} has classes {r.table.classes} (positive {r.positive_class}), "
                f"{runs[0].name} {classes} (positive {positive}): not the same task"
            )
    sets = [set(r.table.files) for r in runs]
    common = set.intersection(*sets)
    differ = any(s != sets[0] for s in sets[1:])
    scored = {r.name: len(r.table) for r in runs}
    if differ and not align:
        counts = ", ".join(f"{n}: {k}" for n, k in scored.items())
        raise CompareError(
            f"the runs were evaluated on different images ({counts}; {len(common)} in common). "
            "Paired comparisons need the same images: pass --align to use only the "
            f"{len(common)} common ones, or evaluate the runs on the same split"
        )
    if not common:
        raise CompareError("the runs have no image in common: nothing to compare")
    base = runs[0].table
    order = [i for i, f in enumerate(base.files) if f in common]
    files = [base.files[i] for i in order]
    labels = base.labels[order]
    probs: dict[str, np.ndarray] = {}
    for r in runs:
        index = {f: i for i, f in enumerate(r.table.files)}
        idx = [index[f] for f in files]
        mismatch = np.flatnonzero(r.table.labels[idx] != labels)
        if mismatch.size:
            bad = files[int(mismatch[0])]
            raise CompareError(
                f"{r.name} and {runs[0].name} give {bad} different labels: not the same dataset"
            )
        probs[r.name] = r.table.probs[idx]
    return Aligned(
        files=files,
        subjects=[base.subjects[i] for i in order],
        labels=labels,
        classes=list(classes),
        positive_index=classes.index(positive),
        probs=probs,
        scored=scored,
        aligned=differ,
    )
