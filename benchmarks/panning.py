"""Counting each cell once on panning video made from real microscope frames (ALL-IDB1).

    nice python benchmarks/panning.py [--data ../shared/data] [--frames 3] [--speed 12]

A 640x480 window slides over an ALL-IDB1 frame like a camera over a moving stage:
right along the top at ``--speed`` px per frame, fast (three times the speed, with
motion blur of that length: the stage moves during the exposure) across the middle
of each row, down, back left, and then over the first row again (a field already
seen). Every window goes through what ``leukedge run`` does per frame for the count:
the stage motion and blur (:class:`~leukedge.runtime.tracking.MotionTracker`), the
cell finder, and the matching on the slide (:class:`~leukedge.runtime.tracking.CellTracks`).
The classifier is left out: it does not change which cell is which.

Reported per frame and in total: the unique cells counted (seen whole at least
once) against the cells the finder finds on the whole frame inside the area the
window covered (the reference), the per-detection count (what ``cells.total``
counts), frames rejected as blurred against the frames that were blurred, the
drift of the motion estimate, and the cost of tracking per frame at 1080p on one
core (the same path scaled by 1920/640). Writes benchmarks/results/panning.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leukedge.io import atomic_write_json, atomic_write_text
from leukedge.machine import describe_machine, markdown_machine
from leukedge.runtime.cells import CellFinder
from leukedge.runtime.session import MIN_WHOLE_SIGHTINGS
from leukedge.runtime.tracking import CellTracks, Detection, MotionTracker

REPO = Path(__file__).resolve().parents[1]
VIEW = (640, 480)
DEFAULT_FRAMES = ("Im001_1.jpg", "Im013_1.jpg", "Im049_1.jpg", "Im061_1.jpg")


def pan_path(w: int, h: int, speed: int) -> list[tuple[int, int, int]]:
    """(x, y, blur length) per frame: rows left-right-left, fast in the middle, then a revisit."""
    vw, vh = VIEW
    rows = list(range(0, h - vh + 1, vh // 2))
    path: list[tuple[int, int, int]] = []
    for r, y in enumerate(rows):
        xs: list[tuple[int, int]] = []
        x = 0
        while x <= w - vw:
            fast = (w - vw) / 3 < x < 2 * (w - vw) / 3
            step = 3 * speed if fast else speed
            xs.append((x, step if fast else 0))
            x += step
        if r % 2:
            xs = [(w - vw - x, b) for x, b in xs]
        path += [(x, y, b) for x, b in xs]
        if r + 1 < len(rows):  # move down slowly to the next row
            end = xs[-1][0]
            path += [(end, yy, 0) for yy in range(y + speed, rows[r + 1], speed)]
    # back up the left edge and over the first row again
    last_x, last_y = path[-1][0], path[-1][1]
    path += [(last_x, yy, 0) for yy in range(last_y - speed, -1, -speed)]
    path += [(x, 0, 0) for x in range(last_x, (w - vw) // 2, speed)]
    return path


def window(img: np.ndarray, x: int, y: int, blur: int) -> np.ndarray:
    vw, vh = VIEW
    view = np.ascontiguousarray(img[y : y + vh, x : x + vw])
    if blur > 1:
        k = np.full((1, blur), 1.0 / blur, np.float32)
        view = cv2.filter2D(view, -1, k)
    return view


def detections(cells: list[Any]) -> list[Detection]:
    out = []
    for c in cells:
        centre = c.centroid
        if c.full_centre is not None:
            centre = (c.box[0] + c.full_centre[0], c.box[1] + c.full_centre[1])
        d = c.full_diameter or c.diameter
        out.append(Detection(centre, float(d), c.touches_edge, np.array([0.5, 0.5]), c.score))
    return out


def reference(
    finder: CellFinder, img: np.ndarray, path: list[tuple[int, int, int]], d: float
) -> int:
    """Whole-frame cells whose whole disc lies in the area the window covered."""
    h, w = img.shape[:2]
    covered = np.zeros((h, w), np.uint8)
    vw, vh = VIEW
    for x, y, _ in path:
        covered[y : y + vh, x : x + vw] = 1
    r = int(round(d / 2))
    inner = cv2.erode(covered, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    n = 0
    for c in finder.find(img):
        cx, cy = (int(round(v)) for v in c.centroid)
        if not c.touches_edge and inner[min(cy, h - 1), min(cx, w - 1)]:
            n += 1
    return n


def pan_one(path_img: Path, speed: int, blur: bool = True) -> dict[str, Any]:
    img = cv2.imread(str(path_img))
    probe = CellFinder()
    seg = probe.segment(img)
    assert seg is not None
    d = float(seg.diameter / seg.scale)
    finder = CellFinder(cell_diameter_px=d)
    path = pan_path(img.shape[1], img.shape[0], speed)
    if not blur:  # the control: the same positions, every frame sharp
        path = [(x, y, 0) for x, y, _ in path]
    motion, tracks = MotionTracker(), CellTracks()
    per_detection = blurred_true = rejected = rejected_true = 0
    drift = []
    x0, y0 = path[0][0], path[0][1]
    for i, (x, y, blur) in enumerate(path):
        view = window(img, x, y, blur)
        m = motion.step(view)
        blurred_true += blur > 1
        if m.blurred:
            rejected += 1
            rejected_true += blur > 1
            continue
        drift.append(float(np.hypot(m.origin[0] - (x - x0), m.origin[1] - (y - y0))))
        dets = detections(finder.find(view))
        per_detection += len(dets)
        tracks.observe(m.field, m.origin, i, dets)
    ref = reference(finder, img, path, d)
    by_rule = {n: sum(t.whole_sightings >= n for t in tracks.tracks) for n in (1, 2, 3)}
    unique = by_rule[MIN_WHOLE_SIGHTINGS]
    return {
        "frame": path_img.name,
        "size": [img.shape[1], img.shape[0]],
        "cell_diameter_px": round(d, 1),
        "video_frames": len(path),
        "blurred_frames": blurred_true,
        "rejected_as_blurred": rejected,
        "rejected_and_blurred": rejected_true,
        "fields": motion.new_fields,
        "max_drift_px": round(max(drift), 2) if drift else None,
        "reference_cells": ref,
        "unique_cells": unique,
        "unique_cells_by_min_whole_sightings": by_rule,
        "edge_only_tracks": sum(t.edge_only for t in tracks.tracks),
        "unique_vs_reference": round(unique / ref - 1, 3) if ref else None,
        "per_detection": per_detection,
        "per_detection_over_unique": round(per_detection / unique, 2) if unique else None,
    }


def cost_1080p(path_img: Path, speed: int, frames: int = 150) -> dict[str, Any]:
    """Tracking cost per 1920x1080 frame on one core: motion + blur + matching."""
    cv2.setNumThreads(1)
    img = cv2.imread(str(path_img))
    k = 1920 / VIEW[0]
    big = cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
    finder = CellFinder()
    seg = finder.segment(img)
    assert seg is not None
    d = float(seg.diameter / seg.scale)
    finder = CellFinder(cell_diameter_px=d)
    path = pan_path(img.shape[1], img.shape[0], speed)[:frames]
    cells = [detections(finder.find(window(img, x, y, 0))) for x, y, _ in path]
    views = []
    for (x, y, _), dets in zip(path, cells, strict=True):
        xs, ys = int(x * k), int(y * k)
        views.append(np.ascontiguousarray(big[ys : ys + 1080, xs : xs + 1920]))
        for det in dets:
            det.centre = (det.centre[0] * k, det.centre[1] * k)
            det.diameter *= k
    motion, tracks = MotionTracker(), CellTracks()
    t_motion: list[float] = []
    t_match: list[float] = []
    t_wall: list[float] = []
    for i, (view, dets) in enumerate(zip(views, cells, strict=True)):
        w0, t0 = time.perf_counter(), time.thread_time()
        m = motion.step(view)
        t1 = time.thread_time()
        tracks.observe(m.field, m.origin, i, dets)
        t2 = time.thread_time()
        t_wall.append(time.perf_counter() - w0)
        t_motion.append(t1 - t0)
        t_match.append(t2 - t1)
    total = np.array(t_motion) + np.array(t_match)
    return {
        "frames": len(views),
        "frame_size": [1920, 1080],
        "cells_per_frame": round(float(np.mean([len(c) for c in cells])), 1),
        "motion_ms_p50": round(1000 * float(np.median(t_motion)), 3),
        "match_ms_p50": round(1000 * float(np.median(t_match)), 3),
        "total_ms_p50": round(1000 * float(np.median(total)), 3),
        "total_ms_p90": round(1000 * float(np.percentile(total, 90)), 3),
        "wall_ms_p50": round(1000 * float(np.median(t_wall)), 3),
        "clock": "CPU time of the thread (time.thread_time): the cost on one core, "
        "whatever else the machine runs; wall_ms_p50 is the elapsed time",
        "threads": 1,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Counting each cell once: panning over real frames (ALL-IDB1)",
        "",
        f"A {VIEW[0]}x{VIEW[1]} window pans over each frame at {report['speed']} px/frame "
        f"(three times as fast, with motion blur as long as the step, across the middle of "
        "each row), row by row, then back over the first row. Reference: the cells the "
        "finder finds on the whole frame inside the area the window covered.",
        "",
        "| frame | video frames | blurred / rejected (both) | fields | max drift px | "
        "reference cells | unique counted | unique vs ref | counted if seen whole 1 / 2 / 3 "
        "times | per-detection count | detections per cell | control without blur: unique "
        "(drift px) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["frames"]:
        rel = r["unique_vs_reference"]
        lines.append(
            f"| {r['frame']} | {r['video_frames']} | {r['blurred_frames']} / "
            f"{r['rejected_as_blurred']} ({r['rejected_and_blurred']}) | {r['fields']} | "
            f"{r['max_drift_px']} | {r['reference_cells']} | {r['unique_cells']} | "
            f"{'-' if rel is None else f'{100 * rel:+.1f} %'} | "
            f"{' / '.join(str(v) for v in r['unique_cells_by_min_whole_sightings'].values())} | "
            f"{r['per_detection']} | "
            f"{r['per_detection_over_unique']} | {r['control_no_blur']['unique_cells']} "
            f"({r['control_no_blur']['max_drift_px']}) |"
        )
    c = report["cost_1080p"]
    worst = max(report["frames"], key=lambda r: (r["max_drift_px"] or 0) / r["cell_diameter_px"])
    lines += [
        "",
        "Reading: per-detection counts are tens of times the unique count, as a cell stays "
        "in view for dozens of frames. The control pans over the same positions with every "
        "frame sharp; where it counts as many cells as the blurred pan or more, the excess "
        "over the reference comes from the cell finder (a 640x480 window shows cells the "
        "whole-frame pass merges with a neighbour or misses, and a cell split in two in a "
        "few windows), not from the motion estimate or the blur. Counting a cell once it "
        "has been seen whole twice (the runtime's rule for video) removes most single-frame "
        "detections. A revisit finds its cells while the drift of the stage estimate stays "
        "below half a cell diameter (the matching radius); the largest drift here is "
        f"{worst['max_drift_px']} px, {worst['max_drift_px'] / worst['cell_diameter_px']:.2f} "
        f"of a cell diameter ({worst['frame']}, after {worst['video_frames']} frames and "
        f"{worst['blurred_frames']} blurred ones: each blurred stretch is crossed by chaining "
        "smeared frames, whose shifts are less exact).",
        "",
        f"Tracking cost per 1920x1080 frame on one core ({c['frames']} frames, "
        f"{c['cells_per_frame']} cells per frame; CPU time of the thread, OpenCV on one "
        f"thread): motion and blur {c['motion_ms_p50']} ms, matching {c['match_ms_p50']} ms, "
        f"total p50 {c['total_ms_p50']} ms, p90 {c['total_ms_p90']} ms (target: under 2 ms; "
        f"elapsed p50 {c['wall_ms_p50']} ms on this shared machine).",
        "",
        markdown_machine(report["machine"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--frames", default=",".join(DEFAULT_FRAMES))
    ap.add_argument("--speed", type=int, default=12, help="slow pan speed, px per frame")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    folder = Path(args.data) / "all-idb1" / "im"
    names = [n for n in args.frames.split(",") if n]
    rows = []
    for name in names:
        r = pan_one(folder / name, args.speed)
        control = pan_one(folder / name, args.speed, blur=False)
        r["control_no_blur"] = {
            k: control[k] for k in ("unique_cells", "max_drift_px", "rejected_as_blurred")
        }
        print(r, flush=True)
        rows.append(r)
    cost = cost_1080p(folder / names[0], args.speed)
    print(cost, flush=True)
    report = {
        "speed": args.speed,
        "view": list(VIEW),
        "frames": rows,
        "cost_1080p": cost,
        "machine": describe_machine(),
    }
    results = Path(args.results)
    atomic_write_json(results / "panning.json", report)
    atomic_write_text(results / "panning.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
