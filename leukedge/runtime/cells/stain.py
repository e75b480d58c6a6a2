"""Light and stain: reduce a frame, fit its background, and turn it into optical-density
stain maps (nuclear stain and cell density)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_LOG1P = np.log1p(np.arange(256, dtype=np.float32)).reshape(256, 1)
_LOG_LUT = np.repeat(_LOG1P.reshape(1, 256, 1), 3, axis=2)


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
    A, basis = _quadratic_bases(ty, tx)
    keep = np.ones(len(A), dtype=bool)
    coef = np.zeros((6, 3))
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(A[keep], votes[keep], rcond=None)
        res = (votes - A @ coef).mean(axis=1)
        spread = _median(np.abs(res[keep])) + 1e-3
        new_keep = res > -2.5 * spread
        if new_keep.sum() < 6 or (new_keep == keep).all():
            break
        keep = new_keep
    return (basis @ coef).astype(np.float32)


def _median(values: np.ndarray) -> float:
    """:func:`numpy.median` of a short, non-empty 1-D float array without NaN."""
    s = np.sort(values)
    m = s.size // 2
    return float(s[m]) if s.size % 2 else float((s[m - 1] + s[m]) / 2)


@lru_cache(maxsize=16)
def _quadratic_bases(ty: int, tx: int, g: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic terms (1, x, y, x^2, xy, y^2) at tile centres and at g x g grid nodes, read-only.

    Coordinates run from -0.5 to 0.5 across the image; the first array has one
    row per tile of the ty x tx grid, the second one entry per grid node.
    """
    yy, xx = np.meshgrid(
        (np.arange(ty) + 0.5) / ty - 0.5, (np.arange(tx) + 0.5) / tx - 0.5, indexing="ij"
    )
    X, Y = xx.ravel(), yy.ravel()
    A = np.stack([np.ones_like(X), X, Y, X * X, X * Y, Y * Y], axis=1)
    gy, gx = np.meshgrid(
        (np.arange(g) + 0.5) / g - 0.5, (np.arange(g) + 0.5) / g - 0.5, indexing="ij"
    )
    basis = np.stack([np.ones_like(gx), gx, gy, gx * gx, gx * gy, gy * gy], axis=-1)
    A.flags.writeable = False
    basis.flags.writeable = False
    return A, basis


@dataclass
class StainMaps:
    """Per-pixel stain measures of a working image (float32, same size)."""

    nuclear: np.ndarray  # OD_red - OD_blue: nuclei/platelets > 0, red cells < 0
    density: np.ndarray  # mean OD: any cell material > 0


def stain_maps(
    img: np.ndarray, bg: np.ndarray | None = None, mix: np.ndarray | None = None
) -> StainMaps:
    """Optical densities relative to the background, reduced to two stain measures.

    ``bg`` is a :func:`background_grid` (of this image or of another size of the
    same frame: it covers the frame whatever its resolution); fitted here when None.
    ``mix`` (2, 3) weighs the BGR optical densities into the nuclear stain and the
    density (:meth:`FrameStains.mix`); None is ``FIXED_MIX``: OD_red - OD_blue and
    the mean OD.
    """
    h, w = img.shape[:2]
    if bg is None:
        bg = background_grid(img)
    if mix is not None:
        od = optical_densities(img, bg)
        nuc_w, dens_w = np.asarray(mix, np.float32)
        return StainMaps(
            nuclear=cv2.transform(od, nuc_w.reshape(1, 3)),
            density=cv2.transform(od, dens_w.reshape(1, 3)),
        )
    nuclear = cv2.resize(
        np.ascontiguousarray(bg[..., 2] - bg[..., 0]), (w, h), interpolation=cv2.INTER_LINEAR
    )
    density = cv2.resize(
        np.ascontiguousarray(bg.mean(axis=2)), (w, h), interpolation=cv2.INTER_LINEAR
    )
    b, g, r = (cv2.LUT(c, _LOG1P) for c in cv2.split(img))
    total = np.add(b, g, out=g)
    total += r
    total *= np.float32(1.0 / 3.0)
    np.subtract(density, total, out=density)
    np.subtract(nuclear, np.subtract(r, b, out=r), out=nuclear)
    return StainMaps(nuclear=nuclear, density=density)


