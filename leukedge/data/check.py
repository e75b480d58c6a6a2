"""``leukedge data check``: what is in a dataset and what is wrong with it.

Decodes every image once, so a corrupt file is found here rather than in the
middle of epoch 37.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from leukedge.data.records import Dataset, Record
from leukedge.imaging.images import ImageReadError, decode_raw, tiff_page_count, to_bgr_uint8


def _describe_pixels(raw: np.ndarray) -> str:
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    kind = {1: "gray", 3: "color", 4: "color+alpha"}.get(channels, f"{channels}ch")
    return f"{kind} {raw.dtype}"


def linked_folders(dataset: Dataset) -> list[str]:
    """A warning for each folder of images that is a symlink (its files may live elsewhere)."""
    root = Path(os.path.abspath(dataset.root))
    folders: set[Path] = set()
    for r in dataset.records:
        p = Path(os.path.abspath(r.path)).parent
        while p != root and root in p.parents and p not in folders:
            folders.add(p)
            p = p.parent
    out = []
    for folder in sorted(f for f in folders if f.is_symlink()):
        target = folder.resolve()
        where = "outside the dataset" if root.resolve() not in target.parents else "inside it"
        out.append(
            f"{folder} is a symlink to {target} ({where}): its images are read from there, "
            "and a link to another class's folder would mislabel them"
        )
    return out


def check_dataset(
    dataset: Dataset, decode: bool = True, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Counts per class and subject, image formats and sizes, and every problem found."""
    problems = [{"path": p, "problem": why} for p, why in dataset.problems]
    sizes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    unreadable: list[str] = []
    warnings = list(dataset.notes) + linked_folders(dataset)
    seen: dict[str, Record] = {}  # content hash -> first record with it
    multipage: list[str] = []
    if decode:
        for i, r in enumerate(dataset.records):
            try:
                data = Path(r.path).read_bytes()
                raw = decode_raw(data, r.path)  # raises on truncated/corrupt files
                img = to_bgr_uint8(raw)
                formats[_describe_pixels(raw)] += 1
                sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
            except (ImageReadError, OSError, ValueError) as e:
                unreadable.append(r.path)
                problems.append({"path": r.path, "problem": getattr(e, "reason", str(e))})
            else:
                if tiff_page_count(data) > 1:
                    multipage.append(r.path)
                first = seen.setdefault(hashlib.sha256(data).hexdigest(), r)
                if first is not r and first.label != r.label:
                    problems.append(
                        {
                            "path": r.path,
                            "problem": f"the same image as {first.path}, which is labelled "
                            f"{dataset.classes[first.label]!r}, not "
                            f"{dataset.classes[r.label]!r}: one of the labels is wrong",
                        }
                    )
            if progress:
                progress(i + 1, len(dataset.records))
    if multipage:
        warnings.append(
            f"{len(multipage)} multi-page TIFF(s) (first: {multipage[0]}): only page 1 of each "
            "is read"
        )
    subjects = dataset.subjects()
    per_subject = {s: len(v) for s, v in sorted(subjects.items())}
    subject_classes = {
        s: sorted({dataset.classes[r.label] for r in v}) for s, v in sorted(subjects.items())
    }
    mixed = [s for s, c in subject_classes.items() if len(c) > 1]
    counts = dataset.class_counts()
    nonzero = [n for n in counts.values() if n]
    if len(nonzero) >= 2 and max(nonzero) / min(nonzero) > 1.5:
        warnings.append(
            f"classes are imbalanced ({counts}); training uses class weights and reports "
            "weighted F1 and balanced accuracy"
        )
    if mixed:
        warnings.append(f"{len(mixed)} subject(s) have images of more than one class: {mixed[:5]}")
    usable = len(dataset.records) - len(unreadable)
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "images": len(dataset.records),
        "usable_images": usable,
        "class_counts": counts,
        "subjects": len(subjects),
        "subjects_per_class": {
            c: sum(1 for v in subject_classes.values() if c in v) for c in dataset.classes
        },
        "images_per_subject": (
            {
                "min": min(per_subject.values()),
                "median": median(per_subject.values()),
                "max": max(per_subject.values()),
            }
            if per_subject
            else None
        ),
        "image_sizes": dict(sizes.most_common(10)),
        "pixel_formats": dict(formats.most_common()),
        "has_official_split": bool(dataset.official_split)
        and "test" in (dataset.official_split or {}).values(),
        "warnings": warnings,
        "problems": problems,
    }
