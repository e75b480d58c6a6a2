"""Train/val/test splits that do not leak patients.

Cells of one subject share stain, scanner day and disease state, so an
image-level split of C-NMC puts near-duplicates on both sides and inflates
results. Here a subject is assigned to exactly one split by construction,
subjects are stratified by class, and the whole assignment is written to
``split.json`` so every later step (export calibration, bench) uses the same one.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukedge.data.records import Dataset, DatasetError, Record
from leukedge.io import atomic_write_json
from leukedge.validate import UnsafePathError, inside_root

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass
class Split:
    """Which record is in which split, and how that was decided."""

    assignment: dict[str, str]  # record path -> "train" | "val" | "test"
    unit: str  # "subject" or "image"
    mode: str  # "subject" (seeded, stratified) or "official"
    seed: int
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    warnings: list[str] = field(default_factory=list)

    def records(self, dataset: Dataset, name: str) -> list[Record]:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return [r for r in dataset.records if self.assignment.get(r.path) == name]

    def counts(self, dataset: Dataset) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(dataset.classes, 0) for s in SPLITS}
        for r in dataset.records:
            s = self.assignment.get(r.path)
            if s:
                out[s][dataset.classes[r.label]] += 1
        return out

    def to_dict(self, dataset: Dataset) -> dict[str, Any]:
        subjects_per_split: dict[str, set[str]] = defaultdict(set)
        for r in dataset.records:
            if r.subject is not None and r.path in self.assignment:
                subjects_per_split[self.assignment[r.path]].add(r.subject)
        return {
            "version": 1,
            "data_root": str(dataset.root.resolve()),
            "layout": dataset.layout,
            "classes": dataset.classes,
            "unit": self.unit,
            "mode": self.mode,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "warnings": self.warnings,
            "counts": self.counts(dataset),
            "subjects": {s: sorted(subjects_per_split.get(s, set())) for s in SPLITS},
            "files": [
                {
                    "path": dataset.relpath(r.path),
                    "label": dataset.classes[r.label],
                    "subject": r.subject,
                    "split": self.assignment[r.path],
                }
                for r in dataset.records
                if r.path in self.assignment
            ],
        }

    def save(self, path: str | Path, dataset: Dataset) -> Path:
        return atomic_write_json(path, self.to_dict(dataset))


def check_no_subject_leak(dataset: Dataset, assignment: dict[str, str]) -> None:
    """Raise if any subject has images in two splits."""
    where: dict[str, set[str]] = defaultdict(set)
    for r in dataset.records:
        if r.subject is not None and r.path in assignment:
            where[r.subject].add(assignment[r.path])
    leaked = {s: sorted(v) for s, v in where.items() if len(v) > 1}
    if leaked:
        example = ", ".join(f"{s}: {v}" for s, v in list(leaked.items())[:5])
        raise DatasetError(f"{len(leaked)} subject(s) in more than one split ({example})")


def _allocate(
    units: list[tuple[str, int]], fractions: tuple[float, float, float]
) -> dict[str, str]:
    """Assign shuffled units (id, image count) to splits so image counts follow ``fractions``.

    Test and val are filled first up to their share; with three or more units each
    split gets at least one, so every split sees the class.
    """
    total = sum(n for _, n in units)
    out: dict[str, str] = {}
    remaining = list(units)
    for name, frac in (("test", fractions[2]), ("val", fractions[1])):
        target = frac * total
        taken = 0
        while remaining and len(remaining) > 1:
            uid, n = remaining[0]
            must_take = taken == 0 and len(units) >= 3 and frac > 0
            if not must_take and taken + n / 2.0 > target:
                break
            out[uid] = name
            taken += n
            remaining.pop(0)
    for uid, _ in remaining:
        out[uid] = "train"
    return out


def subject_split(
    dataset: Dataset, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Split:
    """Class-stratified, seeded split by subject (or by image when there are no subjects)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DatasetError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    rng = random.Random(seed)
    warnings: list[str] = []
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    members: dict[str, list[Record]] = {}
    if dataset.has_subjects:
        unit = "subject"
        for subject, recs in sorted(dataset.subjects().items()):
            majority = Counter(r.label for r in recs).most_common(1)[0][0]
            by_class[majority].append((subject, len(recs)))
            members[subject] = recs
    else:
        unit = "image"
        warnings.append(
            "no subject ids: split by image; images of one patient may land in two splits "
            "and results are optimistic"
        )
        for r in dataset.records:
            by_class[r.label].append((r.path, 1))
            members[r.path] = [r]
    assignment: dict[str, str] = {}
    for label in sorted(by_class):
        units = by_class[label]
        rng.shuffle(units)
        if len(units) < 3:
            warnings.append(
                f"class {dataset.classes[label]!r} has only {len(units)} {unit}(s): "
                "not every split can contain it"
            )
        for uid, split in _allocate(units, fractions).items():
            for r in members[uid]:
                assignment[r.path] = split
    check_no_subject_leak(dataset, assignment)
    return Split(assignment, unit, "subject", seed, fractions, warnings)


