"""How large the cell is in a training image, relative to the image side.

The runtime crops cells out of camera frames with side = cell diameter /
``cell_fraction`` so the model sees cells at the scale it was trained on. For
masked images (cells on black) the cell is the non-black region; for context
crops the cell is found with the runtime's own cell finder.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from leukedge.data.records import Record
from leukedge.imaging.images import ImageReadError, read_image

DEFAULT_CELL_FRACTION = 0.6


def masked_cell_fraction(image_bgr: np.ndarray, threshold: int = 12) -> float | None:
    """Largest side of the non-black region over the image's largest side."""
    fg = (image_bgr.max(axis=2) > threshold).astype(np.uint8)
    if fg.sum() < 16:
        return None
    x, y, w, h = cv2.boundingRect(fg)
    return max(w, h) / max(image_bgr.shape[:2])


def context_cell_fraction(image_bgr: np.ndarray) -> float | None:
    """Diameter of the cell nearest the centre, found by the runtime cell finder."""
    try:
        from leukedge.runtime.cells import CellFinder
    except ImportError:
        return None
    h, w = image_bgr.shape[:2]
    cells = CellFinder().find(image_bgr)
    if not cells:
        return None
    centre = np.array([w / 2.0, h / 2.0])
    best = min(cells, key=lambda c: float(np.linalg.norm(np.asarray(c.centroid) - centre)))
    x0, y0, x1, y1 = best.box
    return max(x1 - x0, y1 - y0) / max(h, w)


def estimate_cell_fraction(
    records: Sequence[Record], crop_style: str, sample: int = 64, seed: int = 0
) -> tuple[float, int]:
    """Median cell fraction over a sample of images, and how many images gave a value.

    Falls back to :data:`DEFAULT_CELL_FRACTION` when no image gives one.
    """
    rng = np.random.default_rng(seed)
    chosen = [records[i] for i in rng.permutation(len(records))[:sample]]
    measure = masked_cell_fraction if crop_style == "masked" else context_cell_fraction
    values = []
    for r in chosen:
        try:
            v = measure(read_image(r.path))
        except ImageReadError:
            continue
        if v is not None and 0.1 <= v <= 1.0:
            values.append(v)
    if not values:
        return DEFAULT_CELL_FRACTION, 0
    return float(np.clip(np.median(values), 0.1, 1.0)), len(values)
