"""Markers: one seed per cell, from the peaks of the nuclear bodies grouped into cells."""

from __future__ import annotations

import cv2
import numpy as np

from leukedge.runtime.cells.types import Tuning


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
