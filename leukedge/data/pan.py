"""A panning sequence from one still frame: what a camera sees while the stage moves.

For demos and tests of counting each cell once: a window slides over ``image``
left to right along a row, down, back right to left, and over the first row again,
so every cell is in many frames and part of the slide is seen twice. The true
stage position of every frame is known (the window's corner).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def pan_positions(size: tuple[int, int], view: tuple[int, int], step: int) -> list[tuple[int, int]]:
    """Window corners (x, y): along the top, down, back along the bottom, up, along the top."""
    w, h = size
    vw, vh = view
    right, bottom = max(0, w - vw), max(0, h - vh)
    step = max(1, step)
    path = [(x, 0) for x in range(0, right + 1, step)]
    path += [(right, y) for y in range(step, bottom + 1, step)]
    path += [(x, bottom) for x in range(right - step, -1, -step)]
    path += [(0, y) for y in range(bottom - step, -1, -step)]
    path += [(x, 0) for x in range(step, right // 2 + 1, step)]  # a field seen before
    return path


def write_pan(
    image: np.ndarray, out: str | Path, view: tuple[int, int], step: int
) -> list[tuple[int, int]]:
    """Write the frames of :func:`pan_positions` as ``out/pan_NNNN.png``; returns the corners."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    path = pan_positions((w, h), view, step)
    vw, vh = view
    for i, (x, y) in enumerate(path):
        cv2.imwrite(str(out / f"pan_{i:04d}.png"), image[y : y + vh, x : x + vw])
    return path