# --------------------------------------------------------------------------- the frame's own stains

# The red-cell stain the finder's thresholds were tuned under (BCCD and ALL-IDB1 frames):
# the median unit OD vector (BGR) of a frame's stained pixels, most of them red cells,
# averages REFERENCE_RED (95 % of those frames within 13 degrees of it) and their median
# OD spans 0.18-0.38 (5th-95th percentile); `python benchmarks/finder_casts.py
# --fit-reference` measures them again. Frames within REFERENCE_RED_TOLERANCE are left
# alone: at 4 degrees uncast BCCD frames lost 3 points of recall; 6 kept them and held
# more casts within 2 points than 8 (benchmarks/results/finder_casts.md). Strengths
# within REFERENCE_OD are left alone too: its upper edge at 0.36 brings back more 1.7x
# dark stains than 0.38; at 0.34 uncast BCCD frames lost a cell.
REFERENCE_RED = (0.60, 0.75, 0.29)
REFERENCE_RED_TOLERANCE = np.deg2rad(6.0)
REFERENCE_OD = (0.18, 0.36)
# How far a strength below / above REFERENCE_OD is brought at most (strength_gain).
REFERENCE_OD_TARGET = (0.25, 0.32)
REFERENCE_OD_PULL = 6.0  # see strength_gain
# A frame whose red cells read further from nuclei than the reference's (their unit OD
# vector's OD_red - OD_blue at most SEPARATED_RED; the reference reads -0.31) while its
# nuclei already read strongly (99th percentile of OD_red - OD_blue over the frame at
# least SEPARATED_NUCLEI; BCCD frames 0.34-0.59, pink casts that weaken nuclei 0.25-0.38)
# needs no rotation: nothing is mistaken for what it is not. leukedge's synthetic smears
# (red cells of almost no red absorbance, leukedge.data.synth) are such frames.
SEPARATED_RED = -0.5
SEPARATED_NUCLEI = 0.45
FIXED_MIX = np.array([[-1.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3]], np.float32)  # OD_r - OD_b, mean OD
STAINED_OD = 0.06  # pixels with less OD (vector norm) than this are slide, not stain
_MIN_STAINED = 200  # fewer stained pixels: nothing to read the stain from
_MAX_SAMPLE = 3_000  # pixels (a regular grid) the stain is read from: a median needs no more


@dataclass(frozen=True)
class FrameStains:
    """A frame's red-cell stain: its direction in OD space (unit, BGR) and its strength (the
    median OD of stained pixels); :meth:`mix` turns it into the weights of :func:`stain_maps`."""

    red: np.ndarray
    red_od: float
    nuclear_p99: float = 0.0  # 99th percentile of OD_red - OD_blue over the frame

    @property
    def separated(self) -> bool:
        """Red cells read further from nuclei than the reference's and nuclei read strongly:
        the fixed nuclear stain tells them apart as it is (no rotation)."""
        return float(FIXED_MIX[0] @ self.red) <= SEPARATED_RED and (
            self.nuclear_p99 >= SEPARATED_NUCLEI
        )

    @property
    def angle(self) -> float:
        """Radians between this frame's red-cell stain and the reference's."""
        ref = np.asarray(REFERENCE_RED, np.float64)
        cos = float(self.red @ ref / np.linalg.norm(ref))
        return float(np.arccos(np.clip(cos, -1.0, 1.0)))

    def mix(self) -> np.ndarray | None:
        """(2, 3) weights: OD channels -> (nuclear stain, density) as the thresholds expect.

        The frame's OD space is rotated (about the axis normal to both) so that its
        red-cell stain comes within ``REFERENCE_RED_TOLERANCE`` of the reference,
        and scaled by :func:`strength_gain`; then read as :data:`FIXED_MIX` reads it.
        A frame already within both (the labs the finder was tuned on), or one whose
        red cells and nuclei lie apart already (:attr:`separated`), keeps the fixed
        maps exactly: None. Rotating the whole
        space moves nuclei with the red cells: a cast that turns red cells violet
        (read as nuclei by OD_red - OD_blue) turns nuclei further violet too.
        """
        ref = np.asarray(REFERENCE_RED, np.float64)
        ref /= np.linalg.norm(ref)
        if self.separated:
            return None
        theta = max(0.0, self.angle - REFERENCE_RED_TOLERANCE)
        axis = np.cross(self.red, ref)
        norm = float(np.linalg.norm(axis))
        rot = np.eye(3)
        if theta > 0 and norm > 1e-9:
            k = axis / norm
            kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
            rot = np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)
        gain = strength_gain(self.red_od)
        if theta == 0 and gain == 1.0:
            return None
        return (FIXED_MIX.astype(np.float64) @ (gain * rot)).astype(np.float32)


