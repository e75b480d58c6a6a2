"""A cell finder for pipeline tests without segmentation: two cells per frame, one per half."""

from __future__ import annotations

import numpy as np

from leukedge.runtime.cells import Cell


class TwoCells:
    """Reports the top-left and bottom-right quarter of every frame as cells."""

    cell_diameter_px = None
    um_per_px = None

    def __init__(self, touches_edge: bool = True) -> None:
        self.touches_edge = touches_edge  # edge cells are counted per detection, never once

    def find(self, frame: np.ndarray) -> list[Cell]:
        h, w = frame.shape[:2]
        boxes = [(0, 0, w // 2, h // 2), (w // 2, h // 2, w, h)]
        return [
            Cell(
                box=b,
                centroid=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                mask=np.ones((b[3] - b[1], b[2] - b[0]), bool),
                area=(b[3] - b[1]) * (b[2] - b[0]),
                touches_edge=self.touches_edge,
            )
            for b in boxes
        ]