def official_split(dataset: Dataset, val_fraction: float = 0.15, seed: int = 0) -> Split:
    """C-NMC's own split: train folds -> train/val by subject, preliminary test set -> test."""
    if not dataset.official_split or "test" not in dataset.official_split.values():
        raise DatasetError(
            f"--split official needs a layout with an official test set (C-NMC with "
            f"validation_data/ and its labels CSV); {dataset.root} ({dataset.layout}) has none. "
            "Use --split subject."
        )
    trainval = Dataset(
        dataset.root,
        dataset.layout,
        dataset.classes,
        [r for r in dataset.records if dataset.official_split.get(r.path) == "trainval"],
    )
    inner = subject_split(trainval, (1.0 - val_fraction, val_fraction, 0.0), seed)
    assignment = dict(inner.assignment)
    for r in dataset.records:
        if dataset.official_split.get(r.path) == "test":
            assignment[r.path] = "test"
    warnings = list(inner.warnings)
    try:
        check_no_subject_leak(dataset, assignment)
    except DatasetError as e:
        warnings.append(f"official split shares subjects between train and test: {e}")
    return Split(
        assignment, inner.unit, "official", seed, (1.0 - val_fraction, val_fraction, 0.0), warnings
    )


def make_split(
    dataset: Dataset,
    mode: str = "subject",
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Split:
    if mode == "subject":
        return subject_split(dataset, fractions, seed)
    if mode == "official":
        return official_split(dataset, fractions[1] / max(1e-9, fractions[0] + fractions[1]), seed)
    raise DatasetError(f"unknown split mode {mode!r}; choose subject or official")


def load_split(path: str | Path, dataset: Dataset) -> Split:
    """Read ``split.json`` back against a parsed dataset (paths relative to its root).

    Anything malformed, or a file entry that leads outside the dataset root, is a
    :class:`DatasetError` naming the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no split file at {path}")
    data = read_split_file(path)
    by_rel = {dataset.relpath(r.path): r.path for r in dataset.records}
    assignment = {}
    missing = 0
    for i, f in enumerate(data["files"]):
        where = f"{path}: files[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            raise DatasetError(f"{where} is not an object with a 'path'")
        if f.get("split") not in SPLITS:
            raise DatasetError(f"{where}: split {f.get('split')!r} is not one of {SPLITS}")
        try:
            inside_root(dataset.root, f["path"], "path", follow_links=False)
        except UnsafePathError as e:
            raise DatasetError(f"{where}: {e}") from None
        real = by_rel.get(f["path"])
        if real is None:
            missing += 1
            continue
        assignment[real] = f["split"]
    warnings = [str(w) for w in data["warnings"]]
    if missing:
        warnings.append(f"{missing} file(s) of {path} are no longer in {dataset.root}")
    return Split(
        assignment,
        data["unit"],
        data["mode"],
        data["seed"],
        data["fractions"],
        warnings,
    )


def read_split_file(path: str | Path) -> dict[str, Any]:
    """split.json's fields checked for type; DatasetError saying what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}): the run's split is lost") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a split file (not a JSON object)")
    if not isinstance(data.get("files"), list):
        raise DatasetError(f"{path} is not a split file (no 'files' list)")
    if data.get("unit") not in ("subject", "image"):
        raise DatasetError(f"{path}: unit {data.get('unit')!r} is not subject or image")
    if not isinstance(data.get("mode"), str):
        raise DatasetError(f"{path}: mode {data.get('mode')!r} is not a string")
    seed = data.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"{path}: seed {seed!r} is not a whole number")
    fractions = data.get("fractions", list(DEFAULT_FRACTIONS))
    if (
        not isinstance(fractions, list)
        or len(fractions) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fractions)
    ):
        raise DatasetError(f"{path}: fractions {fractions!r} are not 3 numbers")
    if not isinstance(data.get("data_root", ""), str):
        raise DatasetError(f"{path}: data_root {data.get('data_root')!r} is not a path")
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: classes {classes!r} are not a list of names")
    warnings = data.get("warnings", [])
    if not isinstance(warnings, list):
        raise DatasetError(f"{path}: warnings {warnings!r} is not a list")
    a, b, c = (float(v) for v in fractions)
    return {**data, "fractions": (a, b, c), "warnings": warnings}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
