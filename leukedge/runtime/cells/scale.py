"""Scale: the expected white-cell diameter of a frame, measured on its red cells
(granulometry of the red-cell mask) or, without them, on its largest nucleus, and how far
to trust it."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import cv2
import numpy as np

from leukedge.runtime.cells.distance import inside_distance
from leukedge.runtime.cells.stain import StainMaps
from leukedge.runtime.cells.types import (
    RBC_DIAMETER_UM,
    WBC_DIAMETER_UM,
    ScaleEstimate,
    Tuning,
)

_SQUARE3 = np.ones((3, 3), np.uint8)
_SQUARE3.flags.writeable = False
_SQUARE5 = np.ones((5, 5), np.uint8)
_SQUARE5.flags.writeable = False


def red_cell_mask(maps: StainMaps, tuning: Tuning) -> np.ndarray:
    """Dense, non-nuclear pixels (red cells), with specks opened away; uint8 0/1."""
    red = (maps.density > 1.5 * tuning.cyto_density) & (maps.nuclear < 0.6 * tuning.nuclear_od)
    return cv2.morphologyEx(red.view(np.uint8), cv2.MORPH_OPEN, _SQUARE3)


def fill_pale_centres(mask: np.ndarray) -> np.ndarray:
    """Fill the pale centres of red cells: round holes smaller than half their outline.

    A biconcave red cell is often a ring in the mask. Its centre is a round hole
    well inside one outline; the background enclosed by a loop of touching red
    cells is ragged (cusps where cells meet) or large, and is left open.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    holes = []
    outline_area: dict[int, float] = {}
    for c, parent in zip(contours, hierarchy[0][:, 3].tolist(), strict=True):
        if parent < 0:
            continue
        if len(c) <= 4:  # a pinhole: fill it whatever it is
            holes.append(c)
            continue
        area = cv2.contourArea(c)
        if parent not in outline_area:
            outline_area[parent] = cv2.contourArea(contours[parent])
        if area > 0.5 * outline_area[parent]:
            continue
        _, radius = cv2.minEnclosingCircle(c)
        if area >= 0.5 * np.pi * radius**2:
            holes.append(c)
    if not holes:
        return mask
    out = mask.copy()
    cv2.drawContours(out, holes, -1, 1, -1)
    return out


def opening_areas(
    mask: np.ndarray, radii: np.ndarray, dist: np.ndarray | None = None
) -> np.ndarray:
    """Area of the morphological opening of ``mask`` by a disc of each radius.

    The opening by radius r is every pixel within r of a point where a disc of
    radius r fits (distance to the outside >= r): one distance transform
    (``dist``, computed here when None), then a threshold and a dilation per
    radius, over the bounding box of those points only.
    """
    if dist is None:
        dist = inside_distance(mask)
    h, w = mask.shape
    out = np.zeros(len(radii))
    centres = np.empty((h, w), dtype=bool)
    for k, r in enumerate(radii):
        np.greater_equal(dist, r, out=centres)
        x, y, bw, bh = cv2.boundingRect(centres.view(np.uint8))
        if bw == 0:
            break
        kernel = _round_kernel(round(r, 2))
        n = kernel.shape[0] // 2
        x0, y0, x1, y1 = max(0, x - n), max(0, y - n), min(w, x + bw + n), min(h, y + bh + n)
        grown = cv2.dilate(centres[y0:y1, x0:x1].view(np.uint8), kernel)
        out[k] = cv2.countNonZero(cv2.bitwise_and(grown, mask[y0:y1, x0:x1]))
    return out


@lru_cache(maxsize=256)
def _round_kernel(radius: float) -> np.ndarray:
    """Structuring element of the pixels within ``radius`` (not rounded) of the centre."""
    n = int(np.ceil(radius - 1e-6))
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.uint8)


def red_cell_diameter(mask: np.ndarray, radius: float = 8.0, step: float = 1.2) -> float | None:
    """Typical red-cell diameter in ``mask`` (pale centres filled): the granulometry mode.

    Each pixel belongs to the largest disc that fits in the mask and covers it.
    In a union of overlapping red cells (chains, clumps, crowded fields) almost
    every pixel lies in a disc the size of one red cell, so the area histogram
    of those disc sizes (the pattern spectrum: area lost between successive
    openings) peaks at the red-cell radius; specks and tight clumps only add
    tails. Widths, areas and counts of connected regions all drift upwards
    with crowding.

    The mask is first reduced so that a disc of the depth most of it has is
    ``radius`` pixels; radii 0.25-2.7x that, ``step`` apart, are opened, and
    the peak is interpolated between them.
    """
    dist = inside_distance(mask)
    inside = dist[dist > 0]
    if inside.size < 50:
        return None
    depth = np.bincount(np.minimum(4.0 * inside, 4095).astype(np.intp))  # quarter pixels
    k90 = int(np.searchsorted(np.cumsum(depth), 0.9 * inside.size))
    r_big = (k90 + 0.5) / 4.0 / 0.68  # a disc's 90th percentile of depth is 0.68 of its radius
    f = max(1.0, r_big / radius)
    small = mask if f == 1.0 else shrink_mask(mask, 1.0 / f)
    f = mask.shape[1] / small.shape[1]
    r_big /= f
    n = int(np.log(2.7 / 0.25) / np.log(step)) + 2
    radii = max(1.0, 0.25 * r_big) * step ** np.arange(n)
    areas = opening_areas(small, radii, dist if small is mask else None)
    spectrum = np.convolve(areas[:-1] - areas[1:], [1.0, 2.0, 3.0, 2.0, 1.0], "same")
    k = int(np.argmax(spectrum))
    if spectrum[k] <= 0:
        return None
    shift = 0.0  # parabola through the peak and its neighbours, in log radius
    if 0 < k < len(spectrum) - 1:
        a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
        if a - 2 * b + c < 0:
            shift = float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
    # the lost area between radii k and k+1 belongs to discs of radius ~ their geometric mean
    return 2.0 * f * float(radii[k]) * step ** (0.5 + shift)


