"""What the finder returns and how it is tuned: :class:`Cell`, :class:`Tuning` and the
cell sizes the scale is read from."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

WBC_DIAMETER_UM = 12.0
RBC_DIAMETER_UM = 7.5


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
    coarse_side: float = 256  # longest side of the image the scale is measured on
    fine_rbc: float = 9.0  # red cells narrower than this (px) there: measure again, larger
    reuse_scale: float = 0.15  # a copy this close (fraction) to the working scale is reused
    scale_pixels: float = 100_000  # red cells are measured in a central window of this many pixels
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
