"""The finder: :class:`CellFinder` runs the steps on a frame and keeps the labelled bodies
that are white cells, in frame pixels. The method is described in
:mod:`leukedge.runtime.cells`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from leukedge.imaging.images import to_bgr_uint8
from leukedge.runtime.cells.distance import inside_distance
from leukedge.runtime.cells.markers import (
    add_missing_peaks,
    draw_markers,
    group_peaks,
    nucleus_peaks,
)
from leukedge.runtime.cells.masks import cell_mask, join_lobes, nucleus_cores, nucleus_mask
from leukedge.runtime.cells.scale import judge_scale, measure_cell_diameter
from leukedge.runtime.cells.split import split_cells
from leukedge.runtime.cells.stain import (
    FrameStains,
    StainMaps,
    background_grid,
    frame_stains,
    shrink,
    stain_maps,
)
from leukedge.runtime.cells.types import (
    RBC_DIAMETER_UM,
    SCALE_ADVICE,
    WBC_DIAMETER_UM,
    Cell,
    ScaleEstimate,
    Tuning,
)
from leukedge.validate import (
    FINDER_STAINS,
    MAX_CELL_DIAMETER_PX,
    MAX_CROP_SIDE,
    MAX_UM_PER_PX,
    MIN_CELL_DIAMETER_PX,
    MIN_UM_PER_PX,
    UsageError,
    choice,
    finite,
)

if TYPE_CHECKING:
    from leukedge.spec import ModelSpec

_MIN_WORKING_SIDE = 16  # pixels across the working image at least (below: no room for a cell)


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
    scale_estimate: ScaleEstimate | None = None  # the white-cell size and how far to trust it


class CellFinder:
    """Find white cells in BGR frames; see the module docstring for the method.

    ``cell_diameter_px`` (white-cell diameter in frame pixels) or ``um_per_px``
    fixes the scale; without either it is measured on every frame, and
    :attr:`last_scale` says how far to trust it (:meth:`scale_report` for the
    whole run). With a
    ``spec``, each cell gets ``crop`` from
    :func:`leukedge.imaging.preprocess.crop_cell`, ready for the classifier.
    ``stain`` is how nuclei are told from red cells: ``"adaptive"`` (the default:
    OD_red - OD_blue with thresholds tuned on BCCD and ALL-IDB1, read through the
    frame's own red-cell stain, :class:`leukedge.runtime.cells.stain.FrameStains`, so
    that smears stained or photographed unlike those are brought back to them;
    :attr:`last_stains`) or ``"fixed"`` (the same maps, every frame read as it is).
    ``tuning`` keywords override :class:`Tuning` fields.
    """

    def __init__(
        self,
        cell_diameter_px: float | None = None,
        um_per_px: float | None = None,
        spec: ModelSpec | None = None,
        stain: str = "adaptive",
        **tuning: float,
    ) -> None:
        self.stain = choice(stain, "stain", FINDER_STAINS)
        self.last_stains: FrameStains | None = None  # adaptive: the last frame's own stains
        self._mix: np.ndarray | None = None
        self._mix_ready = False
        if cell_diameter_px is not None:
            finite(cell_diameter_px, "cell_diameter_px", MIN_CELL_DIAMETER_PX, MAX_CELL_DIAMETER_PX)
        if um_per_px is not None:
            finite(um_per_px, "um_per_px", MIN_UM_PER_PX, MAX_UM_PER_PX)
        self.cell_diameter_px = cell_diameter_px
        self.um_per_px = um_per_px
        self.spec = spec
        self.tuning = Tuning.from_kwargs(**tuning)
        self.last_scale: ScaleEstimate | None = None  # of the last frame find() measured
        self._scale_frames = 0
        self._scale_guessed = 0
        self._last_guess: ScaleEstimate | None = None
        self._check_crop_side()

    def _check_crop_side(self) -> None:
        """Refuse a scale outside the finder's range, or whose crops would pass MAX_CROP_SIDE."""
        d = self.known_diameter
        if d is None:
            return
        if not MIN_CELL_DIAMETER_PX <= d <= MAX_CELL_DIAMETER_PX:
            raise UsageError(
                f"--um-per-px {self.um_per_px} means white cells of {d:.1f} px; the finder "
                f"works with {MIN_CELL_DIAMETER_PX:g}-{MAX_CELL_DIAMETER_PX:g} px cells"
            )
        if self.spec is None:
            return
        from leukedge.imaging.preprocess import crop_side_for

        side = crop_side_for(d, self.spec)
        if side > MAX_CROP_SIDE:
            raise UsageError(
                f"white cells of {d:.0f} px make {side} px crops for this model "
                f"(cell_fraction {self.spec.cell_fraction}), over the limit of {MAX_CROP_SIDE} "
                "px: check --cell-diameter-px / --um-per-px"
            )

    def scale_report(self) -> dict[str, Any]:
        """The white-cell size of this finder's frames so far, JSON-ready, for a run's summary.

        ``frames`` found cells in, of them ``guessed`` with a size that is a guess
        (:class:`ScaleEstimate`), the ``last`` frame's estimate, and a ``warning``
        asking for ``--um-per-px`` / ``--cell-diameter-px`` when any was a guess.
        """
        warning = None
        if self._last_guess is not None:
            warning = (
                f"white-cell size was a guess on {self._scale_guessed} of {self._scale_frames} "
                f"frames (last: {self._last_guess.reason}): {SCALE_ADVICE}"
            )
        return {
            "frames": self._scale_frames,
            "guessed": self._scale_guessed,
            "last": None if self.last_scale is None else self.last_scale.to_dict(),
            "warning": warning,
        }

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        cell_diameter_px: float | None = None,
        um_per_px: float | None = None,
        stain: str = "adaptive",
        **tuning: float,
    ) -> CellFinder:
        """A finder whose cells come with classifier-ready crops for ``spec``."""
        return cls(cell_diameter_px, um_per_px, spec=spec, stain=stain, **tuning)

    @property
    def known_diameter(self) -> float | None:
        """White-cell diameter in frame pixels when given, else None (measured per frame)."""
        if self.cell_diameter_px is not None:
            return float(self.cell_diameter_px)
        if self.um_per_px is not None:
            return WBC_DIAMETER_UM / float(self.um_per_px)
        return None

    def _working_image(
        self, bgr: np.ndarray
    ) -> tuple[np.ndarray, StainMaps, float, float, ScaleEstimate]:
        """(working image, its stain maps, working px per frame px, D in working px, the scale).

        Without a known diameter the scale is measured on the frame itself
        (:meth:`_measure_scale`); then the frame is reduced to the scale where
        D is ``working_diameter`` pixels, unless a copy made while measuring is
        close enough to it. A larger copy is reduced rather than the frame:
        area averaging of a whole frame costs more than the rest of the finder.
        The working image keeps at least ``_MIN_WORKING_SIDE`` pixels across
        whatever the diameter (a cell larger than the frame).
        """
        t = self.tuning
        h, w = bgr.shape[:2]
        known = self.known_diameter
        copies: list[tuple[np.ndarray, StainMaps, float]] = []
        bg = None
        if known is None:
            est, copies, bg = self._measure_scale(bgr)
        else:
            est = ScaleEstimate(known, "given")
        diameter = est.cell_diameter_px
        scale = min(1.0, max(t.working_diameter / diameter, _MIN_WORKING_SIDE / min(h, w)))
        near = [c for c in copies if abs(scale - c[2]) <= t.reuse_scale * c[2]]
        larger = [c for c in copies if c[2] > scale]
        if near:
            img, maps, _ = near[-1]
        else:
            src, src_scale = (larger[0][0], larger[0][2]) if larger else (bgr, 1.0)
            img = shrink(src, scale / src_scale)
            maps = self._stain_maps(img, bg)
        scale = img.shape[1] / w  # the exact ratio after rounding the size
        return img, maps, scale, diameter * scale, est

    def _measure_scale(
        self, bgr: np.ndarray
    ) -> tuple[ScaleEstimate, list[tuple[np.ndarray, StainMaps, float]], np.ndarray]:
        """(the scale in frame pixels, the reduced copies it was measured on, their background
        grid).

        First on a small coarse copy (``coarse_side``). Where red cells are
        narrower than ``fine_rbc`` pixels there, their outlines and pale
        centres are blurred away, so it is measured again on a larger copy: at
        the working scale the first estimate implies, kept within 1.3-2.5x the
        coarse scale. That copy usually becomes the working image. With nothing
        to measure, D is a quarter of the frame's shorter side, flagged a guess.
        """
        t = self.tuning
        h, w = bgr.shape[:2]
        s0 = min(1.0, t.coarse_side / max(h, w))
        small = shrink(bgr, s0)
        bg = background_grid(small)
        small_maps = self._stain_maps(small, bg)
        copies = [(small, small_maps, s0)]
        side = min(small.shape[:2])
        est = measure_cell_diameter(small_maps, t) or judge_scale(
            ScaleEstimate(side / 4.0, "default"), t
        )
        d0 = float(np.clip(est.cell_diameter_px, 6.0, max(6.0, 1.5 * side)))
        est = replace(est, cell_diameter_px=d0)
        rbc0 = d0 * RBC_DIAMETER_UM / WBC_DIAMETER_UM
        if est.source == "default" or rbc0 >= t.fine_rbc or s0 >= 1.0:
            return est.scaled(1.0 / s0), copies, bg
        s_work = t.working_diameter / d0 * s0
        s1 = min(1.0, float(np.clip(s_work, 1.3 * s0, 2.5 * s0)))
        fine = shrink(bgr, s1)
        s1 = fine.shape[1] / w
        fine_maps = self._stain_maps(fine, bg)
        copies.append((fine, fine_maps, s1))
        est1 = measure_cell_diameter(fine_maps, t)
        est = est1.scaled(1.0 / s1) if est1 is not None else est.scaled(1.0 / s0)
        return est, copies, bg

    def _stain_maps(self, img: np.ndarray, bg: np.ndarray | None) -> StainMaps:
        """:func:`stain_maps` of one copy of the frame; ``adaptive`` reads them through the
        frame's own red-cell stain (:func:`frame_stains`), estimated on the first copy (the
        smallest) and kept for the others; fixed maps when it cannot be estimated or lies
        within the range the finder was tuned on."""
        if self.stain == "fixed":
            return stain_maps(img, bg)
        if bg is None:
            bg = background_grid(img)
        if not self._mix_ready:
            self.last_stains = frame_stains(img, bg)
            self._mix = None if self.last_stains is None else self.last_stains.mix()
            self._mix_ready = True
        return stain_maps(img, bg, self._mix)

    def segment(self, frame_bgr: np.ndarray) -> Segmentation | None:
        """Working-scale segmentation of a frame; None when it is too small to hold a cell or
        its white cells are given as narrower than ``MIN_CELL_DIAMETER_PX`` (nothing to see)."""
        bgr = to_bgr_uint8(frame_bgr)
        if min(bgr.shape[:2]) < 8:
            return None
        known = self.known_diameter
        if known is not None and known < MIN_CELL_DIAMETER_PX:
            return None
        t = self.tuning
        self._mix_ready, self.last_stains = False, None
        img, maps, scale, d, est = self._working_image(bgr)
        nucleus = nucleus_mask(maps, d, t)
        joined = join_lobes(nucleus, d, t)
        cells = cell_mask(maps, joined, d, t)
        cores = nucleus_cores(maps, nucleus, d, t)
        dist = inside_distance(cores)
        pts, radii = nucleus_peaks(cores, d, t, dist)
        pts, radii = add_missing_peaks(pts, radii, joined, d, t)
        groups = group_peaks(pts, radii, cores, cells, d, t, dist)
        markers = draw_markers(cores, pts, radii, groups)
        labels, boxes = split_cells(cells, markers, joined, d, t)
        return Segmentation(scale, d, img, maps, nucleus, joined, cells, labels, boxes, est)

    def _note_scale(self, est: ScaleEstimate | None) -> None:
        self.last_scale = est
        if est is None:
            return
        self._scale_frames += 1
        if not est.confident:
            self._scale_guessed += 1
            self._last_guess = est

    def find(self, frame_bgr: np.ndarray) -> list[Cell]:
        """Every white cell of a BGR (or gray/BGRA) frame, in frame pixels, in reading order."""
        arr = np.asarray(frame_bgr)
        self.last_scale = None
        if arr.size == 0:
            return []
        frame = to_bgr_uint8(arr)
        seg = self.segment(frame)
        if seg is None:
            return []
        self._note_scale(seg.scale_estimate)
        cells = cells_from_segmentation(seg, frame.shape[:2], self.tuning)
        if self.spec is not None:
            from leukedge.imaging.preprocess import crop_cell

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
        fx0, fy0 = math.floor(x0 / s), math.floor(y0 / s)
        fx1, fy1 = min(W, math.ceil(x1 / s)), min(H, math.ceil(y1 / s))
        region8 = region.view(np.uint8)
        sub = region8
        if s < 1.0:
            sub = cv2.resize(region8 * 255, (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_LINEAR)
            sub = (sub > 127).view(np.uint8)
        bx, by, bw, bh = cv2.boundingRect(sub)
        if bw == 0 or bh == 0:
            continue
        mask = sub[by : by + bh, bx : bx + bw]
        m = cv2.moments(region8, binaryImage=True)
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
            score=float(min(max(score, 0.0), 1.0)),
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
