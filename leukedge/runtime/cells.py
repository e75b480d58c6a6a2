"""Find every white blood cell in a stained blood or marrow smear frame.

Needs only numpy and OpenCV, so it runs on the device next to the microscope.

How a frame is read (Romanowsky stains: Giemsa, Wright, May-Grünwald-Giemsa):

1. **Scale.** A white cell is about 12 µm across. Its size in pixels comes from
   ``cell_diameter_px``, else from ``um_per_px``, else from the frame itself
   (:func:`estimate_cell_diameter`): red cells, all about 7.5 µm, are the
   yardstick, and the granulometry of the red-cell mask gives their size even
   where they overlap in chains and clumps. All work happens on a reduced
   *working image* in which a white cell is at most ``Tuning.working_diameter``
   pixels wide; results are mapped back to frame pixels.
2. **Light.** The slide background is the brightest, most common colour. A smooth
   background field is fitted to it per channel (:func:`background_grid`), which
   removes uneven illumination and the colour cast of lamp and camera; each pixel
   becomes an optical density (absorbance) per channel, Beer-Lambert style.
3. **Stain.** Nuclei take up the blue-violet dye (azure/haematoxylin), which
   absorbs red light; red cells take up eosin, which absorbs green and blue but
   lets red through. ``nuclear = OD_red - OD_blue`` is therefore high on nuclei
   and platelets, near zero on the background and negative on red cells;
   ``density = mean OD`` separates any cell material from the background.
4. **Cells.** Nuclear-stain pixels form the nucleus mask. Cut along the thin pale
   lines between pressed nuclei (:func:`nucleus_cores`), its distance transform
   has one peak per round nuclear body; bodies are grouped into cells
   (:func:`group_peaks`): an oval nucleus stays thick between its peaks, the
   small lobes of a granulocyte lie inside one round cell. Every nucleus too
   small-lobed for a peak still gets one marker. The whole cell is the nucleus
   with its lobes closed together plus the cytoplasm around it (dense, not red);
   touching cells are divided between their seeded nuclei
   (:func:`split_cells`), and :func:`merge_parts` joins parts that are lobes of
   one granulocyte or pieces of one cell cut by the frame edge. Bodies with too
   little nucleus (red cells, debris) or with a small pale one (platelets) are
   dropped; cells cut by the frame edge are kept, flagged, and their whole
   extent is estimated for the classifier crop (:func:`whole_cell_circle`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from leukedge.runtime.images import to_bgr_uint8

if TYPE_CHECKING:
    from leukedge.spec import ModelSpec

WBC_DIAMETER_UM = 12.0
RBC_DIAMETER_UM = 7.5

_LOG_LUT = np.repeat(np.log1p(np.arange(256, dtype=np.float32)).reshape(1, 256, 1), 3, axis=2)


@dataclass
class Cell:
    """One white cell, in frame pixels.

    ``box`` is (x0, y0, x1, y1) with x1/y1 exclusive; ``mask`` is the cell's
    pixels (nucleus and cytoplasm) over that box. ``score`` is in [0, 1]: the
    mean of how clearly the nucleus is stained (95th percentile of the nuclear
    stain over twice the nucleus threshold, capped at 1) and how plausible the
    cell's size is (1 between 0.5 and 1.7 expected white-cell diameters, falling
    off outside). It ranks detections; it is not a probability.

    For a cell cut by the frame edge, ``full_diameter`` and ``full_centre``
    (x, y, in box coordinates: pixel i spans i..i+1) estimate the whole cell,
    part of which lies outside the frame (:func:`whole_cell_circle`); the
    classifier crop is sized and centred by them. Both are None for cells
    seen whole.
    """

    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    mask: np.ndarray
    area: int
    touches_edge: bool
    score: float = 1.0
    crop: np.ndarray | None = None
    full_diameter: float | None = None
    full_centre: tuple[float, float] | None = None

    @property
    def diameter(self) -> float:
        """Equivalent-circle diameter of the mask, in frame pixels."""
        return float(2.0 * np.sqrt(self.area / np.pi))


@dataclass(frozen=True)
class Tuning:
    """Knobs of the finder. Lengths are fractions of the expected white-cell diameter D.

    The defaults were chosen on real BCCD and ALL-IDB1 frames; the figures they
    reach are in ``benchmarks/results/cell_finder.md``.
    """

    working_diameter: float = 25.0  # largest D in working-image pixels
    coarse_side: int = 256  # longest side of the image the scale is measured on
    fine_rbc: float = 9.0  # red cells narrower than this (px) there: measure again, larger
    reuse_scale: float = 0.15  # a copy this close (fraction) to the working scale is reused
    scale_pixels: int = 100_000  # red cells are measured in a central window of this many pixels
    nuclear_od: float = 0.16  # OD_red - OD_blue above which a pixel is nuclear stain
    valley: float = 0.3  # stain valley (Hessian, OD/px^2) that separates pressed nuclei
    texture_hole: float = 0.03  # valley holes smaller than this (x D^2) are chromatin texture
    lobe_join: float = 0.10  # closing radius that joins the lobes of one nucleus
    cyto_density: float = 0.035  # mean OD above which a pixel is not background
    cyto_eosin: float = -0.04  # nuclear stain below which a pixel belongs to a red cell
    cyto_reach: float = 0.35  # cytoplasm further than this from a nucleus is ignored
    min_peak: float = 0.18  # thinnest nuclear body (radius) that gets a marker of its own
    peak_spacing: float = 0.30  # two markers are at least this far apart
    neck_ratio: float = 0.85  # nuclear bodies are one nucleus when it is this thick between them
    lobe_radius: float = 0.38  # bodies thinner than this (radius) may be lobes of one cell
    cell_neck_ratio: float = 0.9  # ... and are when the cell is this thick between them
    enclosed: float = 0.6  # a part sharing this much of its border with one neighbour is a lobe
    granulocyte_nf: float = 0.62  # parts with less nucleus than this (fraction) are granulocytic
    lobed_nf: float = 0.75  # ... or with less than this and only lobe-thin nucleus (lobe_radius)
    thin_lobe: float = 0.28  # ... or with a nucleus no thicker than this (radius): lobes
    granulocyte_contact: float = 0.15  # ... and share at least this much of their outline
    lobe_gap: float = 0.12  # ... and their nuclei are at most this far apart: one granulocyte
    edge_union: float = 1.6  # parts cut by the frame edge whose union is at most this (x D^2)
    edge_notch: float = 0.15  # ... and has no notch deeper than this (x D): one cell
    min_part: float = 0.2  # a split part smaller than this (x D^2) is not a cell of its own
    min_nucleus_area: float = 0.08  # nucleus per cell, x D^2 (a platelet is 0.03-0.1 D^2)
    small_nucleus_area: float = 0.2  # a nucleus smaller than this (x D^2) must be dark:
    small_nucleus_od: float = 0.45  # 95th percentile of its nuclear stain at least this

    @classmethod
    def from_kwargs(cls, **kwargs: float) -> Tuning:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown tuning option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)


# --------------------------------------------------------------------------- light and stain


def shrink(img: np.ndarray, scale: float) -> np.ndarray:
    """Downscale by ``scale`` (<= 1).

    Area averaging, except for strong reductions of large frames: there area
    averaging costs more than the rest of the finder together, and bilinear
    sampling is enough because the stain maps are smoothed afterwards.
    """
    if scale >= 0.999:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    fast = scale < 0.5 and h * w > 1_000_000
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if fast else cv2.INTER_AREA)


def background_grid(img: np.ndarray, tiles: tuple[int, int] = (6, 8)) -> np.ndarray:
    """Smooth per-channel log background of ``img`` on a coarse grid, float32 (gh, gw, 3).

    Each tile votes with the median colour of its brightest 30 %; a quadratic
    surface per channel is fitted to the votes, dropping tiles darker than the
    fit (tiles covered by cells). Dividing by it removes uneven illumination and
    the white balance of lamp and camera at once.
    """
    h, w = img.shape[:2]
    ty, tx = max(1, min(tiles[0], h // 4)), max(1, min(tiles[1], w // 4))
    k = 8
    thumb = cv2.resize(img, (tx * k, ty * k), interpolation=cv2.INTER_AREA)
    logs = cv2.LUT(thumb, _LOG_LUT).reshape(ty, k, tx, k, 3).transpose(0, 2, 1, 3, 4)
    logs = logs.reshape(ty * tx, k * k, 3)
    n_top = int(0.3 * k * k)
    order = np.argsort(logs.mean(axis=2), axis=1)[:, -n_top:]
    top = np.sort(np.take_along_axis(logs, order[:, :, None], axis=1), axis=1)
    votes = top[:, n_top // 2, :]  # per-channel median of the brightest 30 %
    if ty * tx < 8:
        return votes.max(axis=0).reshape(1, 1, 3).astype(np.float32)
    yy, xx = np.meshgrid(
        (np.arange(ty) + 0.5) / ty - 0.5, (np.arange(tx) + 0.5) / tx - 0.5, indexing="ij"
    )
    X, Y = xx.ravel(), yy.ravel()
    A = np.stack([np.ones_like(X), X, Y, X * X, X * Y, Y * Y], axis=1)
    keep = np.ones(len(X), dtype=bool)
    coef = np.zeros((6, 3))
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(A[keep], votes[keep], rcond=None)
        res = (votes - A @ coef).mean(axis=1)
        spread = float(np.median(np.abs(res[keep]))) + 1e-3
        new_keep = res > -2.5 * spread
        if new_keep.sum() < 6 or (new_keep == keep).all():
            break
        keep = new_keep
    g = 16
    gy, gx = np.meshgrid(
        (np.arange(g) + 0.5) / g - 0.5, (np.arange(g) + 0.5) / g - 0.5, indexing="ij"
    )
    basis = np.stack([np.ones_like(gx), gx, gy, gx * gx, gx * gy, gy * gy], axis=-1)
    return (basis @ coef).astype(np.float32)


@dataclass
class StainMaps:
    """Per-pixel stain measures of a working image (float32, same size)."""

    nuclear: np.ndarray  # OD_red - OD_blue: nuclei/platelets > 0, red cells < 0
    density: np.ndarray  # mean OD: any cell material > 0


def stain_maps(img: np.ndarray, bg: np.ndarray | None = None) -> StainMaps:
    """Optical densities relative to the background, reduced to two stain measures.

    ``bg`` is a :func:`background_grid` (of this image or of another size of the
    same frame: it covers the frame whatever its resolution); fitted here when None.
    """
    h, w = img.shape[:2]
    logs = cv2.LUT(img, _LOG_LUT)
    if bg is None:
        bg = background_grid(img)
    bg_nuclear = cv2.resize(
        np.ascontiguousarray(bg[..., 2] - bg[..., 0]), (w, h), interpolation=cv2.INTER_LINEAR
    )
    bg_density = cv2.resize(
        np.ascontiguousarray(bg.mean(axis=2)), (w, h), interpolation=cv2.INTER_LINEAR
    )
    b, g, r = cv2.split(logs)
    nuclear = bg_nuclear - (r - b)
    density = bg_density - (b + g + r) * np.float32(1.0 / 3.0)
    return StainMaps(nuclear=nuclear, density=density)


# --------------------------------------------------------------------------- scale


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill holes (background enclosed by the mask) of at most ``max_area`` pixels."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    holes = [
        c
        for c, hh in zip(contours, hierarchy[0], strict=True)
        if hh[3] >= 0 and cv2.contourArea(c) <= max_area
    ]
    if not holes:
        return mask
    out = mask.copy()
    cv2.drawContours(out, holes, -1, 1, -1)
    return out


def red_cell_mask(maps: StainMaps, tuning: Tuning) -> np.ndarray:
    """Dense, non-nuclear pixels (red cells), with specks opened away; uint8 0/1."""
    red = (maps.density > 1.5 * tuning.cyto_density) & (maps.nuclear < 0.6 * tuning.nuclear_od)
    return cv2.morphologyEx(red.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


def fill_pale_centres(mask: np.ndarray) -> np.ndarray:
    """Fill the pale centres of red cells: round holes smaller than half their outline.

    A biconcave red cell is often a ring in the mask. Its centre is a round hole
    well inside one outline; the background enclosed by a loop of touching red
    cells is ragged (cusps where cells meet) or large, and is left open.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    parents = hierarchy[0][:, 3]
    holes = []
    for c, parent in zip(contours, parents, strict=True):
        if parent < 0:
            continue
        if len(c) <= 4:  # a pinhole: fill it whatever it is
            holes.append(c)
            continue
        area = cv2.contourArea(c)
        _, radius = cv2.minEnclosingCircle(c)
        if area <= 0.5 * cv2.contourArea(contours[parent]) and area >= 0.5 * np.pi * radius**2:
            holes.append(c)
    if not holes:
        return mask
    out = mask.copy()
    cv2.drawContours(out, holes, -1, 1, -1)
    return out


