"""Records and datasets: what every layout parser produces.

A :class:`Record` is one image file with its class index and, where the layout
has them, its subject (patient) id. Subject ids are what make honest splits
possible: cells of one patient look alike, so a patient must never be in two
splits.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leukedge.validate import UsageError

CANONICAL_CLASSES = ["hem", "all"]
POSITIVE_CLASS = "all"

# Folder/label names that mean the same two classes in the datasets we know.
CLASS_ALIASES = {
    "all": "all",
    "blast": "all",
    "blasts": "all",
    "leukemia": "all",
    "leukemic": "all",
    "hem": "hem",
    "normal": "hem",
    "healthy": "hem",
}


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what to do."""


class LayoutError(DatasetError, UsageError):
    """The folder given as a dataset is not one (missing, not a folder, unknown layout)."""


@dataclass(frozen=True)
class Record:
    path: str
    label: int
    subject: str | None = None


@dataclass
class Dataset:
    """Labelled images found under ``root`` by one layout parser."""

    root: Path
    layout: str
    classes: list[str]
    records: list[Record]
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Split named by the layout itself (C-NMC's train folds vs preliminary test set).
    official_split: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_subjects(self) -> bool:
        return bool(self.records) and all(r.subject is not None for r in self.records)

    @property
    def positive_class(self) -> str:
        return POSITIVE_CLASS if POSITIVE_CLASS in self.classes else self.classes[-1]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def subjects(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for r in self.records:
            if r.subject is not None:
                out.setdefault(r.subject, []).append(r)
        return out

    def relpath(self, path: str) -> str:
        """Path relative to the dataset root where possible (portable split files).

        Taken as written first, so a file reached through a symlinked folder keeps
        its place under the root; then with symlinks resolved.
        """
        for p, root in (
            (Path(os.path.abspath(path)), Path(os.path.abspath(self.root))),
            (Path(path).resolve(), self.root.resolve()),
        ):
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                continue
        return str(path)

    def validate(self) -> None:
        """Refuse datasets no classifier can learn from, with a message saying why."""
        if not self.records:
            raise DatasetError(
                f"no labelled images found under {self.root} (layout {self.layout}); "
                "check the path, see `leukedge data check --help` for the layouts understood"
            )
        present = [c for c, n in self.class_counts().items() if n > 0]
        if len(present) < 2:
            raise DatasetError(
                f"only one class ({', '.join(present)}) in {self.root}: a classifier needs "
                f"images of at least two classes (expected {self.classes})"
            )


def canonical_class_order(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Class list in leukedge's order and a map from found names to it.

    When every found name is an alias of ALL or HEM the classes are ``["hem",
    "all"]`` (index 1 = ALL, the positive class); otherwise names are kept and
    sorted, so any other class-folder dataset still works.
    """
    mapped = {n: CLASS_ALIASES.get(n.lower()) for n in names}
    if all(mapped.values()) and set(mapped.values()) <= set(CANONICAL_CLASSES):
        return list(CANONICAL_CLASSES), {n: str(m) for n, m in mapped.items()}
    ordered = sorted(names)
    return ordered, {n: n for n in names}
