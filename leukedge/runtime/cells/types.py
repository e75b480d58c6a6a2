"""What the finder returns and how it is tuned: :class:`Cell`, :class:`ScaleEstimate`,
:class:`Tuning` and the cell sizes the scale is read from."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, cast

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


SCALE_ADVICE = "give --um-per-px or --cell-diameter-px for this microscope"


@dataclass(frozen=True)
class ScaleEstimate:
    """The expected white-cell diameter of a frame, where it came from and how far to trust it.

    ``source`` is ``"given"`` (``cell_diameter_px`` / ``um_per_px``), ``"red cells"``
    (the granulometry of the red cells: the reliable yardstick), ``"largest
    nucleus"`` (too few red cells: a rough guess) or ``"default"`` (nothing to
    measure: a quarter of the frame's shorter side). For red cells,
    ``red_cells`` is how many red cells' worth of area was measured, ``isolated``
    how many lay apart and round enough to compare, and ``cv`` the coefficient of
    variation of their diameters (None below 5). ``reason`` says why the size is
    a guess, None when it is not; ``warning`` is the sentence to show then.
    """

    cell_diameter_px: float
    source: str
    red_cells: int = 0
    isolated: int = 0
    cv: float | None = None
    red_diameter_px: float | None = None
    reason: str | None = None

    @property
    def confident(self) -> bool:
        """Whether the size was given or measured on enough, well-resolved, consistent red cells."""
        return self.reason is None

    @property
    def warning(self) -> str | None:
        """What to tell the user when the size is a guess, else None."""
        if self.reason is None:
            return None
        return f"white-cell size is a guess ({self.reason}): {SCALE_ADVICE}"

    def scaled(self, factor: float) -> ScaleEstimate:
        """The same estimate with its lengths multiplied by ``factor`` (to frame pixels)."""
        red = None if self.red_diameter_px is None else self.red_diameter_px * factor
        return replace(self, cell_diameter_px=self.cell_diameter_px * factor, red_diameter_px=red)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, lengths rounded to 0.1 px."""
        red = self.red_diameter_px
        return {
            "cell_diameter_px": round(self.cell_diameter_px, 1),
            "source": self.source,
            "confident": self.confident,
            "red_cells": self.red_cells,
            "isolated_red_cells": self.isolated,
            "red_diameter_cv": None if self.cv is None else round(self.cv, 3),
            "red_diameter_px": None if red is None else round(red, 1),
            "warning": self.warning,
        }


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
    scale_red_cells: float = 10.0  # a scale from fewer red cells than this is a guess,
    scale_red_px: float = 5.0  # ... or from red cells narrower than this (px) where measured,
    scale_cv: float = 0.3  # ... or from isolated red cells whose diameters vary more than this

    @classmethod
    def from_kwargs(cls, **kwargs: float) -> Tuning:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown tuning option(s) {unknown}; known: {sorted(known)}")
        return cls(**cast(dict[str, Any], kwargs))