def opening_areas(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Area of the morphological opening of ``mask`` by a disc of each radius.

    The opening by radius r is every pixel within r of a point where a disc of
    radius r fits (distance to the outside >= r): one distance transform, then
    a threshold and a dilation per radius.
    """
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_3)
    out = np.zeros(len(radii))
    for k, r in enumerate(radii):
        centres = (dist >= r).astype(np.uint8)
        if not centres.any():
            break
        out[k] = cv2.countNonZero(cv2.dilate(centres, _round_kernel(round(r, 2))) & mask)
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
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_3)
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
    areas = opening_areas(small, radii)
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
    return (cv2.resize(mask * 255, size, interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)


def _central_window(img: np.ndarray, max_pixels: int) -> np.ndarray:
    """The centre of ``img`` with at most about ``max_pixels`` pixels (all of it when smaller)."""
    h, w = img.shape[:2]
    f = np.sqrt(max_pixels / (h * w))
    if f >= 1.0:
        return img
    ch, cw = max(1, int(h * f)), max(1, int(w * f))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return img[y0 : y0 + ch, x0 : x0 + cw]


def estimate_cell_diameter(maps: StainMaps, tuning: Tuning = Tuning()) -> float | None:
    """Expected white-cell diameter in pixels of the image ``maps`` was made from, or None.

    Red cells are the yardstick: every smear is full of them and they are all
    about 7.5 µm across, while white cells vary from 7 to 18 µm. Their size is
    the mode of the granulometry of the red-cell mask (:func:`red_cell_diameter`),
    which holds for isolated cells, chains and crowded overlapping fields
    alike. White-cell diameter = red-cell diameter x 12 / 7.5. Large images
    are measured in a central window (``scale_pixels``): a smear has red cells
    everywhere.

    With too few red cells (a single-cell crop, a frame of white cells) the
    largest nucleus is the yardstick instead, taken as 0.75 of its cell.
    """
    h, w = maps.density.shape
    red = red_cell_mask(maps, tuning)
    if red.sum() >= 0.02 * h * w:
        red = _central_window(red, tuning.scale_pixels)
        rbc = red_cell_diameter(fill_pale_centres(red))
        if rbc is not None and rbc >= 2.0:  # however coarse: a finer copy can refine it
            return rbc * WBC_DIAMETER_UM / RBC_DIAMETER_UM
    nuc = (maps.nuclear > tuning.nuclear_od).astype(np.uint8)
    nuc = cv2.morphologyEx(nuc, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    biggest = max((cv2.contourArea(c) for c in contours), default=0.0)
    if biggest < 16:
        return None
    return 2.0 * np.sqrt(biggest / np.pi) / 0.75


# --------------------------------------------------------------------------- masks


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def nucleus_mask(maps: StainMaps, d: float, tuning: Tuning) -> np.ndarray:
    """Pixels of nuclear stain (nuclei, platelets), lightly smoothed, small holes filled.

    Not closed: the thin pale lines between nuclei of pressed cells must survive.
    """
    nuc = cv2.GaussianBlur(maps.nuclear, (0, 0), max(0.6, 0.03 * d))
    return fill_small_holes((nuc > tuning.nuclear_od).astype(np.uint8), 0.12 * d * d)


def valley_strength(nuclear: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Largest Hessian eigenvalue of the nuclear-stain map: high on thin pale lines.

    Two cells pressed together keep a thin line of pale cytoplasm and membrane
    between their nuclei, often about a pixel wide at working scale: a valley of
    the stain map that the second derivative across it shows where a threshold
    does not.
    """
    us = cv2.GaussianBlur(nuclear, (0, 0), sigma)
    dxx = cv2.Sobel(us, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(us, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(us, cv2.CV_32F, 1, 1, ksize=3)
    return 0.5 * (dxx + dyy + np.sqrt((dxx - dyy) ** 2 + 4.0 * dxy * dxy))


def nucleus_cores(maps: StainMaps, nucleus: np.ndarray, d: float, tuning: Tuning) -> np.ndarray:
    """The nucleus mask cut along stain valleys, so that pressed nuclei come apart.

    Valleys inside one nucleus (chromatin texture) mostly leave closed holes,
    which are filled again; the lines between cells run to the outside and stay.
    """
    core = nucleus & (valley_strength(maps.nuclear) <= tuning.valley).astype(np.uint8)
    return fill_small_holes(core, tuning.texture_hole * d * d)


def join_lobes(nucleus: np.ndarray, d: float, tuning: Tuning) -> np.ndarray:
    """Nucleus mask closed so that the lobes and granules of one nucleus form one body."""
    return cv2.morphologyEx(nucleus, cv2.MORPH_CLOSE, _disc(tuning.lobe_join * d))


def cell_mask(maps: StainMaps, joined: np.ndarray, d: float, tuning: Tuning) -> np.ndarray:
    """Whole-cell material: the joined nuclei plus the cytoplasm around them.

    Cytoplasm is any pixel near a nucleus that is denser than the background and
    not eosin-red (a red cell); an opening cuts thin bridges to neighbours.
    """
    sigma = max(0.6, 0.04 * d)
    dens = cv2.GaussianBlur(maps.density, (0, 0), sigma)
    nucl = cv2.GaussianBlur(maps.nuclear, (0, 0), sigma)
    cyto = (dens > tuning.cyto_density) & (nucl > tuning.cyto_eosin)
    near = cv2.dilate(joined, _disc(tuning.cyto_reach * d)) > 0
    m = ((cyto & near) | (joined > 0)).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disc(0.08 * d))
    m |= joined
    return fill_small_holes(m, 0.25 * d * d)


# --------------------------------------------------------------------------- markers


def nucleus_peaks(cores: np.ndarray, d: float, tuning: Tuning) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) and radii of the round bodies of ``cores``: distance-transform peaks.

    A peak is a local maximum at least ``min_peak`` x D deep; of peaks closer
    than ``peak_spacing`` x D only the deepest is kept.
    """
    dist = cv2.distanceTransform(cores, cv2.DIST_L2, 3)
    spacing = max(1.0, tuning.peak_spacing * d)
    size = 2 * int(round(spacing)) + 1
    peaks = (dist >= cv2.dilate(dist, np.ones((size, size), np.uint8))) & (
        dist >= tuning.min_peak * d
    )
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return np.zeros((0, 2)), np.zeros(0, np.float32)
    vals = dist[ys, xs]
    # Plateaus give many peak pixels: keep the deepest per grid cell first, then
    # suppress the shallower of any two closer than the spacing.
    cell = max(1.0, spacing / 1.5)
    bucket = (ys // cell).astype(np.int64) * 100003 + (xs // cell).astype(np.int64)
    order = np.lexsort((-vals, bucket))
    first = np.ones(order.size, dtype=bool)
    first[1:] = bucket[order][1:] != bucket[order][:-1]
    cand = order[first]
    cand = cand[np.argsort(-vals[cand], kind="stable")]
    kept: list[int] = []
    for i in cand:
        if kept:
            dx = xs[kept] - xs[i]
            dy = ys[kept] - ys[i]
            if np.any(dx * dx + dy * dy < spacing * spacing):
                continue
        kept.append(int(i))
    pts = np.stack([xs[kept], ys[kept]], axis=1).astype(np.float64)
    return pts, vals[kept].astype(np.float32)


def add_missing_peaks(
    pts: np.ndarray, radii: np.ndarray, joined: np.ndarray, d: float, tuning: Tuning
) -> tuple[np.ndarray, np.ndarray]:
    """Give every piece of nucleus large enough for a cell a marker.

    A nucleus made of small lobes (a neutrophil) has no body thick enough for a
    peak of its own, and a small cell pressed to a large one can have its
    nucleus joined to the other's. Nucleus further than
    max(``peak_spacing`` x 2 x D, 1.3 x the peak's radius) from every peak is
    uncovered; each uncovered piece of at least half ``min_nucleus_area`` gets
    a marker at its deepest point (whether it is a cell is decided later).
    """
    covered = np.zeros_like(joined)
    for (x, y), r in zip(pts, radii, strict=True):
        reach = max(2.0 * tuning.peak_spacing * d, 1.3 * float(r))
        cv2.circle(covered, (int(round(x)), int(round(y))), int(round(reach)), 1, -1)
    rest = cv2.bitwise_and(joined, 1 - covered)
    contours, _ = cv2.findContours(rest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = 0.5 * tuning.min_nucleus_area * d * d  # lenient: cells are judged later
    dist = None
    new_pts, new_r = [], []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        if dist is None:
            dist = cv2.distanceTransform(joined, cv2.DIST_L2, 3)
        x, y, w, h = cv2.boundingRect(c)
        piece = np.zeros((h, w), np.uint8)
        cv2.drawContours(piece, [c], -1, 1, -1, offset=(-x, -y))
        sub = np.where(
            (piece > 0) & (rest[y : y + h, x : x + w] > 0), dist[y : y + h, x : x + w], 0
        )
        yy, xx = divmod(int(np.argmax(sub)), w)
        new_pts.append((x + xx, y + yy))
        new_r.append(sub[yy, xx])
    if not new_pts:
        return pts, radii
    return (
        np.vstack([pts.reshape(-1, 2), np.asarray(new_pts, dtype=np.float64)]),
        np.concatenate([radii, np.asarray(new_r, dtype=np.float32)]),
    )


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _segment_minima(
    img: np.ndarray, pts: np.ndarray, pairs: np.ndarray, samples: int = 48
) -> np.ndarray:
    """Minimum of ``img`` along the straight segment of each pair of points (nearest pixel)."""
    t = np.linspace(0.0, 1.0, samples)[None, :]
    p, q = pts[pairs[:, 0]], pts[pairs[:, 1]]
    xs = np.rint(p[:, :1] + t * (q[:, :1] - p[:, :1])).astype(np.intp)
    ys = np.rint(p[:, 1:] + t * (q[:, 1:] - p[:, 1:])).astype(np.intp)
    np.clip(xs, 0, img.shape[1] - 1, out=xs)
    np.clip(ys, 0, img.shape[0] - 1, out=ys)
    return img[ys, xs].min(axis=1)


def group_peaks(
    pts: np.ndarray,
    radii: np.ndarray,
    cores: np.ndarray,
    cells: np.ndarray,
    d: float,
    tuning: Tuning,
) -> list[int]:
    """Which nuclear bodies belong to the same cell; one group index per peak.

    Two bodies are one cell when

    - the nucleus stays thick between them (``neck_ratio`` of the thinner
      body's radius): an oval or kidney-shaped nucleus, or
    - both are lobe-sized (radius under ``lobe_radius`` x D) and the whole cell
      (nucleus + cytoplasm) stays as thick between them as at their centres
      (``cell_neck_ratio``): lobes of a granulocyte inside one round cell.

    Touching blasts have large nuclei and a thin pale line between them, so
    they stay apart.
    """
    k = len(pts)
    if k < 2:
        return [0] * k
    parent = list(range(k))
    gaps = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
    pairs = np.argwhere(np.triu(gaps <= 1.6 * d, 1))
    if len(pairs) == 0:
        return list(range(k))
    dist_n = cv2.distanceTransform(cores, cv2.DIST_L2, 3)
    dist_c = cv2.distanceTransform(cells, cv2.DIST_L2, 3)
    ix = np.rint(pts).astype(np.intp)
    cell_r = dist_c[ix[:, 1], ix[:, 0]]
    i, j = pairs[:, 0], pairs[:, 1]
    oval = _segment_minima(dist_n, pts, pairs) >= tuning.neck_ratio * np.minimum(radii[i], radii[j])
    lobes = np.maximum(radii[i], radii[j]) < tuning.lobe_radius * d
    thick = _segment_minima(dist_c, pts, pairs) >= tuning.cell_neck_ratio * np.minimum(
        cell_r[i], cell_r[j]
    )
    for a, b in pairs[oval | (lobes & thick)]:
        parent[_root(parent, int(a))] = _root(parent, int(b))
    roots: dict[int, int] = {}
    return [roots.setdefault(_root(parent, i), len(roots)) for i in range(k)]


def draw_markers(
    cores: np.ndarray, pts: np.ndarray, radii: np.ndarray, groups: list[int]
) -> np.ndarray:
    """Seeds (int32, 1..n): each group's whole nuclear bodies, joined by lines.

    Seeding whole nuclei, not just their centres, puts the border between
    two touching cells half way between their nuclei rather than half way
    between their centres. A core holding peaks of several groups (pressed
    nuclei that were not cut apart) seeds only discs around its peaks.
    """
    n, comp = cv2.connectedComponents(cores, connectivity=8)
    owner = np.zeros(n, dtype=np.int32)
    mixed = np.zeros(n, dtype=bool)
    for (x, y), g in zip(np.rint(pts).astype(int), groups, strict=True):
        c = comp[y, x]
        if c == 0:
            continue
        if owner[c] and owner[c] != g + 1:
            mixed[c] = True
        owner[c] = g + 1
    owner[mixed] = 0
    markers = owner[comp]
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        c = (int(round(pts[i][0])), int(round(pts[i][1])))
        r = max(1, int(round(0.5 * radii[i])))
        cv2.circle(markers, c, r, g + 1, -1)
        if g in first:
            j = first[g]
            cv2.line(markers, c, (int(round(pts[j][0])), int(round(pts[j][1]))), g + 1, r)
        else:
            first[g] = i
    return markers


# --------------------------------------------------------------------------- splitting


def _nearest_seed(body: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Give every body pixel the label of the nearest seed pixel (0 outside the body)."""
    free = (seeds == 0).astype(np.uint8)
    _, idx = cv2.distanceTransformWithLabels(free, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    seed_labels = seeds[seeds > 0]  # the seed pixels in raster order, as OpenCV numbers them
    out = seed_labels[np.maximum(idx, 1) - 1]
    out[~body] = 0
    return out


def _adjacent_pairs(
    lab: np.ndarray, frame_sides: tuple[bool, bool, bool, bool] = (False,) * 4
) -> dict[tuple[int, int], int]:
    """Pairs of labels that touch, with the length of their shared border.

    Label 0 is the outside. ``frame_sides`` (left, top, right, bottom) mark
    sides of ``lab`` that lie on the frame edge: what is beyond them is unknown,
    so borders there are not counted at all.
    """
    pairs: dict[tuple[int, int], int] = {}
    padded = np.pad(lab.astype(np.int64) + 1, 1)  # 0 = unknown, 1 = outside, 2.. = parts
    left, top, right, bottom = frame_sides
    padded[:, 0] = 0 if left else 1
    padded[0, :] = 0 if top else 1
    padded[:, -1] = 0 if right else 1
    padded[-1, :] = 0 if bottom else 1
    for a, b in ((padded[:, :-1], padded[:, 1:]), (padded[:-1, :], padded[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        if not m.any():
            continue
        lo, hi = np.minimum(a[m], b[m]) - 1, np.maximum(a[m], b[m]) - 1
        keys, counts = np.unique(lo * 65536 + hi, return_counts=True)
        for key, c in zip(keys.tolist(), counts.tolist(), strict=True):
            pair = (key // 65536, key % 65536)
            pairs[pair] = pairs.get(pair, 0) + c
    return pairs


def _nucleus_gap(lab: np.ndarray, joined: np.ndarray, a: int, b: int) -> float:
    """Shortest distance between the nucleus pixels of parts ``a`` and ``b`` (inf if one has none)."""
    nuc_a = (lab == a) & (joined > 0)
    nuc_b = (lab == b) & (joined > 0)
    if not nuc_a.any() or not nuc_b.any():
        return float("inf")
    dist = cv2.distanceTransform((~nuc_a).astype(np.uint8), cv2.DIST_L2, 3)
    return float(dist[nuc_b].min())


def _nucleus_radii(
    lab: np.ndarray,
    joined: np.ndarray,
    n: int,
    d: float,
    frame_sides: tuple[bool, bool, bool, bool],
) -> np.ndarray:
    """Radius of the thickest nuclear body of each part 0..n (its deepest distance-transform value).

    Nuclei cut by the frame edge are taken to go on beyond it (the mask is
    extended by replication there, by one expected cell diameter ``d``), so a
    cut round nucleus is not mistaken for a thin lobe.
    """
    left, top, right, bottom = frame_sides
    pad = max(1, int(np.ceil(d)))
    pads = (top * pad, bottom * pad, left * pad, right * pad)
    lab_p = cv2.copyMakeBorder(lab.astype(np.int32), *pads, cv2.BORDER_REPLICATE)
    nuc_p = cv2.copyMakeBorder((joined > 0).astype(np.uint8), *pads, cv2.BORDER_REPLICATE)
    out = np.zeros(n + 1, np.float32)
    for i in range(1, n + 1):
        nuc = ((lab_p == i) & (nuc_p > 0)).astype(np.uint8)
        if nuc.any():
            out[i] = float(cv2.distanceTransform(nuc, cv2.DIST_L2, 3).max())
    return out


def _parts_at_frame_edge(
    lab: np.ndarray, n: int, frame_sides: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Which parts 0..n reach a side of ``lab`` that lies on the frame edge."""
    out = np.zeros(n + 1, dtype=bool)
    left, top, right, bottom = frame_sides
    for on_edge, line in ((left, lab[:, 0]), (top, lab[0]), (right, lab[:, -1]), (bottom, lab[-1])):
        if on_edge:
            out[line] = True
    out[0] = False
    return out


def notch_depth(mask: np.ndarray) -> float:
    """Depth in pixels of the deepest concavity of the largest outline in ``mask``."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0
    contour = max(contours, key=cv2.contourArea)
    if len(contour) < 4:
        return 0.0
    hull = cv2.convexHull(contour, returnPoints=False)
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:  # self-intersecting outlines of one-pixel necks
        return 0.0
    return 0.0 if defects is None else float(defects.reshape(-1, 4)[:, 3].max()) / 256.0


def _one_cut_cell(
    lab: np.ndarray, a: int, b: int, at_edge: np.ndarray, area: np.ndarray, d: float, t: Tuning
) -> bool:
    """Whether parts ``a`` and ``b``, both cut by the frame edge, are pieces of one cell."""
    if not (at_edge[a] and at_edge[b]) or area[a] + area[b] > t.edge_union * d * d:
        return False
    return notch_depth((lab == a) | (lab == b)) <= t.edge_notch * d


def merge_parts(
    lab: np.ndarray,
    joined: np.ndarray,
    n: int,
    d: float,
    tuning: Tuning,
    frame_sides: tuple[bool, bool, bool, bool] = (False,) * 4,
) -> np.ndarray:
    """Join parts of one body that are pieces of one cell rather than separate cells.

    - A part mostly enclosed by one larger neighbour (sharing more than
      ``enclosed`` of its border with it) that has much cytoplasm (nucleus
      fraction below ``granulocyte_nf``) is a lobe inside that granulocyte.
      Touching cells meet along a short stretch of their outlines; a small
      blast squeezed into a cluster can be enclosed too, but by blasts, which
      are mostly nucleus.
    - A part too small to be a cell (``min_part`` x D^2) joins the neighbour it
      shares most border with.
    - Two parts that both have much cytoplasm, share a long border (at least
      ``granulocyte_contact`` of the shorter outline) and whose nuclei nearly
      touch (``lobe_gap`` x D) are one granulocyte whose lobes were taken for
      nuclei. Two touching cells each keep a rim of cytoplasm around their
      nucleus; blasts are mostly nucleus, so their clusters are not joined.
      Where the pale cytoplasm of a neutrophil is hardly seen, its parts look
      nucleus-rich; they still count as lobes when no part's nucleus is thicker
      than a lobe (``lobe_radius``) and nucleus is under ``lobed_nf`` of them,
      or when the nucleus is thin whatever the cytoplasm (``thin_lobe``): a
      blast's round nucleus is thick.
    - Two parts that both reach the frame edge and share a long border are
      pieces of one cut cell when together they are no larger than a cell
      (``edge_union`` x D^2) and their outline has no notch between them
      (``edge_notch`` x D): the visible part of one cell is convex, two cells
      meet in a notch. Lobes cut apart by the edge (their link lies outside
      the frame) and a nucleus seeded twice leave such pieces.
    """
    if n < 2:
        return lab
    flat = lab.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    nuc = np.bincount(flat, weights=(joined.ravel() > 0), minlength=n + 1)
    frac = nuc / np.maximum(area, 1.0)
    pairs = _adjacent_pairs(lab, frame_sides)
    border = np.zeros(n + 1)
    for (a, b), c in pairs.items():
        border[a] += c
        border[b] += c
    inner = {k: c for k, c in pairs.items() if k[0] > 0}
    parent = list(range(n + 1))
    for i in range(1, n + 1):
        shared = [(c, b if a == i else a) for (a, b), c in inner.items() if i in (a, b)]
        if area[i] == 0 or not shared:
            continue
        c, j = max(shared)
        lobe = (
            c >= tuning.enclosed * border[i]
            and area[j] >= 1.5 * area[i]
            and frac[j] < tuning.granulocyte_nf
        )
        if lobe or area[i] < tuning.min_part * d * d:
            parent[_root(parent, i)] = _root(parent, j)
    radii = _nucleus_radii(lab, joined, n, d, frame_sides)
    lobed = ((frac < tuning.lobed_nf) & (radii < tuning.lobe_radius * d)) | (
        radii < tuning.thin_lobe * d
    )
    at_edge = _parts_at_frame_edge(lab, n, frame_sides)
    for (a, b), c in inner.items():
        contact = c >= tuning.granulocyte_contact * min(border[a], border[b])
        if not contact:
            continue
        granular = max(frac[a], frac[b]) < tuning.granulocyte_nf or (lobed[a] and lobed[b])
        lobes = granular and _nucleus_gap(lab, joined, a, b) <= tuning.lobe_gap * d
        if lobes or _one_cut_cell(lab, a, b, at_edge, area, d, tuning):
            parent[_root(parent, a)] = _root(parent, b)
    roots = np.array([_root(parent, i) for i in range(n + 1)])
    return roots[lab]


def split_cells(
    cells: np.ndarray,
    markers: np.ndarray,
    joined: np.ndarray,
    d: float,
    tuning: Tuning,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Label every cell: one label per marker group; touching cells split between their nuclei.

    Works per connected body of ``cells``: a body with one marker is one cell as
    it is. In a body with several, every pixel goes to the nearest seeded
    nucleus (:func:`_nearest_seed`), then :func:`merge_parts` joins pieces of
    one cell again. Nearest-nucleus borders fall in the cytoplasm between
    touching cells, where the image often has no edge at all, and along the
    pale line between pressed nuclei, which the valley cut already followed;
    a flooding watershed on the image would let one cell's seed take its
    neighbour's cytoplasm before the neighbour's seed crossed its own strong
    nuclear edge. Returns the label image (0 = no cell) and the box
    (x0, y0, x1, y1) of each label 1..n, in working pixels.
    """
    h, w = cells.shape
    labels = np.zeros((h, w), dtype=np.int32)
    boxes: list[tuple[int, int, int, int]] = []
    contours, _ = cv2.findContours(cells, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        body = np.zeros((bh, bw), np.uint8)
        cv2.drawContours(body, [contour], -1, 1, -1, offset=(-x, -y))
        body = (body > 0) & (cells[y : y + bh, x : x + bw] > 0)
        mk = np.where(body, markers[y : y + bh, x : x + bw], 0)
        ids = np.unique(mk[mk > 0])
        if ids.size == 0:
            continue
        out = labels[y : y + bh, x : x + bw]
        if ids.size == 1:
            out[body] = len(boxes) + 1
            boxes.append((x, y, x + bw, y + bh))
            continue
        seeds = np.searchsorted(ids, mk).astype(np.int32) + 1
        seeds[mk == 0] = 0
        local = _nearest_seed(body, seeds)
        sides = (x == 0, y == 0, x + bw == w, y + bh == h)
        local = merge_parts(local, joined[y : y + bh, x : x + bw], ids.size, d, tuning, sides)
        for v in np.unique(local[local > 0]):
            part = local == v
            out[part] = len(boxes) + 1
            ys, xs = np.nonzero(part)
            boxes.append(
                (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
            )
    return labels, boxes


# --------------------------------------------------------------------------- finder


@dataclass
class Segmentation:
    """One frame at working scale: maps, masks and cell labels (for inspection and tests)."""

    scale: float  # working pixels per frame pixel
    diameter: float  # expected white-cell diameter in working pixels
    image: np.ndarray
    maps: StainMaps
    nucleus: np.ndarray
    joined: np.ndarray
    cells: np.ndarray
    labels: np.ndarray
    boxes: list[tuple[int, int, int, int]]


class CellFinder:
    """Find white cells in BGR frames; see the module docstring for the method.

    ``cell_diameter_px`` (white-cell diameter in frame pixels) or ``um_per_px``
    fixes the scale; without either it is measured on every frame. With a
    ``spec``, each cell gets ``crop`` from
    :func:`leukedge.runtime.preprocess.crop_cell`, ready for the classifier.
    ``tuning`` keywords override :class:`Tuning` fields.
    """

    def __init__(
        self,
        cell_diameter_px: float | None = None,
        um_per_px: float | None = None,
        spec: ModelSpec | None = None,
        **tuning: float,
    ) -> None:
        if cell_diameter_px is not None and not cell_diameter_px > 0:
            raise ValueError(f"cell_diameter_px must be > 0, got {cell_diameter_px}")
        if um_per_px is not None and not um_per_px > 0:
            raise ValueError(f"um_per_px must be > 0, got {um_per_px}")
        self.cell_diameter_px = cell_diameter_px
        self.um_per_px = um_per_px
        self.spec = spec
        self.tuning = Tuning.from_kwargs(**tuning)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **kwargs: float) -> CellFinder:
        """A finder whose cells come with classifier-ready crops for ``spec``."""
        return cls(spec=spec, **kwargs)

    @property
    def known_diameter(self) -> float | None:
        """White-cell diameter in frame pixels when given, else None (measured per frame)."""
        if self.cell_diameter_px is not None:
            return float(self.cell_diameter_px)
        if self.um_per_px is not None:
            return WBC_DIAMETER_UM / float(self.um_per_px)
        return None

    def _working_image(self, bgr: np.ndarray) -> tuple[np.ndarray, StainMaps, float, float]:
        """(working image, its stain maps, working px per frame px, D in working px).

        Without a known diameter the scale is measured on the frame itself
        (:meth:`_measure_scale`); then the frame is reduced to the scale where
        D is ``working_diameter`` pixels, unless a copy made while measuring is
        close enough to it. A larger copy is reduced rather than the frame:
        area averaging of a whole frame costs more than the rest of the finder.
        """
        t = self.tuning
        w = bgr.shape[1]
        diameter = self.known_diameter
        copies: list[tuple[np.ndarray, StainMaps, float]] = []
        bg = None
        if diameter is None:
            diameter, copies, bg = self._measure_scale(bgr)
        scale = min(1.0, t.working_diameter / diameter)
        near = [c for c in copies if abs(scale - c[2]) <= t.reuse_scale * c[2]]
        larger = [c for c in copies if c[2] > scale]
        if near:
            img, maps, _ = near[-1]
        else:
            src, src_scale = (larger[0][0], larger[0][2]) if larger else (bgr, 1.0)
            img = shrink(src, scale / src_scale)
            maps = stain_maps(img, bg)
        scale = img.shape[1] / w  # the exact ratio after rounding the size
        return img, maps, scale, diameter * scale

    def _measure_scale(
        self, bgr: np.ndarray
    ) -> tuple[float, list[tuple[np.ndarray, StainMaps, float]], np.ndarray]:
        """(D in frame pixels, the reduced copies it was measured on, their background grid).

        First on a small coarse copy (``coarse_side``). Where red cells are
        narrower than ``fine_rbc`` pixels there, their outlines and pale
        centres are blurred away, so it is measured again on a larger copy: at
        the working scale the first estimate implies, kept within 1.3-2.5x the
        coarse scale. That copy usually becomes the working image.
        """
        t = self.tuning
        h, w = bgr.shape[:2]
        s0 = min(1.0, t.coarse_side / max(h, w))
        small = shrink(bgr, s0)
        bg = background_grid(small)
        small_maps = stain_maps(small, bg)
        copies = [(small, small_maps, s0)]
        est = estimate_cell_diameter(small_maps, t)
        d0 = est if est is not None else min(small.shape[:2]) / 4.0
        d0 = float(np.clip(d0, 6.0, 1.5 * min(small.shape[:2])))
        rbc0 = d0 * RBC_DIAMETER_UM / WBC_DIAMETER_UM
        if est is None or rbc0 >= t.fine_rbc or s0 >= 1.0:
            return d0 / s0, copies, bg
        s_work = t.working_diameter / d0 * s0
        s1 = min(1.0, float(np.clip(s_work, 1.3 * s0, 2.5 * s0)))
        fine = shrink(bgr, s1)
        s1 = fine.shape[1] / w
        fine_maps = stain_maps(fine, bg)
        copies.append((fine, fine_maps, s1))
        est1 = estimate_cell_diameter(fine_maps, t)
        return (est1 / s1 if est1 is not None else d0 / s0), copies, bg

    def segment(self, frame_bgr: np.ndarray) -> Segmentation | None:
        """Working-scale segmentation of a frame; None when it is too small to hold a cell."""
        bgr = to_bgr_uint8(frame_bgr)
        if min(bgr.shape[:2]) < 8:
            return None
        t = self.tuning
        img, maps, scale, d = self._working_image(bgr)
        nucleus = nucleus_mask(maps, d, t)
        joined = join_lobes(nucleus, d, t)
        cells = cell_mask(maps, joined, d, t)
        cores = nucleus_cores(maps, nucleus, d, t)
        pts, radii = nucleus_peaks(cores, d, t)
        pts, radii = add_missing_peaks(pts, radii, joined, d, t)
        groups = group_peaks(pts, radii, cores, cells, d, t)
        markers = draw_markers(cores, pts, radii, groups)
        labels, boxes = split_cells(cells, markers, joined, d, t)
        return Segmentation(scale, d, img, maps, nucleus, joined, cells, labels, boxes)

    def find(self, frame_bgr: np.ndarray) -> list[Cell]:
        """Every white cell of a BGR (or gray/BGRA) frame, in frame pixels, in reading order."""
        arr = np.asarray(frame_bgr)
        if arr.size == 0:
            return []
        frame = to_bgr_uint8(arr)
        seg = self.segment(frame)
        if seg is None:
            return []
        cells = cells_from_segmentation(seg, frame.shape[:2], self.tuning)
        if self.spec is not None:
            from leukedge.runtime.preprocess import crop_cell

            for c in cells:
                c.crop = crop_cell(frame, c.box, self.spec, c.mask, c.full_diameter, c.full_centre)
        return cells


def _size_plausibility(diameter_in_d: float) -> float:
    lo, hi = 0.5, 1.7
    if lo <= diameter_in_d <= hi:
        return 1.0
    ref = lo if diameter_in_d < lo else hi
    return float(np.exp(-3.0 * abs(np.log(max(diameter_in_d, 1e-6) / ref))))


def cells_from_segmentation(seg: Segmentation, frame_hw: tuple[int, int], t: Tuning) -> list[Cell]:
    """Keep the labelled bodies that are white cells and map them to frame pixels."""
    H, W = frame_hw
    h, w = seg.labels.shape
    d, s = seg.diameter, seg.scale
    out: list[Cell] = []
    for lab, (x0, y0, x1, y1) in enumerate(seg.boxes, start=1):
        region = seg.labels[y0:y1, x0:x1] == lab
        nuc_px = region & (seg.nucleus[y0:y1, x0:x1] > 0)
        n_area = float(np.count_nonzero(nuc_px)) / (d * d)
        if n_area < t.min_nucleus_area:
            continue
        vals = seg.maps.nuclear[y0:y1, x0:x1][nuc_px]
        k95 = int(0.95 * (vals.size - 1))
        stain95 = float(np.partition(vals, k95)[k95])
        if n_area < t.small_nucleus_area and stain95 < t.small_nucleus_od:
            continue  # small and pale: a platelet clump, not a lymphocyte nucleus
        fx0, fy0 = int(np.floor(x0 / s)), int(np.floor(y0 / s))
        fx1, fy1 = min(W, int(np.ceil(x1 / s))), min(H, int(np.ceil(y1 / s)))
        sub = region.astype(np.uint8)
        if s < 1.0:
            sub = cv2.resize(sub * 255, (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_LINEAR)
            sub = (sub > 127).astype(np.uint8)
        bx, by, bw, bh = cv2.boundingRect(sub)
        if bw == 0 or bh == 0:
            continue
        mask = sub[by : by + bh, bx : bx + bw]
        m = cv2.moments(region.astype(np.uint8), binaryImage=True)
        cx = (x0 + m["m10"] / m["m00"] + 0.5) / s - 0.5
        cy = (y0 + m["m01"] / m["m00"] + 0.5) / s - 0.5
        diam = 2.0 * np.sqrt(m["m00"] / np.pi) / d
        score = 0.5 * min(1.0, stain95 / (2.0 * t.nuclear_od)) + 0.5 * _size_plausibility(diam)
        cell = Cell(
            box=(fx0 + bx, fy0 + by, fx0 + bx + bw, fy0 + by + bh),
            centroid=(float(cx), float(cy)),
            mask=mask.astype(bool),
            area=int(cv2.countNonZero(mask)),
            touches_edge=bool(x0 == 0 or y0 == 0 or x1 == w or y1 == h),
            score=float(np.clip(score, 0.0, 1.0)),
        )
        if cell.touches_edge:
            whole = whole_cell_circle(cell.mask, cell.box, (H, W), d / s)
            if whole is not None:
                cell.full_centre, cell.full_diameter = whole[:2], whole[2]
        out.append(cell)
    out.sort(key=lambda c: (c.box[1], c.box[0]))
    return out


def whole_cell_circle(
    mask: np.ndarray, box: tuple[int, int, int, int], frame_hw: tuple[int, int], d: float
) -> tuple[float, float, float] | None:
    """(x, y, diameter) of the whole of a cell cut by the frame edge, in frame pixels, or None.

    A circle is fitted (least squares, Kasa) to the cell's outline inside the
    frame, leaving out the straight cut along the frame edge. The fit is kept
    when it is plausible: not much narrower than the visible part (an uneven
    outline makes the box wider than the circle), at most 1.7 expected
    diameters ``d`` and holding the visible part's centre; else None (the
    visible box is then all there is to go by). The diameter is never less
    than the visible box's longer side. Box coordinates: pixel i spans i..i+1.
    """
    H, W = frame_hw
    x0, y0, x1, y1 = box
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    pts = max(contours, key=len).reshape(-1, 2).astype(np.float64) + (x0 + 0.5, y0 + 0.5)
    inside = (pts[:, 0] > 1.0) & (pts[:, 0] < W - 1.0) & (pts[:, 1] > 1.0) & (pts[:, 1] < H - 1.0)
    pts = pts[inside]
    if len(pts) < 8:
        return None
    a = np.column_stack([pts, np.ones(len(pts))])
    (p, q, c), *_ = np.linalg.lstsq(a, (pts**2).sum(axis=1), rcond=None)
    cx, cy = p / 2.0, q / 2.0
    r2 = c + cx * cx + cy * cy
    if not r2 > 0:
        return None
    diameter = 2.0 * float(np.sqrt(r2))
    visible = max(x1 - x0, y1 - y0)
    mid = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    holds_mid = np.hypot(mid[0] - cx, mid[1] - cy) < diameter / 2.0
    if not (0.7 * visible <= diameter <= 1.7 * d and holds_mid):
        return None
    return float(cx), float(cy), max(diameter, float(visible))
