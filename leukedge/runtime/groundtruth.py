"""The pipeline scored against frames whose cells are known: synthetic smears.

``leukedge data synth`` writes ``frames/*.png`` with every white cell's box and
class in ``frames/annotations.json``. Running the whole pipeline on them and
matching its cells to the truth (one-to-one, IoU >= 0.5) tells how many cells
were found (recall), how many detections were real cells (precision) and how
often a found cell got its true class. Synthetic frames only: never a claim about
real slides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukedge.io import atomic_write_json, read_json
from leukedge.runtime.detection_eval import MatchResult, match_boxes
from leukedge.runtime.outputs import CELLS_FILE

IOU_THRESHOLD = 0.5
REPORT_FILE = "groundtruth.json"


def read_cells(path: Path) -> dict[str, list[dict[str, Any]]]:
    """cells.jsonl grouped by frame name."""
    import json

    by_frame: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return by_frame
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_frame.setdefault(rec["name"], []).append(rec)
    return by_frame


def score_frames(
    cells: dict[str, list[dict[str, Any]]],
    truth: list[dict[str, Any]],
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Detection recall/precision and class accuracy of matched cells, over all frames.

    ``truth`` is annotations.json's ``frames`` list (file, cells with box and class).
    """
    total = MatchResult(0, 0, 0)
    matched = correct = 0
    per_frame = []
    for frame in truth:
        pred = cells.get(frame["file"], [])
        gt = frame.get("cells", [])
        m = match_boxes([p["box"] for p in pred], [g["box"] for g in gt], iou_threshold)
        hits = sum(pred[i]["class"] == gt[j]["class"] for i, j in m.pairs)
        total = total + m
        matched += len(m.pairs)
        correct += hits
        per_frame.append(
            {
                "file": frame["file"],
                "truth": len(gt),
                "found": len(pred),
                "tp": m.tp,
                "correct": hits,
            }
        )
    return {
        "iou_threshold": iou_threshold,
        "detection": {
            "truth_cells": total.tp + total.fn,
            "found_cells": total.tp + total.fp,
            "tp": total.tp,
            "fp": total.fp,
            "fn": total.fn,
            "recall": total.recall,
            "precision": total.precision,
        },
        "classification": {
            "matched": matched,
            "correct": correct,
            "accuracy": correct / matched if matched else None,
        },
        "per_frame": per_frame,
    }


def run_on_synthetic_frames(
    model_path: str | Path,
    synth_dir: str | Path,
    out_dir: str | Path,
    backend: str = "auto",
    batch: int = 8,
    annotate: bool = True,
) -> dict[str, Any]:
    """Run the pipeline on ``synth_dir/frames/*.png`` and score it against their annotations.

    The cell diameter comes from ``synth.json`` (the scale the frames were drawn at).
    Writes the pipeline's outputs and ``groundtruth.json`` into ``out_dir``; returns
    ``{"summary": summary.json, "detection": ..., "classification": ..., "per_frame": ...}``.
    """
    from leukedge.runtime.cells import CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.pipeline import run_pipeline
    from leukedge.runtime.sources import open_source

    synth_dir, out = Path(synth_dir), Path(out_dir)
    meta = read_json(synth_dir / "synth.json")
    annotations = read_json(synth_dir / "frames" / "annotations.json")
    diameter = float(meta["cell_diameter"])
    clf = Classifier.load(model_path, backend=backend, batch=batch)
    try:
        finder = CellFinder.from_spec(clf.spec, cell_diameter_px=diameter)
        source = open_source(str(synth_dir / "frames" / "*.png"))
        summary = run_pipeline(
            clf,
            source,
            out,
            finder=finder,
            batch=batch,
            annotate=annotate,
            model_name=str(model_path),
        )
    finally:
        clf.close()
    scores = score_frames(read_cells(out / CELLS_FILE), annotations["frames"])
    report = {"model": str(model_path), "synth_dir": str(synth_dir), "cell_diameter_px": diameter}
    report.update(scores)
    atomic_write_json(out / REPORT_FILE, report)
    return {"summary": summary, **report}
