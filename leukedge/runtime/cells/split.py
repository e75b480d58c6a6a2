"""Splitting and merging: touching cells divided between their seeded nuclei, then parts
of one cell (granulocyte lobes, pieces cut by the frame edge) joined again."""

from __future__ import annotations

import cv2
import numpy as np

from leukedge.runtime.cells.distance import inside_distance
from leukedge.runtime.cells.markers import _root
from leukedge.runtime.cells.types import Tuning


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
    h, w = lab.shape
    padded = np.empty((h + 2, w + 2), dtype=np.int32)  # 0 = unknown, 1 = outside, 2.. = parts
    np.add(lab, 1, out=padded[1:-1, 1:-1])
    left, top, right, bottom = frame_sides
    padded[:, 0] = 0 if left else 1
    padded[0, :] = 0 if top else 1
    padded[:, -1] = 0 if right else 1
    padded[-1, :] = 0 if bottom else 1
    n1 = int(padded.max())  # labels of lab are 0..n1 - 1
    for a, b in ((padded[:, :-1], padded[:, 1:]), (padded[:-1, :], padded[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        if not m.any():
            continue
        av, bv = a[m], b[m]
        lo, hi = np.minimum(av, bv) - 1, np.maximum(av, bv) - 1
        codes = lo.astype(np.int64) * n1 + hi
        if n1 <= 1024:
            counts = np.bincount(codes, minlength=n1 * n1)
            keys = np.flatnonzero(counts)
            counts = counts[keys]
        else:
            keys, counts = np.unique(codes, return_counts=True)
        for key, c in zip(keys.tolist(), counts.tolist(), strict=True):
            pair = (key // n1, key % n1)
            pairs[pair] = pairs.get(pair, 0) + c
    return pairs


def _nucleus_gap(lab: np.ndarray, joined: np.ndarray, a: int, b: int) -> float:
    """Shortest distance between the nucleus pixels of parts ``a`` and ``b`` (inf if one has none)."""
    nuc_a = (lab == a) & (joined > 0)
    nuc_b = (lab == b) & (joined > 0)
    if not nuc_a.any() or not nuc_b.any():
        return float("inf")
    dist = inside_distance(~nuc_a)
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
    nuc_b = nuc_p > 0
    nuc = np.empty(nuc_b.shape, dtype=bool)
    for i in range(1, n + 1):
        np.equal(lab_p, i, out=nuc)
        nuc &= nuc_b
        out[i] = float(inside_distance(nuc.view(np.uint8)).max())
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
    neighbours: dict[int, list[tuple[int, int]]] = {}  # part -> (shared border, neighbour)
    for (a, b), c in inner.items():
        neighbours.setdefault(a, []).append((c, b))
        neighbours.setdefault(b, []).append((c, a))
    parent = list(range(n + 1))
    for i in range(1, n + 1):
        shared = neighbours.get(i, [])
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
    labels: np.ndarray = np.zeros((h, w), dtype=np.int32)
    boxes: list[tuple[int, int, int, int]] = []
    contours, _ = cv2.findContours(cells, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return labels, boxes
    few = len(contours) < 255
    body_id = np.zeros((h, w), dtype=np.uint8 if few else np.int32)  # k + 1 on filled outline k
    for k in range(len(contours)):
        cv2.drawContours(body_id, contours, k, k + 1, -1)
    body_id[cells == 0] = 0
    flat_body, flat_marker = body_id.ravel(), markers.ravel()
    seeded = np.flatnonzero((flat_body > 0) & (flat_marker > 0))
    top = int(flat_marker[seeded].max()) + 1 if seeded.size else 1
    pairs = np.unique(flat_body[seeded].astype(np.int64) * top + flat_marker[seeded])
    first_body, first_count = np.unique(pairs // top, return_counts=True)
    seeds_of = dict(zip(first_body.tolist(), first_count.tolist(), strict=True))
    single = np.zeros(len(contours) + 1, dtype=np.int32)
    split_parts: list[tuple[int, int, np.ndarray, list[int], int]] = []
    for k, contour in enumerate(contours):
        count = seeds_of.get(k + 1, 0)
        if count == 0:
            continue
        x, y, bw, bh = cv2.boundingRect(contour)
        if count == 1:
            single[k + 1] = len(boxes) + 1
            boxes.append((x, y, x + bw, y + bh))
            continue
        body = body_id[y : y + bh, x : x + bw] == k + 1
        mk = np.where(body, markers[y : y + bh, x : x + bw], 0)
        ids = np.unique(mk[mk > 0])
        seeds = np.searchsorted(ids, mk).astype(np.int32) + 1
        seeds[mk == 0] = 0
        local = _nearest_seed(body, seeds)
        sides = (x == 0, y == 0, x + bw == w, y + bh == h)
        local = merge_parts(local, joined[y : y + bh, x : x + bw], ids.size, d, tuning, sides)
        values = np.unique(local[local > 0]).tolist()
        split_parts.append((x, y, local, values, len(boxes) + 1))
        for v in values:
            px, py, pw, ph = cv2.boundingRect((local == v).view(np.uint8))
            boxes.append((x + px, y + py, x + px + pw, y + py + ph))
    if few:
        lut = np.zeros(256, dtype=np.int32)
        lut[: single.size] = single
        if len(boxes) <= 255:
            labels = np.asarray(cv2.LUT(body_id, lut.astype(np.uint8)), dtype=np.int32)
        else:
            labels = np.asarray(cv2.LUT(body_id, lut), dtype=np.int32)
    else:
        np.take(single, body_id, out=labels)
    for x, y, local, values, number in split_parts:
        out = labels[y : y + local.shape[0], x : x + local.shape[1]]
        for i, v in enumerate(values):
            out[local == v] = number + i
    return labels, boxes
