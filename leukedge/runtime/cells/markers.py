"""Markers: one seed per cell, from the peaks of the nuclear bodies grouped into cells."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from leukedge.runtime.cells.distance import inside_distance
from leukedge.runtime.cells.types import Tuning


def nucleus_peaks(
    cores: np.ndarray, d: float, tuning: Tuning, dist: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) and radii of the round bodies of ``cores``: distance-transform peaks.

    A peak is a local maximum at least ``min_peak`` x D deep; of peaks closer
    than ``peak_spacing`` x D only the deepest is kept. ``dist`` is the distance
    transform of ``cores`` (L2, 3x3 mask) when already computed.
    """
    if dist is None:
        dist = inside_distance(cores)
    spacing = max(1.0, tuning.peak_spacing * d)
    half = int(round(spacing))
    deep = dist >= tuning.min_peak * d
    bx, by, bw, bh = cv2.boundingRect(deep.view(np.uint8))
    if bw == 0:
        return np.zeros((0, 2)), np.zeros(0, np.float32)
    h, w = dist.shape
    x0, y0 = max(0, bx - half), max(0, by - half)
    x1, y1 = min(w, bx + bw + half), min(h, by + bh + half)
    grown = cv2.dilate(dist[y0:y1, x0:x1], _square(2 * half + 1))
    inner = (slice(by - y0, by - y0 + bh), slice(bx - x0, bx - x0 + bw))
    box = (slice(by, by + bh), slice(bx, bx + bw))
    peaks = (dist[box] >= grown[inner]) & deep[box]
    flat = np.flatnonzero(peaks)
    if flat.size == 0:
        return np.zeros((0, 2)), np.zeros(0, np.float32)
    ys, xs = np.divmod(flat, bw)
    ys += by
    xs += bx
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
    limit = spacing * spacing
    kept: list[int] = []
    near: dict[tuple[int, int], list[tuple[int, int]]] = {}  # kept points by spacing-sized cell
    for i, x, y in zip(cand.tolist(), xs[cand].tolist(), ys[cand].tolist(), strict=True):
        gx, gy = int(x // spacing), int(y // spacing)
        if any(
            (kx - x) * (kx - x) + (ky - y) * (ky - y) < limit
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for kx, ky in near.get((gx + dx, gy + dy), ())
        ):
            continue
        kept.append(i)
        near.setdefault((gx, gy), []).append((x, y))
    pts = np.stack([xs[kept], ys[kept]], axis=1).astype(np.float64)
    return pts, vals[kept].astype(np.float32)


@lru_cache(maxsize=32)
def _square(size: int) -> np.ndarray:
    kernel = np.ones((size, size), np.uint8)
    kernel.flags.writeable = False
    return kernel


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
    for (x, y), r in zip(pts.tolist(), radii.tolist(), strict=True):
        reach = max(2.0 * tuning.peak_spacing * d, 1.3 * r)
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
            dist = inside_distance(joined)
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


def close_pairs(pts: np.ndarray, reach: float) -> np.ndarray:
    """Index pairs (i < j) of points at most ``reach`` apart, (n, 2) int, row-major order.

    All pairs at once for a few hundred points; beyond that through a grid of
    ``reach``-sized cells, so that a frame of noise with thousands of peaks
    costs time in proportion to them, not to their square.
    """
    k = len(pts)
    if k <= 256:
        gaps = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
        return np.argwhere(np.triu(gaps <= reach, 1))
    cells = np.floor(pts / max(reach, 1e-6)).astype(np.int64)
    members: dict[tuple[int, int], list[int]] = {}
    for i, (cx, cy) in enumerate(cells.tolist()):
        members.setdefault((cx, cy), []).append(i)
    out = []
    for (cx, cy), own in members.items():
        others = [
            j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in members.get((cx + dx, cy + dy), ())
        ]
        a = np.repeat(np.asarray(own), len(others))
        b = np.tile(np.asarray(others), len(own))
        keep = (a < b) & (np.hypot(*(pts[a] - pts[b]).T) <= reach)
        out.append(np.stack([a[keep], b[keep]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def group_peaks(
    pts: np.ndarray,
    radii: np.ndarray,
    cores: np.ndarray,
    cells: np.ndarray,
    d: float,
    tuning: Tuning,
    dist_cores: np.ndarray | None = None,
) -> list[int]:
    """Which nuclear bodies belong to the same cell; one group index per peak.

    Two bodies are one cell when

    - the nucleus stays thick between them (``neck_ratio`` of the thinner
      body's radius): an oval or kidney-shaped nucleus, or
    - both are lobe-sized (radius under ``lobe_radius`` x D) and the whole cell
      (nucleus + cytoplasm) stays as thick between them as at their centres
      (``cell_neck_ratio``): lobes of a granulocyte inside one round cell.

    Touching blasts have large nuclei and a thin pale line between them, so
    they stay apart. ``dist_cores`` is the distance transform of ``cores`` (L2,
    3x3 mask) when already computed.
    """
    k = len(pts)
    if k < 2:
        return [0] * k
    parent = list(range(k))
    pairs = close_pairs(pts, 1.6 * d)
    if len(pairs) == 0:
        return list(range(k))
    dist_n = inside_distance(cores) if dist_cores is None else dist_cores
    dist_c = inside_distance(cells)
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
    markers = _whole_cores(cores, np.rint(pts).astype(int).tolist(), groups)
    xy = [(int(round(x)), int(round(y))) for x, y in pts.tolist()]
    first: dict[int, int] = {}
    for i, (g, r) in enumerate(zip(groups, radii.tolist(), strict=True)):
        r = max(1, int(round(0.5 * r)))
        cv2.circle(markers, xy[i], r, g + 1, -1)
        if g in first:
            cv2.line(markers, xy[i], xy[first[g]], g + 1, r)
        else:
            first[g] = i
    return markers


def _whole_cores(cores: np.ndarray, xy: list[list[int]], groups: list[int]) -> np.ndarray:
    """int32 image: group + 1 on every 8-connected body of ``cores`` holding peaks of one group only.

    The bodies are found by flood filling from the peaks; with more bodies than
    fit in a byte, by labelling all of them.
    """
    h, w = cores.shape
    binary = (cores != 0).view(np.uint8)
    filled = np.zeros((h + 2, w + 2), np.uint8)
    owner = [0]
    mixed = [False]
    for (x, y), g in zip(xy, groups, strict=True):
        if not binary[y, x]:
            continue
        c = int(filled[y + 1, x + 1])
        if c == 0:
            c = len(owner)
            if c > 255:
                return _whole_cores_labelled(cores, xy, groups)
            flags = 8 | cv2.FLOODFILL_MASK_ONLY | (c << 8)
            cv2.floodFill(binary, filled, (x, y), 0, 0, 0, flags)
            owner.append(0)
            mixed.append(False)
        if owner[c] and owner[c] != g + 1:
            mixed[c] = True
        owner[c] = g + 1
    lut = np.zeros(256, dtype=np.int32)
    lut[: len(owner)] = [0 if m else o for o, m in zip(owner, mixed, strict=True)]
    if lut.max() <= 255:
        return cv2.LUT(filled[1:-1, 1:-1], lut.astype(np.uint8)).astype(np.int32)
    return cv2.LUT(filled[1:-1, 1:-1], lut)


def _whole_cores_labelled(cores: np.ndarray, xy: list[list[int]], groups: list[int]) -> np.ndarray:
    n, comp = cv2.connectedComponents(cores, connectivity=8)
    owner = np.zeros(n, dtype=np.int32)
    mixed = np.zeros(n, dtype=bool)
    for (x, y), g in zip(xy, groups, strict=True):
        c = comp[y, x]
        if c == 0:
            continue
        if owner[c] and owner[c] != g + 1:
            mixed[c] = True
        owner[c] = g + 1
    owner[mixed] = 0
    return np.take(owner, np.asarray(comp, dtype=np.intp))
