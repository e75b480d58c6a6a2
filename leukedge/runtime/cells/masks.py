"""Masks at working scale: nuclear stain, nuclei cut along stain valleys, joined lobes
and whole cells (nucleus plus cytoplasm)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from leukedge.runtime.cells.stain import StainMaps
from leukedge.runtime.cells.types import Tuning


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill holes (background enclosed by the mask) of at most ``max_area`` pixels."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    parents = hierarchy[0][:, 3].tolist()
    holes = [
        c
        for c, parent in zip(contours, parents, strict=True)
        if parent >= 0 and cv2.contourArea(c) <= max_area
    ]
    if not holes:
        return mask
    out = mask.copy()
    cv2.drawContours(out, holes, -1, 1, -1)
    return out


@lru_cache(maxsize=64)
def _disc_kernel(r: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    kernel.flags.writeable = False
    return kernel


def _disc(radius: float) -> np.ndarray:
    return _disc_kernel(max(1, int(round(radius))))


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
    out = dxx + dyy
    diff = np.subtract(dxx, dyy, out=dxx)
    root = np.multiply(diff, diff, out=diff)
    cross = np.multiply(dxy, np.float32(4.0))
    root += np.multiply(cross, dxy, out=cross)
    out += np.sqrt(root, out=root)
    out *= np.float32(0.5)
    return out  # 0.5 * (dxx + dyy + sqrt((dxx - dyy)^2 + 4 dxy^2))


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
    # cv2's stubs type every result as integer-or-float; the opening of a uint8 mask is uint8
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disc(0.08 * d))  # type: ignore[assignment]
    m |= joined
    return fill_small_holes(m, 0.25 * d * d)
