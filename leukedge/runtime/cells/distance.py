"""Distance to the outside of a mask, safe for masks that have no outside pixel."""

from __future__ import annotations

import cv2
import numpy as np


def inside_distance(mask: np.ndarray) -> np.ndarray:
    """L2 distance (3x3 mask) of every mask pixel to the nearest pixel outside it, float32.

    The frame edge is not the outside: a mask that covers the whole image has
    no distance at all, and OpenCV then fills it with FLT_MAX (3.4e38), which
    overflows every integer radius drawn from it. Such a mask (a frame that is
    all nucleus: a close-up, a stain the finder misreads) gets the image's
    longer side everywhere instead: as deep as anything in it can be.
    """
    m = mask if mask.dtype == np.uint8 else mask.astype(np.uint8)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_3)
    if m.size and cv2.countNonZero(m) == m.size:
        dist.fill(float(max(m.shape[:2])))
    return dist
