"""K-fold cross-validation by subject: ``leukedge train ... --folds K``.

A 40-image test split moves 2.5 points per image; the model differences the
study asks about are that small. Cross-validation scores every image once, by a
model that never saw its subject, so the comparison rests on all the data.

```
RUN/
  folds.json      settings, and the fold of every file (scikit-learn's StratifiedGroupKFold:
                  stratified by class, grouped by subject, seeded)
  fold-0/ ...     one ordinary run dir per fold: test = the fold, val (early stopping)
                  carved by subject from the other folds, train = the rest
  oof.csv         the folds' test predictions pooled (out-of-fold), with a fold column
  metrics.json    every metric per fold, mean ± std over folds, and on the pooled
                  predictions with 95 % bootstrap intervals (subjects, else images)
```
Each fold trains as a resumed run whose split and spec were written beforehand,
so re-running the same command continues the unfinished folds and skips the done
ones; ``leukedge export RUN/fold-2`` exports one of them as usual.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.data.layouts import load_dataset
from leukedge.data.records import Dataset, DatasetError, Record
from leukedge.data.splits import Split, check_no_subject_leak
from leukedge.io import atomic_write_json, read_json
from leukedge.predictions import (
    OOF_FILE,
    PREDICTIONS_FILE,
    PredictionTable,
    read_predictions,
    write_predictions,
)
from leukedge.progress import Reporter
from leukedge.rundir import RunDir
from leukedge.stats import METRICS, bootstrap_interval, resampling_units
from leukedge.stats.scores import Scorer, point_scores
from leukedge.train.config import TrainConfig
from leukedge.train.loop import RunExistsError, new_run_spec, train

FOLDS_FILE = "folds.json"
VAL_FRACTION = 0.15  # of the training folds, by subject, for early stopping
# Settings a re-run may change without making it another experiment (as --resume allows).
MAY_CHANGE = ("epochs", "workers", "device", "data", "out")


class FoldsError(DatasetError):
    """A k-fold request that cannot be honoured as given."""


@dataclass
class Folds:
    """The fold of every record (by path), and how the folds were drawn."""

    fold_of: dict[str, int]
    k: int
    seed: int
    unit: str  # "subject" or "image"
    warnings: list[str]

    def test_paths(self, fold: int) -> set[str]:
        return {p for p, f in self.fold_of.items() if f == fold}


def make_folds(dataset: Dataset, k: int, seed: int = 0) -> Folds:
    """Stratified, subject-grouped, seeded folds (scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise FoldsError(f"--folds must be at least 2, got {k}")
    records = dataset.records
    labels = np.asarray([r.label for r in records])
    notes: list[str] = []
    if dataset.has_subjects:
        unit, groups = "subject", [r.subject for r in records]
    else:
        unit, groups = "image", [r.path for r in records]
        notes.append(
            "no subject ids: folds by image; images of one patient may land in two folds "
            "and results are optimistic"
        )
    n_groups = len(set(groups))
    if n_groups < k:
        raise FoldsError(f"--folds {k} needs at least {k} {unit}s; {dataset.root} has {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fold, (_, test_idx) in enumerate(
            splitter.split(np.zeros(len(records)), labels, groups)
        ):
            for i in test_idx:
                fold_of[records[i].path] = fold
    notes += [str(w.message) for w in caught]
    for fold in range(k):  # as check_no_subject_leak does for train/val/test
        check_no_subject_leak(
            dataset, {p: "test" if f == fold else "rest" for p, f in fold_of.items()}
        )
    return Folds(fold_of, k, seed, unit, notes)


def _carve_val(rest: Dataset, fraction: float, seed: int) -> dict[str, str]:
    """train/val of the training folds by subject, stratified by class.

    Each class gives whole subjects to val until its share reaches ``fraction`` of
    its images, and at least one subject whenever it has two (so early stopping sees
    both classes even with a handful of subjects).
    """
    rng = random.Random(seed)
    units: dict[str, list[Record]] = {}
    for r in rest.records:
        units.setdefault(r.subject if r.subject is not None else r.path, []).append(r)
    by_class: dict[int, list[str]] = {}
    for uid, recs in sorted(units.items()):
        majority = Counter(r.label for r in recs).most_common(1)[0][0]
        by_class.setdefault(majority, []).append(uid)
    assignment: dict[str, str] = {}
    for label in sorted(by_class):
        uids = by_class[label]
        rng.shuffle(uids)
        target = fraction * sum(len(units[u]) for u in uids)
        taken = 0
        for i, uid in enumerate(uids):
            if i == len(uids) - 1 or (i > 0 and taken + len(units[uid]) / 2.0 > target):
                break  # the last subject of a class stays in train
            for r in units[uid]:
                assignment[r.path] = "val"
            taken += len(units[uid])
    for r in rest.records:
        assignment.setdefault(r.path, "train")
    return assignment


def fold_split(dataset: Dataset, folds: Folds, fold: int) -> Split:
    """Test = the fold; val carved by subject (stratified) from the other folds; train = the rest."""
    test = folds.test_paths(fold)
    rest = Dataset(
        dataset.root,
        dataset.layout,
        dataset.classes,
        [r for r in dataset.records if r.path not in test],
    )
    assignment = _carve_val(rest, VAL_FRACTION, folds.seed + fold)
    assignment.update(dict.fromkeys(test, "test"))
    check_no_subject_leak(dataset, assignment)
    return Split(
        assignment,
        folds.unit,
        "kfold",
        folds.seed,
        (1.0 - VAL_FRACTION, VAL_FRACTION, 0.0),
        list(folds.warnings),
    )


def _folds_to_json(dataset: Dataset, folds: Folds, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "version": 1,
        "kind": "kfold",
        "folds": folds.k,
        "seed": folds.seed,
        "unit": folds.unit,
        "val_fraction": VAL_FRACTION,
        "data_root": str(dataset.root.resolve()),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "positive_class": dataset.positive_class,
        "warnings": folds.warnings,
        "config": cfg.to_dict(),
        "files": [
            {
                "path": dataset.relpath(r.path),
                "label": dataset.classes[r.label],
                "subject": r.subject,
                "fold": folds.fold_of[r.path],
            }
            for r in dataset.records
        ],
    }


def _folds_from_json(data: dict[str, Any], dataset: Dataset) -> Folds:
    by_rel = {dataset.relpath(r.path): r.path for r in dataset.records}
    missing = [f["path"] for f in data["files"] if f["path"] not in by_rel]
    if missing:
        raise FoldsError(
            f"{len(missing)} file(s) of the saved folds are not in {dataset.root} "
            f"(e.g. {missing[0]}); pass the run's --data"
        )
    fold_of = {by_rel[f["path"]]: int(f["fold"]) for f in data["files"]}
    return Folds(fold_of, int(data["folds"]), int(data["seed"]), data["unit"], data["warnings"])


def _check_same_experiment(saved: dict[str, Any], cfg: TrainConfig, k: int, run: Path) -> None:
    new = cfg.to_dict()
    # Settings added to leukedge after the run started were at their defaults then.
    old = {**TrainConfig().to_dict(), **saved["config"]}
    changed = [
        f"{key} {old.get(key)!r} -> {new[key]!r}"
        for key in new
        if key not in MAY_CHANGE and old.get(key) != new[key]
    ]
    if int(saved["folds"]) != k:
        changed.insert(0, f"folds {saved['folds']} -> {k}")
    if changed:
        raise RunExistsError(
            f"{run} holds a {saved['folds']}-fold run with other settings ({'; '.join(changed)}); "
            "re-run it with its own settings to continue it, or choose another --out"
        )


def _fold_spec_and_config(
    cfg: TrainConfig, dataset: Dataset, split: Split, fold_dir: Path, reporter: Reporter
) -> None:
    """split.json, spec.json and config.json of a fold, as a new run would write them."""
    fold_cfg = TrainConfig.from_dict({**cfg.to_dict(), "out": str(fold_dir)})
    fold_cfg, spec = new_run_spec(fold_cfg, dataset, split.records(dataset, "train"), reporter)
    fold_dir.mkdir(parents=True, exist_ok=True)
    split.save(fold_dir / "split.json", dataset)
    spec.save(fold_dir / "spec.json")
    atomic_write_json(fold_dir / "config.json", fold_cfg.to_dict())


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold-{fold}"


def is_kfold_run(path: str | Path) -> bool:
    return (Path(path) / FOLDS_FILE).is_file()


def train_folds(cfg: TrainConfig, k: int, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train K fold runs under ``cfg.out`` (continuing unfinished ones); pool and summarise."""
    reporter = reporter or Reporter()
    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FoldsError(
            "--folds trains the folds one after another in one process; run it without "
            "torchrun (or train each fold's run dir under torchrun yourself)"
        )
    if cfg.split != "subject":
        raise FoldsError(
            "--folds draws its own subject-level folds; --split official names a fixed test "
            "set: use one or the other"
        )
    run = Path(cfg.out)
    dataset = load_dataset(cfg.data, cfg.layout)
    if (run / FOLDS_FILE).is_file():
        saved = read_json(run / FOLDS_FILE)
        _check_same_experiment(saved, cfg, k, run)
        folds = _folds_from_json(saved, dataset)
        reporter.log(f"continuing the {k}-fold run in {run}")
    else:
        if RunDir(run).spec_path.exists():
            raise RunExistsError(f"{run} holds a single-split run; choose another --out")
        folds = make_folds(dataset, k, cfg.seed)
        for w in folds.warnings + dataset.notes:
            reporter.log(f"note: {w}", "note")
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / FOLDS_FILE, _folds_to_json(dataset, folds, cfg))

    t0 = time.perf_counter()
    for fold in range(k):
        path = fold_dir(run, fold)
        if (path / "metrics.json").is_file() and (path / PREDICTIONS_FILE).is_file():
            reporter.log(f"fold {fold + 1}/{k}: done already ({path})")
            continue
        reporter.log(f"fold {fold + 1}/{k}: {path}")
        if not (path / "split.json").is_file():
            split = fold_split(dataset, folds, fold)
            _fold_spec_and_config(cfg, dataset, split, path, reporter)
        fold_cfg = TrainConfig.from_dict({**cfg.to_dict(), "out": str(path)})
        train(fold_cfg, resume=True, reporter=reporter)
    summary = summarize_folds(run)
    summary["wall_seconds_this_call"] = time.perf_counter() - t0
    return summary


def pool_folds(run: str | Path) -> PredictionTable:
    """The folds' test predictions as one out-of-fold table, written to ``oof.csv``."""
    saved = read_json(Path(run) / FOLDS_FILE)
    tables = [read_predictions(fold_dir(run, f) / PREDICTIONS_FILE) for f in range(saved["folds"])]
    oof = PredictionTable.concat(tables, range(len(tables)))
    write_predictions(Path(run) / OOF_FILE, oof)
    return oof


def summarize_folds(run: str | Path, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """metrics.json of a k-fold run: per fold, mean ± std over folds, pooled with 95 % CIs."""
    run = Path(run)
    saved = read_json(run / FOLDS_FILE)
    oof = pool_folds(run)
    pos = oof.classes.index(saved["positive_class"])
    fold_of = np.asarray(oof.folds)
    per_fold = []
    for f in range(saved["folds"]):
        m = read_json(fold_dir(run, f) / "metrics.json")
        sel = fold_of == f
        per_fold.append(
            {
                "fold": f,
                "n": int(sel.sum()),
                **point_scores(oof.labels[sel], oof.probs[sel], pos),
                "best_epoch": m.get("best_epoch"),
                "epochs_run": m.get("epochs_run"),
                "wall_seconds": m.get("wall_seconds"),
            }
        )
    units = resampling_units(oof.labels, oof.subjects, oof.files)
    scorer = Scorer(oof.labels, oof.probs, pos)
    pooled = {
        name: bootstrap_interval(scorer.metric(name), units, n_resamples, seed).to_dict()
        for name in METRICS
    }
    first = read_json(fold_dir(run, 0) / "metrics.json")
    result = {
        "kind": "kfold",
        "model": saved["config"]["model"],
        "backbone": first.get("backbone"),
        "parameters": first.get("parameters"),
        "folds": saved["folds"],
        "split_unit": saved["unit"],
        "images": len(oof),
        "subjects": len({s for s in oof.subjects if s}) or None,
        "per_fold": per_fold,
        "mean": {k: _nanstat(np.nanmean, [r[k] for r in per_fold]) for k in METRICS},
        "std": {k: _nanstat(_std, [r[k] for r in per_fold]) for k in METRICS},
        "pooled": pooled,
        "bootstrap": {
            "unit": units.kind,
            "units": units.count,
            "resamples": n_resamples,
            "seed": seed,
            "method": "percentile, resampling stratified by class",
        },
        "wall_seconds": sum(r["wall_seconds"] or 0.0 for r in per_fold),
        "warnings": saved["warnings"],
    }
    atomic_write_json(run / "metrics.json", result)
    return result


def _std(values: list[float]) -> float:
    return float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan")


def _nanstat(fn: Any, values: list[float]) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).any():
        return None
    v = float(fn(arr))
    return v if np.isfinite(v) else None
