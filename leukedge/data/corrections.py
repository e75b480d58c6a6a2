"""A reviewer's corrections from report.html into a dataset ``leukedge train --init`` reads.

The review gallery (report.html of ``leukedge run``) exports every cell's picture
with the label the reviewer settled on (the model's, or the flipped one). That CSV
names each picture relative to the report's folder; here the pictures are copied
into class folders (``OUT/<label>/``), the layout every ``--data`` understands,
with ``corrections.csv`` beside them saying where each came from and whether the
reviewer changed its label. Several reviewed runs go into one dataset by importing
each into its own folder and pointing ``--data`` at each in turn, or by merging
the class folders (names carry the run's folder name, so they do not collide).
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Any

from leukedge.data.csvfiles import read_rows
from leukedge.data.records import DatasetError
from leukedge.io import atomic_write_text
from leukedge.validate import UnsafePathError, inside_root

CORRECTIONS_CSV = "corrections.csv"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
OUT_FIELDS = ["file", "label", "model_class", "corrected", "source", "track_id"]


def import_corrections(
    csv_path: str | Path, out: str | Path, report_dir: str | Path | None = None
) -> dict[str, Any]:
    """Copy the pictures ``csv_path`` lists into ``out/<label>/``; returns counts per class.

    ``report_dir`` is the folder of report.html the CSV's paths are relative to
    (default: the CSV's own folder). ``out`` must be new or empty. Every row is
    checked before anything is written: a bad label, a path leading outside the
    report's folder or a missing picture is an error naming the line.
    """
    csv_path, out = Path(csv_path), Path(out)
    root = Path(report_dir) if report_dir is not None else csv_path.parent
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder; choose a new --out")
    plan: list[tuple[Path, str, dict[str, str]]] = []
    for line, row in read_rows(csv_path, ("file", "label")):
        where = f"{csv_path}: line {line}"
        label = row["label"]
        if not LABEL.match(label):
            raise DatasetError(f"{where}: label {label!r} is not a class folder name")
        try:
            src = inside_root(root, row["file"], "picture")
        except UnsafePathError as e:
            raise DatasetError(f"{where}: {e}") from None
        if not src.is_file():
            raise DatasetError(
                f"{where}: {src} is not there; give --report, the folder of the report.html "
                "the CSV was exported from"
            )
        plan.append((src, label, row))
    if not plan:
        raise DatasetError(f"{csv_path} lists no cells")
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", root.resolve().name) or "run"
    counts: dict[str, int] = {}
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for src, label, row in plan:
        (out / label).mkdir(exist_ok=True)
        name = f"{prefix}_{src.name}"
        dest = out / label / name
        k = 2
        while dest.exists():
            dest = out / label / f"{prefix}_{src.stem}-{k}{src.suffix}"
            k += 1
        shutil.copyfile(src, dest)
        counts[label] = counts.get(label, 0) + 1
        rows.append(
            {
                "file": f"{label}/{dest.name}",
                "label": label,
                "model_class": row.get("model_class", ""),
                "corrected": row.get("corrected", ""),
                "source": str(src),
                "track_id": row.get("track_id", ""),
            }
        )
    atomic_write_text(out / CORRECTIONS_CSV, _csv_text(rows))
    corrected = sum(r["corrected"] in ("1", "true", "True") for r in rows)
    return {"out": str(out), "cells": len(rows), "by_class": counts, "corrected": corrected}


def _csv_text(rows: list[dict[str, str]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=OUT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
