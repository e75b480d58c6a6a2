"""Dataset layouts understood by ``--data`` and their auto-detection.

- ``cnmc``: C-NMC 2019 as distributed on Kaggle (train folds + labelled
  preliminary test set; the unlabelled final test set is ignored).
- ``allidb2``: a flat folder of ALL-IDB2 crops ``ImXXX_Y.jpg|tif`` (Y=1 ALL).
- ``synthetic``: output of ``leukedge data synth`` (class folders with subjects).
- ``folders``: ``DATA/<class>/*.{bmp,png,jpg,tif}``, subjects from an optional CSV.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from leukedge.data.csvfiles import read_rows
from leukedge.data.records import (
    Dataset,
    DatasetError,
    LayoutError,
    Record,
    canonical_class_order,
)
from leukedge.imaging.images import is_image_file
from leukedge.validate import UnsafePathError, inside_root

CNMC_NAME = re.compile(
    r"^UID_(?P<subject>[A-Za-z]*\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)\.", re.I
)
ALLIDB_NAME = re.compile(r"^Im(?P<index>\d{3})_(?P<label>[01])\.(jpe?g|tiff?)$", re.I)
CNMC_LABELS_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
SUBJECTS_CSV = "subjects.csv"

LAYOUTS_HELP = """\
Layouts understood (auto-detected):
  cnmc       C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/
               UID_<subject>_<image>_<cell>_<all|hem>.bmp
             + validation_data/C-NMC_test_prelim_phase_data/<n>.bmp
               with C-NMC_test_prelim_phase_data_labels.csv (optional)
  allidb2    a flat folder of ImXXX_Y.jpg|tif (Y=1 ALL, 0 healthy)
  synthetic  the output folder of `leukedge data synth`
  folders    DATA/<class>/*.{bmp,png,jpg,tif}
             + optional DATA/subjects.csv with columns file,subject"""


# Folders of cells awaiting labels (`leukedge data cells`): not a class.
UNLABELLED = ("unlabelled", "unlabeled")


def normalize_subject(raw: str) -> str:
    """Subject ids compare case-insensitively (C-NMC has both ``H3`` and ``h3``)."""
    return raw.strip().upper()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def find_cnmc_root(path: Path) -> Path | None:
    """The ``C-NMC_Leukemia`` folder at or just below ``path``, if any."""
    for candidate in (path, path / "C-NMC_Leukemia"):
        if (candidate / "training_data").is_dir() and any(
            (candidate / "training_data").glob("fold_*")
        ):
            return candidate
    return None


def parse_cnmc(path: Path) -> Dataset:
    root = find_cnmc_root(path)
    if root is None:
        raise DatasetError(f"{path} is not a C-NMC folder (no training_data/fold_*)")
    classes = ["hem", "all"]
    records: list[Record] = []
    problems: list[tuple[str, str]] = []
    official: dict[str, str] = {}
    for fold in sorted((root / "training_data").glob("fold_*")):
        for cls_dir in sorted(p for p in fold.iterdir() if p.is_dir()):
            cls = cls_dir.name.lower()
            if cls not in classes:
                problems.append((str(cls_dir), "unexpected class folder, ignored"))
                continue
            for f in _images_in(cls_dir):
                m = CNMC_NAME.match(f.name)
                if not m:
                    problems.append(
                        (str(f), "file name is not UID_<subject>_<image>_<cell>_<class>")
                    )
                    continue
                if m["cls"].lower() != cls:
                    problems.append(
                        (str(f), f"name says {m['cls']} but folder says {cls}; skipped")
                    )
                    continue
                records.append(Record(str(f), classes.index(cls), normalize_subject(m["subject"])))
                official[str(f)] = "trainval"
    prelim = _parse_cnmc_prelim(root, classes, problems)
    for r in prelim:
        official[r.path] = "test"
    records.extend(prelim)
    notes = []
    if not prelim:
        notes.append(
            "no labelled preliminary test set found (validation_data/); --split official needs it"
        )
    return Dataset(root, "cnmc", classes, records, problems, official, notes)


def _parse_cnmc_prelim(
    root: Path, classes: list[str], problems: list[tuple[str, str]]
) -> list[Record]:
    """The labelled preliminary-phase test set: ``<n>.bmp`` + a CSV naming the original file."""
    val_dir = root / "validation_data"
    csv_path = next(iter(val_dir.rglob(CNMC_LABELS_CSV)), None) if val_dir.is_dir() else None
    if csv_path is None:
        return []
    img_dir = next((p for p in val_dir.rglob("C-NMC_test_prelim_phase_data") if p.is_dir()), None)
    if img_dir is None:
        problems.append(
            (str(csv_path), "labels CSV without its C-NMC_test_prelim_phase_data folder")
        )
        return []
    records, found = read_prelim_labels(csv_path, img_dir, classes)
    problems.extend(found)
    return records


def read_prelim_labels(
    csv_path: Path, img_dir: Path, classes: list[str]
) -> tuple[list[Record], list[tuple[str, str]]]:
    """Records of C-NMC's labels CSV (``Patient_ID,new_names,labels``; 1 = ALL).

    A label other than 0/1 or a ``new_names`` outside ``img_dir`` is an error naming
    the line; a listed file that is missing, or a row without a subject id, is a problem.
    """
    out: list[Record] = []
    problems: list[tuple[str, str]] = []
    for line, row in read_rows(csv_path, ("Patient_ID", "new_names", "labels")):
        where = f"{csv_path}: line {line}"
        if row["labels"] not in ("0", "1"):
            raise DatasetError(f"{where}: label {row['labels']!r} is not 0 (HEM) or 1 (ALL)")
        try:
            file = inside_root(img_dir, row["new_names"], "new_names")
        except UnsafePathError as e:
            raise DatasetError(f"{where}: {e}; every image must be inside {img_dir}") from None
        if not file.is_file():
            problems.append((str(file), "listed in the labels CSV but missing"))
            continue
        m = CNMC_NAME.match(row["Patient_ID"])
        subject = normalize_subject(m["subject"]) if m else None
        if subject is None:
            problems.append((str(file), f"no subject id in Patient_ID {row['Patient_ID']!r}"))
        label = classes.index("all") if row["labels"] == "1" else classes.index("hem")
        out.append(Record(str(file), label, subject))
    return out, problems


def is_allidb2(path: Path) -> bool:
    if not path.is_dir():
        return False
    names = [p.name for p in path.iterdir() if p.is_file() and is_image_file(p)]
    return len(names) > 0 and sum(bool(ALLIDB_NAME.match(n)) for n in names) >= 0.8 * len(names)


def parse_allidb2(path: Path) -> Dataset:
    classes = ["hem", "all"]
    records, problems = [], []
    for f in _images_in(path):
        m = ALLIDB_NAME.match(f.name)
        if not m:
            problems.append((str(f), "name is not ImXXX_Y (Y=0/1); skipped"))
            continue
        records.append(Record(str(f), 1 if m["label"] == "1" else 0, None))
    notes = [
        "ALL-IDB2 has no subject ids: splits are by image "
        "(optimistic when one patient gives several crops)"
    ]
    return Dataset(path, "allidb2", classes, records, problems, None, notes)


def read_subjects_csv(csv_path: Path, root: Path) -> dict[str, str]:
    """``file,subject`` rows -> {resolved path: subject}; files are relative to ``root``.

    A file outside ``root``, an empty subject or one file given two subjects is an
    error naming the line.
    """
    out: dict[str, str] = {}
    for line, row in read_rows(csv_path, ("file", "subject")):
        where = f"{csv_path}: line {line}"
        try:
            path = inside_root(root, row["file"], "file")
        except UnsafePathError as e:
            raise DatasetError(f"{where}: {e}; files are relative to {root}") from None
        if not row["subject"]:
            raise DatasetError(f"{where}: no subject for {row['file']!r}")
        key, subject = str(path.resolve()), normalize_subject(row["subject"])
        if out.get(key, subject) != subject:
            raise DatasetError(
                f"{where}: {row['file']!r} is listed again with another subject "
                f"({out[key]} and {subject})"
            )
        out[key] = subject
    return out


def parse_class_folders(
    path: Path, subjects_csv: Path | None = None, layout: str = "folders"
) -> Dataset:
    class_dirs = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    class_dirs = [p for p in class_dirs if p.name.lower() not in UNLABELLED and _images_in(p)]
    if not class_dirs:
        raise DatasetError(f"no class folders with images in {path}\n{LAYOUTS_HELP}")
    classes, mapping = canonical_class_order([p.name for p in class_dirs])
    csv_path = subjects_csv or (path / SUBJECTS_CSV if (path / SUBJECTS_CSV).is_file() else None)
    subjects = read_subjects_csv(csv_path, path) if csv_path else {}
    records, problems = [], []
    for d in class_dirs:
        label = classes.index(mapping[d.name])
        for f in _images_in(d):
            subject = subjects.get(str(f.resolve()))
            if subjects and subject is None:
                problems.append((str(f), f"not listed in {csv_path}; no subject id"))
            records.append(Record(str(f), label, subject))
    notes = []
    if not subjects:
        notes.append(
            "no subjects.csv: splits are by image "
            "(optimistic when one patient gives several images)"
        )
    return Dataset(path, layout, classes, records, problems, None, notes)


def parse_synthetic(path: Path) -> Dataset:
    ds = parse_class_folders(path / "cells", layout="synthetic")
    ds.root = path  # the synth folder is what users pass as --data
    ds.notes.append("synthetic data: for demos and tests, never reported as accuracy on real data")
    return ds


Detector = tuple[str, Callable[[Path], bool], Callable[[Path], Dataset]]

DETECTORS: list[Detector] = [
    ("cnmc", lambda p: find_cnmc_root(p) is not None, parse_cnmc),
    (
        "synthetic",
        lambda p: (p / "synth.json").is_file() and (p / "cells").is_dir(),
        parse_synthetic,
    ),
    ("allidb2", is_allidb2, parse_allidb2),
    (
        "folders",
        lambda p: any(c.is_dir() and _images_in(c) for c in p.iterdir()),
        parse_class_folders,
    ),
]


def detect_layout(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise LayoutError(f"{path} does not exist")
    if not path.is_dir():
        raise LayoutError(f"{path} is not a folder\n{LAYOUTS_HELP}")
    for name, matches, _ in DETECTORS:
        if matches(path):
            return name
    raise LayoutError(f"no known dataset layout in {path}\n{LAYOUTS_HELP}")


def load_dataset(
    path: str | Path, layout: str = "auto", subjects_csv: str | Path | None = None
) -> Dataset:
    """Parse a dataset folder into records; raise :class:`DatasetError` when unusable."""
    path = Path(path).expanduser()
    name = detect_layout(path) if layout == "auto" else layout
    parsers = {n: parse for n, _, parse in DETECTORS}
    if name not in parsers:
        raise LayoutError(f"unknown layout {name!r}; choose one of {sorted(parsers)} or auto")
    if not path.is_dir():
        raise LayoutError(f"{path} is not a folder\n{LAYOUTS_HELP}")
    if name == "folders":
        ds = parse_class_folders(path, Path(subjects_csv) if subjects_csv else None)
    else:
        ds = parsers[name](path)
    ds.validate()
    return ds