def shrink_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """A 0/1 mask reduced by ``scale`` (< 1): a pixel is set when most of its area was."""
    h, w = mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (cv2.resize(mask * 255, size, interpolation=cv2.INTER_AREA) > 127).view(np.uint8)


def _central_window(img: np.ndarray, max_pixels: float) -> np.ndarray:
    """The centre of ``img`` with at most about ``max_pixels`` pixels (all of it when smaller)."""
    h, w = img.shape[:2]
    f = np.sqrt(max_pixels / (h * w))
    if f >= 1.0:
        return img
    ch, cw = max(1, int(h * f)), max(1, int(w * f))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return img[y0 : y0 + ch, x0 : x0 + cw]


def isolated_red_cells(mask: np.ndarray, red_diameter: float) -> tuple[int, float | None]:
    """(count, coefficient of variation of their diameters) of the isolated red cells.

    Isolated: connected regions of the red-cell mask (pale centres filled) that
    are round (filling at least 55 % of their box, sides within 1.6 : 1) and
    0.3-3x the area of one red cell of ``red_diameter``. The bounds are loose so
    that inconsistent sizes show in the spread; clumps and specks are left out.
    The CV is None for fewer than 5 such cells.
    """
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return 0, None
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    bw, bh = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
    disc = np.pi * (red_diameter / 2.0) ** 2
    round_ = (area >= 0.55 * bw * bh) & (np.maximum(bw, bh) <= 1.6 * np.minimum(bw, bh))
    ok = round_ & (area >= 0.3 * disc) & (area <= 3.0 * disc)
    count = int(np.count_nonzero(ok))
    if count < 5:
        return count, None
    eq = 2.0 * np.sqrt(area[ok] / np.pi)
    return count, float(eq.std() / eq.mean())


def measure_cell_diameter(maps: StainMaps, tuning: Tuning = Tuning()) -> ScaleEstimate | None:
    """Expected white-cell diameter in pixels of the image ``maps`` was made from, or None.

    Red cells are the yardstick: every smear is full of them and they are all
    about 7.5 µm across, while white cells vary from 7 to 18 µm. Their size is
    the mode of the granulometry of the red-cell mask (:func:`red_cell_diameter`),
    which holds for isolated cells, chains and crowded overlapping fields
    alike. White-cell diameter = red-cell diameter x 12 / 7.5. Large images
    are measured in a central window (``scale_pixels``): a smear has red cells
    everywhere.

    With too few red cells (a single-cell crop, a frame of white cells) the
    largest nucleus is the yardstick instead, taken as 0.75 of its cell: a
    guess, flagged so. A red-cell size is a guess too when few red cells were
    measured, when they are so small here that noise passes for them, or when
    the isolated ones vary much in size (:func:`judge_scale`).
    """
    h, w = maps.density.shape
    red = red_cell_mask(maps, tuning)
    if cv2.countNonZero(red) >= 0.02 * h * w:
        red = fill_pale_centres(_central_window(red, tuning.scale_pixels))
        rbc = red_cell_diameter(red)
        if rbc is not None and rbc >= 2.0:  # however coarse: a finer copy can refine it
            count = int(cv2.countNonZero(red) / (np.pi * (rbc / 2.0) ** 2))
            isolated, cv = isolated_red_cells(red, rbc)
            est = ScaleEstimate(
                rbc * WBC_DIAMETER_UM / RBC_DIAMETER_UM,
                "red cells",
                red_cells=count,
                isolated=isolated,
                cv=cv,
                red_diameter_px=rbc,
            )
            return judge_scale(est, tuning)
    nuc: np.ndarray = (maps.nuclear > tuning.nuclear_od).astype(np.uint8)
    nuc = cv2.morphologyEx(nuc, cv2.MORPH_CLOSE, _SQUARE5)
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    biggest = max((cv2.contourArea(c) for c in contours), default=0.0)
    if biggest < 16:
        return None
    d = float(2.0 * np.sqrt(biggest / np.pi) / 0.75)
    return judge_scale(ScaleEstimate(d, "largest nucleus"), tuning)


def judge_scale(est: ScaleEstimate, tuning: Tuning = Tuning()) -> ScaleEstimate:
    """``est`` with its ``reason`` set: why the size is a guess, None when it is not.

    Lengths are those of the image the red cells were measured on, where their
    width says whether they were resolved at all.
    """
    reason: str | None = None
    if est.source == "given":
        pass
    elif est.source == "default":
        reason = "no red cell and no nucleus to measure it on"
    elif est.source != "red cells":
        reason = f"too few red cells to measure, taken from the {est.source}"
    elif est.red_cells < tuning.scale_red_cells:
        reason = f"only {est.red_cells} red cells measured"
    elif est.red_diameter_px is not None and est.red_diameter_px < tuning.scale_red_px:
        reason = f"red cells only {est.red_diameter_px:.1f} px across where measured"
    elif est.cv is not None and est.cv > tuning.scale_cv:
        reason = f"red-cell diameters vary by {est.cv:.0%}"
    return replace(est, reason=reason)


def estimate_cell_diameter(maps: StainMaps, tuning: Tuning = Tuning()) -> float | None:
    """Expected white-cell diameter in pixels of ``maps``' image, or None: see
    :func:`measure_cell_diameter`, which also says how far to trust it."""
    est = measure_cell_diameter(maps, tuning)
    return None if est is None else est.cell_diameter_px