def strength_gain(red_od: float) -> float:
    """OD gain that brings a frame's red-cell stain strength back to where the thresholds work.

    Within ``REFERENCE_OD`` none. Outside it the frame is taken for a paler or
    darker stain (or a flatter camera) of a smear like the reference ones, the more
    surely the further out: the strength is brought back ``REFERENCE_OD_PULL``
    times its distance beyond the range (continuous at the range's edges), at most
    to ``REFERENCE_OD_TARGET`` (below, above). Clipping to the range's edges only
    left half and 1.7x stains well outside what the thresholds expect.
    """
    lo, hi = REFERENCE_OD
    od = max(red_od, 1e-6)
    if od < lo:
        return min(REFERENCE_OD_TARGET[0], lo + REFERENCE_OD_PULL * (lo - od)) / od
    if od > hi:
        return max(REFERENCE_OD_TARGET[1], hi - REFERENCE_OD_PULL * (od - hi)) / od
    return 1.0


def optical_densities(img: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-channel OD (H, W, 3) float32 of ``img`` relative to a :func:`background_grid`."""
    h, w = img.shape[:2]
    od = np.asarray(cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
    return np.subtract(od, np.asarray(cv2.LUT(img, _LOG_LUT), np.float32), out=od)


def frame_stains(img: np.ndarray, bg: np.ndarray | None = None) -> FrameStains | None:
    """The frame's red-cell stain, or None when it holds too few stained pixels.

    A smear's stained pixels are mostly red cells, so the median of their unit OD
    vectors is the red-cell stain whatever the white cells and platelets (within
    1-3 degrees of the mean over a red-cell mask on BCCD and ALL-IDB1, cast or not).
    Macenko's plane and extreme angles (:func:`leukedge.imaging.stain.stain_vectors`,
    right for a crop of one cell or tissue) wander by 20-30 degrees on whole smear
    frames under a cast: their few nuclei do not make an extreme of their own.
    """
    if bg is None:
        bg = background_grid(img)
    h, w = img.shape[:2]
    step = max(1, int(np.sqrt(h * w / _MAX_SAMPLE)))
    od = optical_densities(np.ascontiguousarray(img[::step, ::step]), bg).reshape(-1, 3)
    norm = np.sqrt(np.einsum("ij,ij->i", od, od))
    keep = norm > STAINED_OD
    if np.count_nonzero(keep) < _MIN_STAINED:
        return None
    strength = norm[keep]
    unit = np.ascontiguousarray(od[keep].T) / strength  # (3, n): channels in rows
    mid = len(strength) // 2  # medians by partition, not np.median: a third of the time
    red = np.partition(unit, mid, axis=1)[:, mid]
    red_norm = float(np.linalg.norm(red))
    if not red_norm > 0:
        return None
    nuclear = od[:, 2] - od[:, 0]
    k99 = int(0.99 * (len(nuclear) - 1))
    return FrameStains(
        red / red_norm,
        float(np.partition(strength, mid)[mid]),
        float(np.partition(nuclear, k99)[k99]),
    )
