"""Cut every cell the finder sees into a dataset awaiting labels (`leukedge data cells`).

The shortest way to a model that works on a new microscope is a few hundred of its
own cells, labelled by someone who knows them, and a fine-tune (`leukedge train
--init`). This step does the tedious part: every white cell found in the frames is
cropped exactly as the runtime crops it for the model and saved under
``unlabelled/``, next to empty class folders (``all/``, ``hem/``) to sort them into.
``cells.csv`` lists each crop with its frame and box and, when a model is given, the
model's guess, its probability and the cell's domain-shift score, so the labeller can
start from the guesses and see which cells the model finds unfamiliar.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from leukedge.runtime.outputs import safe_file_name
from leukedge.spec import ModelSpec

if TYPE_CHECKING:
    from leukedge.runtime.cells import CellFinder
    from leukedge.runtime.classifier import Classifier

UNLABELLED = "unlabelled"
CELLS_CSV = "cells.csv"
FIELDS = ["file", "frame", "cell", "x0", "y0", "x1", "y1", "touches_edge"]


class HarvestExistsError(FileExistsError):
    """An output folder that already holds harvested cells (they may be half sorted)."""


def harvest_cells(
    source: str,
    out: str | Path,
    spec: ModelSpec,
    finder: CellFinder,
    classifier: Classifier | None = None,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Crop every cell of every frame of ``source`` into ``out/unlabelled``; returns counts.

    ``spec`` fixes the crop geometry (crop style, cell fraction): the model's spec when
    a model is given, so that the labelled cells show cells as the runtime will.
    """
    from leukedge.runtime.sources import open_source

    out = Path(out)
    if (out / CELLS_CSV).exists():
        raise HarvestExistsError(
            f"{out} already holds harvested cells ({CELLS_CSV}); choose another --out so "
            "cells already sorted are not mixed up"
        )
    src = open_source(source, max_frames=max_frames)  # a bad source: nothing written yet
    folder = out / UNLABELLED
    fields = FIELDS + (_guess_fields(spec) if classifier is not None else [])
    counts = {"frames": 0, "skipped_frames": 0, "cells": 0}
    total = getattr(src, "total", None) or 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for c in spec.classes:
            (out / c).mkdir(exist_ok=True)
        with open(out / CELLS_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for frame in src:
                counts["frames"] += 1
                if frame.image is None or frame.error is not None:
                    counts["skipped_frames"] += 1
                    continue
                rows = _frame_rows(frame.name, frame.image, spec, finder, classifier, folder)
                writer.writerows(rows)
                counts["cells"] += len(rows)
                if progress:
                    progress(counts["frames"], total)
    finally:
        src.close()
    return {**counts, "out": str(out), "unlabelled": str(folder), "csv": str(out / CELLS_CSV)}


def _guess_fields(spec: ModelSpec) -> list[str]:
    return ["guess", f"p_{spec.positive_class}", "uncertain", "shift_score"]


def _frame_rows(
    name: str,
    image: np.ndarray,
    spec: ModelSpec,
    finder: CellFinder,
    classifier: Classifier | None,
    folder: Path,
) -> list[dict[str, Any]]:
    from leukedge.imaging.preprocess import crop_cell

    cells = finder.find(image)
    crops = [
        c.crop
        if c.crop is not None
        else crop_cell(image, c.box, spec, c.mask, c.full_diameter, c.full_centre)
        for c in cells
    ]
    stem = Path(safe_file_name(name)).stem
    rows, kept = [], []
    for i, (cell, crop) in enumerate(zip(cells, crops, strict=True)):
        file = f"{stem}_c{i:03d}.png"
        ok, buf = cv2.imencode(".png", crop)
        if not ok:
            continue
        (folder / file).write_bytes(buf.tobytes())
        kept.append(crop)
        x0, y0, x1, y1 = (int(v) for v in cell.box)
        rows.append(
            {
                "file": f"{UNLABELLED}/{file}",
                "frame": name,
                "cell": i,
                **{"x0": x0, "y0": y0, "x1": x1, "y1": y1},
                "touches_edge": int(bool(cell.touches_edge)),
            }
        )
    if classifier is not None and kept:
        _add_guesses(rows, kept, classifier)
    return rows


def _add_guesses(rows: list[dict[str, Any]], crops: list[np.ndarray], clf: Classifier) -> None:
    from leukedge.runtime.calibration import uncertain

    x, stains = clf.prepare(crops)
    logits, features = clf.infer_outputs(x)
    probs = clf.probabilities(logits)
    scores, _ = clf.shift_scores(features, stains)
    spec = clf.spec
    p_pos = probs[:, spec.positive_index]
    unsure = uncertain(p_pos)
    for i, row in enumerate(rows):
        row["guess"] = spec.classes[int(probs[i].argmax())]
        row[f"p_{spec.positive_class}"] = round(float(p_pos[i]), 4)
        row["uncertain"] = int(unsure[i])
        row["shift_score"] = "" if scores is None else round(float(scores[i]), 3)
