"""Draw found and classified cells on a frame (numpy + OpenCV only).

Used by the frame pipeline for annotated PNGs / video and the live display, and
by the cell-finder benchmark for inspection images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from leukedge.imaging.images import to_bgr_uint8
from leukedge.runtime.cells import Cell

CELL_COLOUR = (255, 160, 0)  # BGR: a found cell, no class
POSITIVE_COLOUR = (40, 40, 230)  # red: the positive class (ALL blast)
OTHER_COLOUR = (60, 190, 60)  # green: any other class
EDGE_COLOUR = (200, 0, 200)  # magenta: cut by the frame edge (unclassified boxes only)
OUTLINE_COLOUR = (0, 230, 255)  # yellow outline of the cell mask


def _colour(cell: Cell, label: str | None, positive: str | None) -> tuple[int, int, int]:
    if label is None:
        return EDGE_COLOUR if cell.touches_edge else CELL_COLOUR
    if positive is not None and label.lower() == positive.lower():
        return POSITIVE_COLOUR
    return OTHER_COLOUR


def draw_cells(
    frame: np.ndarray,
    cells: Sequence[Cell],
    labels: Sequence[str | None] | None = None,
    probs: Sequence[float | None] | None = None,
    positive: str | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """A BGR copy of ``frame`` with each cell's mask outline, box and optional label.

    ``labels`` (class names, one per cell) colour the boxes: red for the
    ``positive`` class, green for the others; ``probs`` are written after the
    label. Without labels, cells cut by the frame edge get a magenta box, others
    blue; with labels, edge cells get a thin box so they stand out as partial.
    """
    out = to_bgr_uint8(frame).copy()
    for name, seq in (("labels", labels), ("probs", probs)):
        if seq is not None and len(seq) != len(cells):
            raise ValueError(f"{len(seq)} {name} for {len(cells)} cells")
    h, w = out.shape[:2]
    t = thickness if thickness is not None else max(1, round(max(h, w) / 500))
    font_scale = max(0.4, max(h, w) / 1800)
    for i, cell in enumerate(cells):
        x0, y0, x1, y1 = cell.box
        label = labels[i] if labels is not None else None
        colour = _colour(cell, label, positive)
        contours, _ = cv2.findContours(
            cell.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, 1, offset=(x0, y0))
        box_t = max(1, t // 2) if (label is not None and cell.touches_edge) else t
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, box_t)
        if label is None:
            continue
        p = probs[i] if probs is not None else None
        text = f"{label} {p:.2f}" if p is not None else str(label)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - base - 2 if y0 - th - base - 2 >= 0 else min(h - 1, y1 + th + 2)
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 4, ty + base), colour, -1)
        cv2.putText(
            out,
            text,
            (x0 + 2, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def count_lines(
    cells: int, positive_count: int, positive: str = "ALL", fps: float | None = None
) -> list[str]:
    """Running-count text: cells seen, positives and their share, frame rate."""
    share = 100.0 * positive_count / cells if cells else 0.0
    lines = [f"cells {cells}", f"{positive} {positive_count} ({share:.1f}%)"]
    if fps is not None:
        lines.append(f"{fps:.1f} fps")
    return lines


def draw_count(img: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Write ``lines`` in a dark panel in the top-left corner of ``img`` (in place); returns it."""
    if not lines:
        return img
    h, w = img.shape[:2]
    scale = max(0.5, max(h, w) / 1400)
    thick = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0] for s in lines]
    line_h = max(s[1] for s in sizes) + int(10 * scale)
    panel_w = max(s[0] for s in sizes) + int(16 * scale)
    panel_h = line_h * len(lines) + int(8 * scale)
    x1, y1 = min(w, panel_w), min(h, panel_h)
    roi = img[:y1, :x1]
    roi[:] = (roi.astype(np.float32) * 0.35).astype(np.uint8)
    for i, s in enumerate(lines):
        y = int(4 * scale) + line_h * (i + 1) - int(6 * scale)
        cv2.putText(
            img,
            s,
            (int(8 * scale), y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return img
