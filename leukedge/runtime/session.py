"""A differential count: every white cell counted once, until enough are counted.

A hematologist moves the slide field by field until 100-200 white cells are counted,
then reports the blast percentage. :class:`CountSession` does the same with the
run's frames: the capture thread asks it where each frame lies on the slide and
whether it is sharp (:meth:`CountSession.measure`; blurred frames are not
classified), the main thread hands it each frame's classified cells
(:meth:`CountSession.observe`), which are matched across frames
(:mod:`leukedge.runtime.tracking`) and annotated in cells.jsonl with their
``track_id``. The count is over cells seen whole (twice in a video, where a single
whole view is more often a detection that flickered; once in a still image); cells
only ever cut by the frame edge are listed apart (``edge_only``), as a lab leaves
out the cells it cannot see whole. With a ``target``, :attr:`CountSession.done` turns
true once that many cells are counted, and the run stops.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from leukedge.runtime.calibration import UNCERTAIN_BAND
from leukedge.runtime.stats import StageStats, blast_ratio
from leukedge.runtime.tracking import CellTracks, Detection, FrameMotion, MotionTracker, Track

MIN_WHOLE_SIGHTINGS = 2  # a cell counts once seen whole this often (stills: once)
THUMB_SIDE = 128  # pixels of a cell's picture in the gallery (and of an exported correction)
THUMB_QUALITY = 90  # JPEG quality of those pictures
UNIQUE_NOTE = (
    "each cell once: detections are placed on the slide by the stage motion (phase "
    "correlation) and matched across frames; a cell's class is the mean of its class "
    "probabilities over its sightings. Counted: cells seen whole at least "
    "min_whole_sightings times (twice in a video, once in a still image); edge_only cells "
    "(always cut by the frame edge) and unconfirmed ones (seen whole too rarely) are listed "
    "apart. Frames too blurred to trust are not classified."
)


@dataclass
class CellView:
    """A cell's best view so far: its picture (JPEG bytes) and where it was taken."""

    jpeg: bytes
    frame: int
    name: str
    box: list[int]


