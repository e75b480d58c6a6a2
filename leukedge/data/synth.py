"""Seeded procedural microscopy: white-cell crops and smear frames for demos and tests.

Everything is drawn as stain densities (nuclear haematoxylin/azure, basophilic
cytoplasm, eosin) and turned into light with Beer-Lambert absorption, so one
renderer gives crops and frames at the same relative scale with per-subject stain
and illumination.  Morphology follows one latent "blast score" per cell; the class
sets its mean and the two class distributions overlap, so the task is learnable
but not trivially separable.  Synthetic accuracy is never a claim about real data.

Determinism: every subject, crop and frame draws from its own
``numpy.random.default_rng([seed, stream, index])``, so the same seed gives
byte-identical PNGs regardless of order or of how many items are made.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leukedge.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from leukedge.validate import UsageError

GENERATOR = "leukedge.synth"
VERSION = 1
CLASSES = ("hem", "all")

_STREAM_SUBJECTS = 0
_STREAM_CELLS = 1
_STREAM_FRAMES = 2

# Blast score per cell: class means and spread. The overlap of these two normals
# bounds the accuracy any classifier can reach (about 95% for these values).
_BLAST_MEAN = {"hem": 0.30, "all": 0.70}
_BLAST_SD = 0.11


# --------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class SubjectStyle:
    """Stain and illumination of one synthetic subject (one slide, one microscope).

    Optical densities are BGR absorbances per unit stain; ``illumination`` is the
    BGR white level; ``blur`` is a Gaussian sigma at a 64 px white cell; ``noise`` is
    the sensor noise in 8-bit levels.  Different subjects differ the way different
    labs and staining runs do, which makes subject-level splits meaningful.
    """

    hema_od: tuple[float, float, float] = (0.35, 1.75, 0.85)
    baso_od: tuple[float, float, float] = (0.08, 0.33, 0.36)
    eosin_od: tuple[float, float, float] = (0.28, 0.30, 0.12)
    hema_strength: float = 1.0
    eosin_strength: float = 1.0
    plasma: float = 0.05
    illumination: tuple[float, float, float] = (225.0, 225.0, 222.0)
    vignette: float = 0.15
    blur: float = 0.7
    noise: float = 2.0


def _mix(a: tuple[float, ...], b: tuple[float, ...], t: float) -> np.ndarray:
    return (1.0 - t) * np.asarray(a) + t * np.asarray(b)


def _random_style(rng: np.random.Generator) -> SubjectStyle:
    """Draw a stain/illumination profile between bluer and redder Romanowsky stains."""
    hue = float(rng.uniform(0.0, 1.0))
    hema = _mix((0.28, 1.60, 0.98), (0.42, 1.82, 0.70), hue) * rng.uniform(0.95, 1.05, 3)
    baso = _mix((0.05, 0.30, 0.42), (0.10, 0.36, 0.30), hue) * rng.uniform(0.9, 1.1, 3)
    eosin = _mix((0.30, 0.29, 0.13), (0.26, 0.32, 0.10), float(rng.uniform())) * rng.uniform(
        0.92, 1.08, 3
    )
    brightness = float(rng.uniform(195.0, 242.0))
    cast = np.array([1.0, 1.0, 1.0]) + rng.normal(0.0, 0.025, 3)
    illum = np.clip(brightness * cast / cast.max(), 120.0, 250.0)
    return SubjectStyle(
        hema_od=_tuple3(hema),
        baso_od=_tuple3(baso),
        eosin_od=_tuple3(eosin),
        hema_strength=float(rng.uniform(0.85, 1.15)),
        eosin_strength=float(rng.uniform(0.8, 1.2)),
        plasma=float(rng.uniform(0.02, 0.10)),
        illumination=_tuple3(illum),
        vignette=float(rng.uniform(0.05, 0.3)),
        blur=float(rng.uniform(0.4, 1.1)),
        noise=float(rng.uniform(1.0, 3.0)),
    )


def _tuple3(v: np.ndarray) -> tuple[float, float, float]:
    return (round(float(v[0]), 4), round(float(v[1]), 4), round(float(v[2]), 4))


def make_subjects(rng: np.random.Generator, n_subjects: int) -> list[tuple[str, str, SubjectStyle]]:
    """``n_subjects`` subjects ``S00, S01, ...``, alternating ALL patient / healthy.

    Each subject has one class (as in C-NMC) and its own style; alternating keeps
    both classes present in any prefix of the list.
    """
    if n_subjects < 2:
        raise ValueError("need at least 2 subjects (one per class)")
    width = max(2, len(str(n_subjects - 1)))
    return [
        (f"S{i:0{width}d}", "all" if i % 2 == 0 else "hem", _random_style(rng))
        for i in range(n_subjects)
    ]


# --------------------------------------------------------------------------- morphology


@dataclass
class _Wbc:
    """One white cell in scene pixels; morphology derives from ``blast``."""

    cx: float
    cy: float
    radius: float
    label: str
    blast: float
    morph: dict[str, Any] = field(default_factory=dict)


def _draw_blast_score(rng: np.random.Generator, label: str) -> float:
    return float(np.clip(rng.normal(_BLAST_MEAN[label], _BLAST_SD), 0.0, 1.0))


def _rbc_ratio(rng: np.random.Generator, blast: float) -> float:
    """Red-cell diameter relative to the white cell: blasts are larger, so RBCs look smaller."""
    return float(np.clip(0.76 - 0.16 * blast + rng.normal(0.0, 0.025), 0.58, 0.78))


def _harmonics(rng: np.random.Generator, amp: float, orders: int = 4) -> np.ndarray:
    """Random low-order Fourier terms (k, amplitude, phase) for a wobbly outline."""
    ks = np.arange(2, 2 + orders, dtype=np.float32)
    amps = (amp * rng.uniform(0.3, 1.0, orders) / ks).astype(np.float32)
    phases = rng.uniform(0.0, 2 * np.pi, orders).astype(np.float32)
    return np.stack([ks, amps, phases])


def _outline(theta: np.ndarray, harm: np.ndarray) -> np.ndarray:
    out = np.ones_like(theta)
    for k, a, p in harm.T:
        out += a * np.cos(k * theta + p)
    return out


def _soft_inside(
    radius_map: np.ndarray | np.floating[Any], dist: np.ndarray, edge: float
) -> np.ndarray:
    """Anti-aliased inside-mask: 1 well inside, 0 outside, linear over ``edge`` px."""
    return np.clip((radius_map - dist) / edge + 0.5, 0.0, 1.0)


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth unit-variance noise with features about ``cell_px`` pixels across."""
    h, w = shape
    gh = max(2, int(math.ceil(h / max(cell_px, 1.0))) + 1)
    gw = max(2, int(math.ceil(w / max(cell_px, 1.0))) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    field_ = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return field_ / max(float(field_.std()), 1e-3)


def _wbc_morphology(rng: np.random.Generator, cell: _Wbc) -> dict[str, Any]:
    """Draw nucleus size/shape, chromatin, nucleoli and cytoplasm from the blast score."""
    b = cell.blast
    nc = float(np.clip(0.74 + 0.20 * b + rng.normal(0.0, 0.03), 0.6, 0.95))
    ang = rng.uniform(0.0, 2 * np.pi)
    off = (1.0 - nc) * rng.uniform(0.2, 0.9)
    n_nucleoli = 0
    if rng.random() < np.clip((b - 0.3) * 2.5, 0.0, 0.97):
        n_nucleoli = int(rng.integers(1, 4))
    nucleoli = []
    for _ in range(n_nucleoli):
        rr = 0.55 * math.sqrt(rng.random())
        aa = rng.uniform(0.0, 2 * np.pi)
        nucleoli.append(
            (rr * math.cos(aa), rr * math.sin(aa), rng.uniform(0.09, 0.15), rng.uniform(0.35, 0.6))
        )
    return {
        "cell_harm": _harmonics(rng, 0.05 + 0.05 * rng.random()),
        "nuc_harm": _harmonics(rng, 0.04 + 0.10 * b * rng.random()),
        "nc": nc,
        "nuc_off": (off * math.cos(ang), off * math.sin(ang)),
        "cleft": (rng.uniform(0.0, 2 * np.pi), rng.uniform(0.12, 0.3))
        if rng.random() < 0.35 * b
        else None,
        "nuc_density": float(np.clip(1.15 - 0.25 * b + rng.normal(0.0, 0.05), 0.7, 1.3)),
        "clump": float(np.clip(1.1 - 1.2 * b + rng.normal(0.0, 0.12), 0.0, 1.0)),
        "nucleoli": nucleoli,
        "cyto_density": float(np.clip(0.45 + 0.5 * b + rng.normal(0.0, 0.08), 0.2, 0.95)),
    }


# --------------------------------------------------------------------------- drawing


@dataclass
class _Scene:
    """Stain density maps of one field of view (float32, H x W)."""

    hema: np.ndarray
    baso: np.ndarray
    eosin: np.ndarray

    @classmethod
    def empty(cls, h: int, w: int) -> _Scene:
        z = np.zeros((h, w), np.float32)
        return cls(z, z.copy(), z.copy())


def _patch(cx: float, cy: float, half: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    x0, y0 = max(0, int(math.floor(cx - half))), max(0, int(math.floor(cy - half)))
    x1, y1 = min(w, int(math.ceil(cx + half)) + 1), min(h, int(math.ceil(cy + half)) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _coords(box: tuple[int, int, int, int], cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
    ys = np.arange(y0, y1, dtype=np.float32) - np.float32(cy)
    return xs[None, :], ys[:, None]


def _draw_rbc(rng: np.random.Generator, scene: _Scene, cx: float, cy: float, r: float) -> None:
    """A biconcave red cell: eosin disc, pale centre, slightly denser rim, a little oval."""
    h, w = scene.eosin.shape
    box = _patch(cx, cy, r * 1.15 + 2, w, h)
    if box is None:
        return
    x, y = _coords(box, cx, cy)
    phi = rng.uniform(0.0, np.pi)
    c, s = math.cos(phi), math.sin(phi)
    a = r * rng.uniform(1.0, 1.1)
    bb = r * rng.uniform(0.88, 1.0)
    u = (x * c + y * s) / a
    v = (-x * s + y * c) / bb
    d = np.sqrt(u * u + v * v)
    inside = _soft_inside(np.float32(1.0), d, 1.2 / r)
    pale = rng.uniform(0.35, 0.75) * np.exp(-((d / rng.uniform(0.35, 0.5)) ** 2))
    rim = 0.35 * np.exp(-(((d - 0.9) / 0.09) ** 2))
    dens = rng.uniform(0.45, 0.6) * inside * (1.0 - pale + rim)
    x0, y0, x1, y1 = box
    scene.eosin[y0:y1, x0:x1] += dens.astype(np.float32)


def _draw_platelet(rng: np.random.Generator, scene: _Scene, cx: float, cy: float, r: float) -> None:
    """A small granular purple dot."""
    h, w = scene.hema.shape
    box = _patch(cx, cy, r * 1.6 + 2, w, h)
    if box is None:
        return
    x, y = _coords(box, cx, cy)
    d = np.sqrt(x * x + y * y) / r
    gran = 1.0 + 0.4 * _noise_field(rng, d.shape, max(1.5, r / 2))
    dens = rng.uniform(0.35, 0.7) * np.exp(-(d**4)) * np.clip(gran, 0.2, None)
    x0, y0, x1, y1 = box
    scene.hema[y0:y1, x0:x1] += dens.astype(np.float32)


def _wbc_alpha(cell: _Wbc, box: tuple[int, int, int, int]) -> np.ndarray:
    """Coverage of the white cell (nucleus + cytoplasm) over ``box``."""
    x, y = _coords(box, cell.cx, cell.cy)
    dist = np.sqrt(x * x + y * y)
    theta = np.arctan2(y, x)
    return _soft_inside(cell.radius * _outline(theta, cell.morph["cell_harm"]), dist, 1.3)


def _wbc_box(cell: _Wbc, w: int, h: int) -> tuple[int, int, int, int] | None:
    return _patch(cell.cx, cell.cy, cell.radius * 1.25 + 2, w, h)


def _draw_wbc(rng: np.random.Generator, scene: _Scene, cell: _Wbc) -> None:
    """Composite one white cell over whatever is below it (it covers the red cells)."""
    h, w = scene.hema.shape
    box = _wbc_box(cell, w, h)
    if box is None:
        return
    m = cell.morph
    x, y = _coords(box, cell.cx, cell.cy)
    dist = np.sqrt(x * x + y * y)
    cell_r = cell.radius * _outline(np.arctan2(y, x), m["cell_harm"])
    alpha = _soft_inside(cell_r, dist, 1.3)

    rn = cell.radius * m["nc"]
    nx, ny = x - m["nuc_off"][0] * cell.radius, y - m["nuc_off"][1] * cell.radius
    nd = np.sqrt(nx * nx + ny * ny)
    nth = np.arctan2(ny, nx)
    nuc_r = rn * _outline(nth, m["nuc_harm"])
    if m["cleft"] is not None:
        c_ang, depth = m["cleft"]
        da = np.angle(np.exp(1j * (nth - c_ang))).astype(np.float32)
        nuc_r = nuc_r * (1.0 - depth * np.exp(-((da / 0.28) ** 2)))
    nuc = np.minimum(_soft_inside(nuc_r, nd, 1.2), alpha)

    shape = dist.shape
    clump = m["clump"]
    coarse = _noise_field(rng, shape, max(2.0, rn * 0.22))
    clumps = 1.0 / (1.0 + np.exp(-2.5 * coarse))  # dark clumps, pale parachromatin
    fine = _noise_field(rng, shape, max(1.2, rn * 0.06))
    chrom = 1.0 + clump * 0.9 * (clumps - 0.5) + 0.07 * fine
    for ox, oy, sz, depth in m["nucleoli"]:
        ddx, ddy = nx - ox * rn, ny - oy * rn
        chrom = chrom * (1.0 - depth * np.exp(-(ddx * ddx + ddy * ddy) / (2 * (sz * rn) ** 2)))
    hema = m["nuc_density"] * chrom * nuc

    rim = np.clip(dist / np.maximum(cell_r, 1.0), 0.0, 1.0)
    cyto_amt = np.clip(alpha - nuc, 0.0, 1.0)
    baso = m["cyto_density"] * (0.75 + 0.5 * rim**4) * cyto_amt + 0.15 * nuc
    eos = 0.06 * cyto_amt

    x0, y0, x1, y1 = box
    keep = 1.0 - alpha
    for target, new in ((scene.hema, hema), (scene.baso, baso), (scene.eosin, eos)):
        region = target[y0:y1, x0:x1]
        region *= keep
        region += new.astype(np.float32)


# --------------------------------------------------------------------------- placement


def _far_enough(cx: float, cy: float, r: float, placed: np.ndarray, factor: float) -> bool:
    if placed.size == 0:
        return True
    d = np.hypot(placed[:, 0] - cx, placed[:, 1] - cy)
    return bool(np.all(d > factor * (placed[:, 2] + r)))


def _place_rbcs(
    rng: np.random.Generator,
    w: int,
    h: int,
    r_mean: float,
    wbcs: list[_Wbc],
    coverage: float,
) -> list[tuple[float, float, float]]:
    """Scatter red cells to about ``coverage`` of the field; some overlap, none deep under a WBC."""
    target = int(coverage * w * h / (math.pi * r_mean * r_mean))
    n_try = max(6 * target, 1)
    r = r_mean * rng.uniform(0.9, 1.1, n_try)
    cx = -0.6 * r + rng.uniform(0.0, 1.0, n_try) * (w + 1.2 * r)
    cy = -0.6 * r + rng.uniform(0.0, 1.0, n_try) * (h + 1.2 * r)
    may_overlap = rng.random(n_try) < 0.12
    free = np.ones(n_try, bool)
    for c in wbcs:
        free &= np.hypot(cx - c.cx, cy - c.cy) >= c.radius + 0.35 * r
    placed = np.zeros((target, 3))
    count = 0
    for i in np.flatnonzero(free):
        if count == target:
            break
        if may_overlap[i] or _far_enough(cx[i], cy[i], r[i], placed[:count], 0.92):
            placed[count] = (cx[i], cy[i], r[i])
            count += 1
    return [(float(x), float(y), float(rr)) for x, y, rr in placed[:count]]


# --------------------------------------------------------------------------- optics


def _illumination(
    rng: np.random.Generator, style: SubjectStyle, w: int, h: int, field_px: float
) -> np.ndarray:
    """Light reaching the camera: white level x vignetting x slow unevenness (H x W x 3)."""
    cx = w / 2 + rng.normal(0.0, 0.1) * w
    cy = h / 2 + rng.normal(0.0, 0.1) * h
    xs = (np.arange(w, dtype=np.float32) - np.float32(cx)) / np.float32(field_px)
    ys = (np.arange(h, dtype=np.float32) - np.float32(cy)) / np.float32(field_px)
    r2 = xs[None, :] ** 2 + ys[:, None] ** 2
    light = 1.0 - style.vignette * r2
    light *= 1.0 + 0.025 * _noise_field(rng, (h, w), max(w, h) / 2.5)
    light = np.clip(light, 0.4, 1.1)
    return light[:, :, None] * np.asarray(style.illumination, np.float32)[None, None, :]


def _develop(
    rng: np.random.Generator,
    scene: _Scene,
    style: SubjectStyle,
    light: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Beer-Lambert absorption of the stain maps, optics blur, sensor noise -> BGR uint8."""
    hema = scene.hema * np.float32(style.hema_strength)
    eos = (scene.eosin + np.float32(style.plasma)) * np.float32(style.eosin_strength)
    stains = np.array([style.hema_od, style.baso_od, style.eosin_od], np.float32).T
    od = cv2.transform(cv2.merge([hema, scene.baso, eos]), stains)
    img: np.ndarray = cv2.exp(-od)
    img *= light
    sigma = style.blur * scale
    if sigma > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(style.noise)
    img += np.float32(0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


# --------------------------------------------------------------------------- public renderers


def _make_wbc(rng: np.random.Generator, label: str, cx: float, cy: float, diameter: float) -> _Wbc:
    cell = _Wbc(cx, cy, diameter / 2.0, label, _draw_blast_score(rng, label))
    cell.morph = _wbc_morphology(rng, cell)
    return cell


def render_cell(
    rng: np.random.Generator,
    label: str,
    style: SubjectStyle,
    size: int = 128,
    cell_fraction: float = 0.6,
) -> np.ndarray:
    """One white cell centred in a square context crop like ALL-IDB2, BGR uint8.

    The whole cell spans ``cell_fraction`` (+-10%) of the side, the same relative
    scale at which the runtime crops cells out of frames.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    diameter = cell_fraction * size * rng.uniform(0.9, 1.1)
    c = size / 2.0 + rng.normal(0.0, 0.02 * size, 2)
    cell = _make_wbc(rng, label, float(c[0]), float(c[1]), diameter)
    cells = [cell]
    if rng.random() < 0.08:
        ang = rng.uniform(0.0, 2 * np.pi)
        d2 = diameter * rng.uniform(0.85, 1.1)
        dist = (diameter + d2) / 2 * rng.uniform(1.0, 1.15)
        cells.append(
            _make_wbc(
                rng, label, cell.cx + dist * math.cos(ang), cell.cy + dist * math.sin(ang), d2
            )
        )
    scene = _Scene.empty(size, size)
    _populate(rng, scene, cells, _rbc_ratio(rng, cell.blast) * diameter / 2, platelets=0.3)
    scale = diameter / 64.0
    light = _illumination(rng, style, size, size, field_px=size * rng.uniform(3.0, 5.0))
    return _develop(rng, scene, style, light, scale)


def _populate(
    rng: np.random.Generator,
    scene: _Scene,
    wbcs: list[_Wbc],
    rbc_radius: float,
    platelets: float,
) -> None:
    """Red cells, then a Poisson number (mean ``platelets``) of platelets, then white cells."""
    h, w = scene.hema.shape
    coverage = rng.uniform(0.45, 0.7)
    for cx, cy, r in _place_rbcs(rng, w, h, rbc_radius, wbcs, coverage):
        _draw_rbc(rng, scene, cx, cy, r)
    for _ in range(int(rng.poisson(platelets))):
        _draw_platelet(
            rng, scene, rng.uniform(0, w), rng.uniform(0, h), rbc_radius * rng.uniform(0.12, 0.22)
        )
    for cell in wbcs:
        _draw_wbc(rng, scene, cell)


def _frame_wbcs(
    rng: np.random.Generator, label: str, width: int, height: int, n_cells: int, diameter: float
) -> list[_Wbc]:
    """Place white cells: apart from each other, except touching pairs and edge-cut cells."""
    cells: list[_Wbc] = []
    placed = np.zeros((0, 3), np.float32)
    tries = 0
    while len(cells) < n_cells and tries < 400:
        tries += 1
        b = _draw_blast_score(rng, label)
        d = diameter * (0.88 + 0.24 * b) * rng.uniform(0.92, 1.08)
        r = d / 2
        mode = rng.random()
        if mode < 0.25 and cells:  # touching a previous cell
            host = cells[int(rng.integers(len(cells)))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = (host.radius + r) * rng.uniform(0.93, 1.0)
            cx, cy = host.cx + dist * math.cos(ang), host.cy + dist * math.sin(ang)
            others = placed[[i for i, c in enumerate(cells) if c is not host]]
            ok = _far_enough(cx, cy, r, others, 1.1) and -0.3 * r < cx < width + 0.3 * r
            ok = ok and -0.3 * r < cy < height + 0.3 * r
        elif mode < 0.4:  # cut by the frame edge
            side = int(rng.integers(4))
            t = rng.uniform(0.0, 0.55) * r
            if side < 2:
                cx = t if side == 0 else width - t
                cy = rng.uniform(r, height - r)
            else:
                cy = t if side == 2 else height - t
                cx = rng.uniform(r, width - r)
            ok = _far_enough(cx, cy, r, placed, 1.15)
        else:
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            ok = _far_enough(cx, cy, r, placed, 1.15)
        if not ok:
            continue
        cell = _Wbc(float(cx), float(cy), r, label, b)
        cell.morph = _wbc_morphology(rng, cell)
        cells.append(cell)
        placed = np.vstack([placed, np.array([[cx, cy, r]], np.float32)])
    return cells


def _annotation(cell: _Wbc, w: int, h: int) -> dict[str, Any] | None:
    """Box of the cell's visible coverage (x1/y1 exclusive), centroid of the visible part."""
    box = _wbc_box(cell, w, h)
    if box is None:
        return None
    alpha = _wbc_alpha(cell, box)
    ys, xs = np.nonzero(alpha >= 0.5)
    if xs.size == 0:
        return None
    x0, y0 = box[0], box[1]
    return {
        "box": [
            int(x0 + xs.min()),
            int(y0 + ys.min()),
            int(x0 + xs.max() + 1),
            int(y0 + ys.max() + 1),
        ],
        "centroid": [round(float(x0 + xs.mean()), 1), round(float(y0 + ys.mean()), 1)],
        "class": cell.label,
        "diameter": round(2.0 * cell.radius, 1),
    }


def render_frame(
    rng: np.random.Generator,
    label: str,
    style: SubjectStyle,
    width: int = 640,
    height: int = 480,
    n_cells: int | None = None,
    cell_diameter: float = 60.0,
) -> tuple[np.ndarray, list[dict]]:
    """A smear field of one subject: red cells, platelets, 2-6 white cells of ``label``.

    Returns the BGR image and one annotation per visible white cell (box, centroid,
    class, diameter) in the ``annotations.json`` format.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    if n_cells is None:
        n_cells = int(rng.integers(2, 7))
    cells = _frame_wbcs(rng, label, width, height, n_cells, cell_diameter)
    rbc_r = cell_diameter / 2 * rng.uniform(0.62, 0.72)
    scene = _Scene.empty(height, width)
    crops_per_frame = width * height / (cell_diameter / 0.6) ** 2
    _populate(rng, scene, cells, rbc_r, platelets=0.3 * crops_per_frame)
    light = _illumination(rng, style, width, height, field_px=max(width, height) * 0.75)
    img = _develop(rng, scene, style, light, cell_diameter / 64.0)
    anns = [a for a in (_annotation(c, width, height) for c in cells) if a is not None]
    return img, anns


# --------------------------------------------------------------------------- writing


def _encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_png(path: Path, img: np.ndarray) -> None:
    """Temp file + rename without fsync: no half-written PNG under its final name, and cheap."""
    atomic_write_bytes(path, _encode_png(img), fsync=False)


def _is_previous_output(out: Path) -> bool:
    marker = out / "synth.json"
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return json.loads(marker.read_text()).get("generator") == GENERATOR
        return False
    # An interrupted run leaves only our own folders behind (synth.json is written last).
    names = {p.name for p in out.iterdir() if not _is_temp(p)}
    return names <= {"cells", "frames"}


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _prepare_out(out: Path) -> None:
    """Accept a new/empty folder or a previous synth output (whose files are removed)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not _is_previous_output(out):
            raise UsageError(
                f"{out} is not empty and is not a leukedge synth output; "
                "choose a new or empty folder (or delete this one first)"
            )
        _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)


def _clear_previous(out: Path) -> None:
    """Remove only files this generator writes, so nothing else in the folder is lost."""
    with contextlib.suppress(FileNotFoundError):
        (out / "synth.json").unlink()
    patterns = [*(f"cells/{c}/*.png" for c in CLASSES), "cells/subjects.csv"]
    patterns += ["frames/frame_*.png", "frames/annotations.json"]
    patterns += [".*.tmp", "cells/.*.tmp", "cells/*/.*.tmp", "frames/.*.tmp"]
    for pattern in patterns:
        for p in out.glob(pattern):
            p.unlink()
    for d in [*(out / "cells" / c for c in CLASSES), out / "cells", out / "frames"]:
        with contextlib.suppress(OSError):
            d.rmdir()


def _cell_plan(
    n: int, subjects: list[tuple[str, str, SubjectStyle]]
) -> list[tuple[int, str, str, SubjectStyle]]:
    """Balanced classes, each class's cells dealt round-robin over its subjects.

    Returns (per-subject index, subject id, class, style) for cell 0..n-1.
    """
    by_class = {c: [s for s in subjects if s[1] == c] for c in CLASSES}
    n_all = (n + 1) // 2
    wanted = {"all": n_all, "hem": n - n_all}
    plan: list[tuple[int, str, str, SubjectStyle]] = []
    counters: dict[str, int] = {}
    for k in range(max(wanted.values())):
        for c in ("all", "hem"):
            if k >= wanted[c]:
                continue
            sid, _, style = by_class[c][k % len(by_class[c])]
            plan.append((counters.get(sid, 0), sid, c, style))
            counters[sid] = counters.get(sid, 0) + 1
    return plan


def synthesize(
    out: str | Path,
    n: int = 2000,
    frames: int = 20,
    seed: int = 0,
    cell_size: int = 128,
    cell_fraction: float = 0.6,
    frame_size: tuple[int, int] = (640, 480),
    progress: Callable[[int, int], None] | None = None,
    n_subjects: int | None = None,
) -> dict:
    """Write ``n`` cell crops and ``frames`` smear frames under ``out``; return synth.json.

    Layout: ``cells/{hem,all}/<subject>_<0000>.png`` + ``cells/subjects.csv``,
    ``frames/frame_<0000>.png`` + ``frames/annotations.json``, ``synth.json`` last.
    """
    if n < 2:
        raise UsageError("n must be at least 2 (one cell per class)")
    if seed < 0:
        raise UsageError("seed must be >= 0")
    if frames < 0 or cell_size < 16 or not 0.2 <= cell_fraction <= 0.9:
        raise UsageError("need frames >= 0, cell_size >= 16 and 0.2 <= cell_fraction <= 0.9")
    out = Path(out)
    _prepare_out(out)
    width, height = int(frame_size[0]), int(frame_size[1])
    n_subjects = n_subjects or max(6, n // 50)
    if n_subjects < 2:
        raise UsageError("n_subjects must be at least 2 (one per class)")
    subjects = make_subjects(np.random.default_rng([seed, _STREAM_SUBJECTS]), n_subjects)
    total = n + frames
    diameter = round(60.0 * width / 640.0, 1)
    for c in CLASSES:
        (out / "cells" / c).mkdir(parents=True, exist_ok=True)

    rows: list[tuple[str, str]] = []
    counts = {c: 0 for c in CLASSES}
    for i, (k, sid, label, style) in enumerate(_cell_plan(n, subjects)):
        rng = np.random.default_rng([seed, _STREAM_CELLS, i])
        img = render_cell(rng, label, style, cell_size, cell_fraction)
        rel = f"{label}/{sid}_{k:04d}.png"
        _write_png(out / "cells" / rel, img)
        rows.append((rel, sid))
        counts[label] += 1
        if progress:
            progress(i + 1, total)
    _write_subjects_csv(out / "cells" / "subjects.csv", rows)

    (out / "frames").mkdir(parents=True, exist_ok=True)
    frame_recs = []
    for j in range(frames):
        sid, label, style = subjects[j % n_subjects]
        rng = np.random.default_rng([seed, _STREAM_FRAMES, j])
        img, anns = render_frame(rng, label, style, width, height, cell_diameter=diameter)
        name = f"frame_{j:04d}.png"
        _write_png(out / "frames" / name, img)
        frame_recs.append(
            {"file": name, "width": width, "height": height, "subject": sid, "cells": anns}
        )
        if progress:
            progress(n + j + 1, total)
    atomic_write_json(
        out / "frames" / "annotations.json", {"classes": list(CLASSES), "frames": frame_recs}
    )

    meta = {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "n": n,
        "n_subjects": n_subjects,
        "frames": frames,
        "cell_size": cell_size,
        "cell_fraction": cell_fraction,
        "frame_size": [width, height],
        "cell_diameter": diameter,
        "classes": list(CLASSES),
        "counts": counts,
        "subjects": [{"id": sid, "class": c, "style": asdict(st)} for sid, c, st in subjects],
    }
    atomic_write_json(out / "synth.json", meta)
    return meta


def _write_subjects_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "subject"])
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
