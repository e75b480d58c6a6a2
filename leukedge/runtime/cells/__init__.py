"""Find every white blood cell in a stained blood or marrow smear frame.

Needs only numpy and OpenCV, so it runs on the device next to the microscope.

How a frame is read (Romanowsky stains: Giemsa, Wright, May-Grünwald-Giemsa):

1. **Scale.** A white cell is about 12 µm across. Its size in pixels comes from
   ``cell_diameter_px``, else from ``um_per_px``, else from the frame itself
   (:func:`estimate_cell_diameter`): red cells, all about 7.5 µm, are the
   yardstick, and the granulometry of the red-cell mask gives their size even
   where they overlap in chains and clumps. The finder says how far to trust a
   measured size (:class:`ScaleEstimate`: how many red cells, how consistent;
   a guess asks for ``--um-per-px`` / ``--cell-diameter-px``). All work happens on a reduced
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
   The thresholds were tuned on two labs' stains. With ``stain="adaptive"`` (the
   default; ``"fixed"`` skips it) the frame's own red-cell stain
   (:func:`frame_stains`: the median OD colour of its stained pixels, most of
   them red cells) is measured first, and a frame outside the tuned range is
   rotated and scaled back into it (:meth:`FrameStains.mix`) before these two
   maps are read.
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

from leukedge.runtime.cells.distance import inside_distance
from leukedge.runtime.cells.finder import (
    CellFinder,
    Segmentation,
    cells_from_segmentation,
    whole_cell_circle,
)
from leukedge.runtime.cells.markers import (
    add_missing_peaks,
    draw_markers,
    group_peaks,
    nucleus_peaks,
)
from leukedge.runtime.cells.masks import (
    cell_mask,
    fill_small_holes,
    join_lobes,
    nucleus_cores,
    nucleus_mask,
    valley_strength,
)
from leukedge.runtime.cells.scale import (
    estimate_cell_diameter,
    fill_pale_centres,
    isolated_red_cells,
    judge_scale,
    measure_cell_diameter,
    opening_areas,
    red_cell_diameter,
    red_cell_mask,
    shrink_mask,
)
from leukedge.runtime.cells.split import merge_parts, notch_depth, split_cells
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
    WBC_DIAMETER_UM,
    Cell,
    ScaleEstimate,
    Tuning,
)

__all__ = [
    "Cell",
    "CellFinder",
    "FrameStains",
    "RBC_DIAMETER_UM",
    "ScaleEstimate",
    "Segmentation",
    "StainMaps",
    "Tuning",
    "WBC_DIAMETER_UM",
    "add_missing_peaks",
    "background_grid",
    "cell_mask",
    "cells_from_segmentation",
    "draw_markers",
    "estimate_cell_diameter",
    "fill_pale_centres",
    "frame_stains",
    "fill_small_holes",
    "group_peaks",
    "inside_distance",
    "isolated_red_cells",
    "join_lobes",
    "judge_scale",
    "measure_cell_diameter",
    "merge_parts",
    "notch_depth",
    "nucleus_cores",
    "nucleus_mask",
    "nucleus_peaks",
    "opening_areas",
    "red_cell_diameter",
    "red_cell_mask",
    "shrink",
    "shrink_mask",
    "split_cells",
    "stain_maps",
    "valley_strength",
    "whole_cell_circle",
]