class CountSession:
    """Unique cells of one run, their best pictures, and the stop rule of ``--count``."""

    def __init__(
        self,
        classes: list[str],
        positive: str,
        target: int | None = None,
        judge_blur: bool = True,
        thumb_side: int = THUMB_SIDE,
        still: bool = False,
    ) -> None:
        self.classes = list(classes)
        self.positive = positive
        self.positive_index = self.classes.index(positive) if positive in self.classes else 0
        self.target = target
        self.thumb_side = thumb_side
        # in a video a cell is in many frames: one whole view of it alone is more often a
        # detection that flickered (a clump, a cut cell taken for whole) than a cell
        self.min_sightings = 1 if still else MIN_WHOLE_SIGHTINGS
        self.motion = MotionTracker(judge_blur=judge_blur and not still)
        self.tracks = CellTracks()
        self.views: dict[int, CellView] = {}
        self.shift_sum: dict[int, float] = {}
        self.counted = 0  # cells seen whole at least once
        self.frames = 0
        self.blurred_frames = 0
        self.stopped_at_frame: int | None = None
        self.motion_time = StageStats()
        self.match_time = StageStats()
        self._lock = threading.Lock()  # measure() runs in the capture thread

    # ------------------------------------------------------------------ capture thread

    def measure(self, image: np.ndarray) -> FrameMotion:
        """Where ``image`` lies on the slide and whether it is blurred (frames in order)."""
        import time

        t0 = time.perf_counter()
        with self._lock:
            motion = self.motion.step(image)
        self.motion_time.add(time.perf_counter() - t0)
        return motion

    def thumbnail(self, crop: np.ndarray) -> np.ndarray:
        """A cell's crop at the gallery's size (made while the pixels are at hand)."""
        side = self.thumb_side
        interp = cv2.INTER_AREA if max(crop.shape[:2]) > side else cv2.INTER_LINEAR
        return cv2.resize(crop, (side, side), interpolation=interp)

    # ------------------------------------------------------------------ main thread

    @property
    def done(self) -> bool:
        """The target count is reached (never without a target)."""
        return self.target is not None and self.counted >= self.target

    def observe(
        self,
        frame: int,
        name: str,
        motion: FrameMotion | None,
        cells: list[Any],
        records: list[dict[str, Any]],
        thumbs: list[np.ndarray] | None = None,
    ) -> None:
        """Match one frame's classified cells; adds track fields to their ``records``."""
        import time

        self.frames += 1
        if motion is not None and motion.blurred:
            self.blurred_frames += 1
        if not records or self.done:
            return
        t0 = time.perf_counter()
        field_id, origin = (motion.field, motion.origin) if motion else (frame, (0.0, 0.0))
        dets = [_detection(c, r, self.classes) for c, r in zip(cells, records, strict=True)]
        seen = self.tracks.observe(field_id, origin, frame, dets)
        for i, (s, r) in enumerate(zip(seen, records, strict=True)):
            t = s.track
            if t.whole_sightings == self.min_sightings and not r["touches_edge"]:
                self.counted += 1  # seen whole often enough: now it counts
            r["track_id"] = t.id
            r["field"] = t.field
            r["slide_xy"] = [round(s.position[0], 1), round(s.position[1], 1)]
            r["sighting"] = t.sightings
            if r.get("shift_score") is not None:
                self.shift_sum[t.id] = self.shift_sum.get(t.id, 0.0) + float(r["shift_score"])
            if s.best and thumbs is not None and i < len(thumbs):
                ok, buf = cv2.imencode(
                    ".jpg", thumbs[i], [int(cv2.IMWRITE_JPEG_QUALITY), THUMB_QUALITY]
                )
                if ok:
                    self.views[t.id] = CellView(buf.tobytes(), frame, name, list(r["box"]))
        if self.done and self.stopped_at_frame is None:
            self.stopped_at_frame = frame
        self.match_time.add(time.perf_counter() - t0)

    # ------------------------------------------------------------------ results

    def cell(self, t: Track) -> dict[str, Any]:
        """One unique cell as tracks.jsonl and the gallery list it."""
        probs = t.probs
        k = int(np.argmax(probs)) if len(probs) else 0
        p_pos = float(probs[self.positive_index]) if len(probs) else float("nan")
        view = self.views.get(t.id)
        shift = self.shift_sum.get(t.id)
        mean_shift = None if shift is None else shift / max(1, t.sightings)
        return {
            "track_id": t.id,
            "field": t.field,
            "slide_xy": [round(t.position[0], 1), round(t.position[1], 1)],
            "diameter_px": round(t.diameter, 1),
            "class": self.classes[k] if self.classes else None,
            "probs": {c: round(float(p), 5) for c, p in zip(self.classes, probs, strict=False)},
            "p_positive": round(p_pos, 5),
            "uncertain": bool(UNCERTAIN_BAND[0] <= p_pos <= UNCERTAIN_BAND[1]),
            "edge_only": t.edge_only,
            "counted": t.whole_sightings >= self.min_sightings,
            "sightings": t.sightings,
            "whole_sightings": t.whole_sightings,
            "first_frame": t.first_frame,
            "last_frame": t.last_frame,
            "shift_score": None if mean_shift is None else round(mean_shift, 4),
            "out_of_distribution": None if mean_shift is None else bool(mean_shift > 1.0),
            "best_frame": view.frame if view else None,
            "best_frame_name": view.name if view else None,
            "best_box": view.box if view else None,
        }

    def cells(self) -> list[dict[str, Any]]:
        return [self.cell(t) for t in self.tracks.tracks]

    def summary(self) -> dict[str, Any]:
        """summary.json's ``unique_cells``: the count of each cell once, with its interval."""
        cells = self.cells()
        counted = [c for c in cells if c["counted"]]
        by_class = {c: 0 for c in self.classes}
        for c in counted:
            by_class[c["class"]] = by_class.get(c["class"], 0) + 1
        blasts = by_class.get(self.positive, 0)
        unsure = [c for c in counted if c["uncertain"]]
        unsure_pos = sum(c["class"] == self.positive for c in unsure)
        sightings = [c["sightings"] for c in cells]
        ood = [c for c in counted if c["out_of_distribution"]]
        return {
            "cells": len(counted),
            "by_class": by_class,
            "blasts": blasts,
            "positive_class": self.positive,
            "blast_ratio": blast_ratio(blasts, len(counted)),
            "blast_ratio_sure": blast_ratio(blasts - unsure_pos, len(counted) - len(unsure)),
            "uncertain": len(unsure),
            "uncertain_band": list(UNCERTAIN_BAND),
            "out_of_distribution": len(ood),
            "edge_only": sum(c["edge_only"] for c in cells),
            "unconfirmed": sum(not c["counted"] and not c["edge_only"] for c in cells),
            "min_whole_sightings": self.min_sightings,
            "tracks": len(cells),
            "sightings_mean": round(float(np.mean(sightings)), 2) if sightings else None,
            "sightings_max": max(sightings) if sightings else None,
            "target": self.target,
            "target_reached": self.done,
            "stopped_at_frame": self.stopped_at_frame,
            "frames": self.frames,
            "blurred_frames": self.blurred_frames,
            "motion": self.motion.describe(),
            "tracking_ms": {
                "motion": self.motion_time.summary(),
                "match": self.match_time.summary(),
            },
            "note": UNIQUE_NOTE,
        }


def _detection(cell: Any, record: dict[str, Any], classes: list[str]) -> Detection:
    """A cell as the tracker sees it: its whole-cell centre where the edge cut it."""
    x0, y0 = cell.box[0], cell.box[1]
    centre = (float(cell.centroid[0]), float(cell.centroid[1]))
    full = getattr(cell, "full_centre", None)
    if full is not None:
        centre = (x0 + float(full[0]), y0 + float(full[1]))
    diameter = getattr(cell, "full_diameter", None) or float(getattr(cell, "diameter", 0.0))
    if diameter <= 0:
        diameter = float(max(cell.box[2] - cell.box[0], cell.box[3] - cell.box[1]))
    probs = np.array([record["probs"][c] for c in classes], np.float64)
    return Detection(
        centre, float(diameter), bool(cell.touches_edge), probs, float(record.get("score", 1.0))
    )
