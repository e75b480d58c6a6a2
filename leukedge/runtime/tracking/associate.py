"""The same cell seen in several frames is one cell: detections matched on the slide.

Each detection, placed on the slide (:mod:`.motion`), is matched to the nearest
known cell of its field within ``radius`` times its diameter (``edge_radius`` for a
cell cut by the frame edge, whose whole-cell centre is an estimate), greedily, closest
pairs first, one detection per cell and frame. Greedy nearest matching rather than
the Hungarian method: white cells lie more than a diameter apart, so within half a
diameter there is almost never more than one candidate and both give the same
pairs, and the runtime keeps to numpy and OpenCV (SciPy is not on every Jetson
image). A detection that matches nothing is a new cell. Cells are kept for the whole
run, so a field the stage comes back to adds no cells.

A cell's class is the mean of its class probabilities over its sightings, over
the sightings where it lay whole in the frame when there are any (a cell cut by
the frame edge is classified from part of it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

RADIUS = 0.5  # match within this many cell diameters
EDGE_RADIUS = 0.9  # ... for a cell cut by the frame edge, whose centre is only estimated


@dataclass
class Detection:
    """One detection of a frame, as the tracker needs it (frame pixels)."""

    centre: tuple[float, float]
    diameter: float
    touches_edge: bool
    probs: np.ndarray
    score: float = 1.0


@dataclass
class Track:
    """One cell on the slide and what its sightings say about it."""

    id: int
    field: int
    position: tuple[float, float]  # slide coordinates of its field
    diameter: float
    first_frame: int
    last_frame: int
    slot: int = 0  # its row in the field's position array
    sightings: int = 0
    whole_sightings: int = 0
    prob_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    edge_prob_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    best: tuple[int, float] = (-1, -1.0)  # (rank, score) of the sighting kept as its picture

    @property
    def edge_only(self) -> bool:
        """Never seen whole: always cut by the frame edge."""
        return self.whole_sightings == 0

    @property
    def probs(self) -> np.ndarray:
        """Mean class probabilities over its whole sightings (over all where it has none)."""
        if self.whole_sightings:
            return self.prob_sum / self.whole_sightings
        return self.edge_prob_sum / max(1, self.sightings)


@dataclass(frozen=True)
class Sighting:
    """What the tracker made of one detection."""

    track: Track
    new: bool
    best: bool  # this sighting is now the track's best view (its picture should be kept)
    position: tuple[float, float]


class CellTracks:
    """Every cell of the run, per field, matched by position."""

    def __init__(self, radius: float = RADIUS, edge_radius: float = EDGE_RADIUS) -> None:
        self.radius = radius
        self.edge_radius = edge_radius
        self.tracks: list[Track] = []
        self._pos: dict[int, np.ndarray] = {}  # field -> (n, 2) positions (grown by doubling)
        self._ids: dict[int, list[int]] = {}
        self._n: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.tracks)

    def observe(
        self, field_id: int, origin: tuple[float, float], frame: int, detections: list[Detection]
    ) -> list[Sighting]:
        """Match one frame's detections (``origin``: the frame's place on the slide)."""
        if not detections:
            return []
        ox, oy = origin
        pts = np.array([(d.centre[0] + ox, d.centre[1] + oy) for d in detections], np.float64)
        reach = np.array(
            [
                d.diameter * (self.edge_radius if d.touches_edge else self.radius)
                for d in detections
            ],
            np.float64,
        )
        match = self._match(field_id, pts, reach)
        out = []
        for i, d in enumerate(detections):
            pos = (float(pts[i, 0]), float(pts[i, 1]))
            k = match[i]
            new = k < 0
            track = self._new(field_id, pos, d, frame) if new else self.tracks[k]
            out.append(Sighting(track, new, self._update(track, d, pos, frame), pos))
        return out

    def _match(self, field_id: int, pts: np.ndarray, radii: np.ndarray) -> list[int]:
        """Track index per detection (-1: none) within its radius, closest pairs first."""
        n = self._n.get(field_id, 0)
        match = [-1] * len(pts)
        if n == 0:
            return match
        pos = self._pos[field_id][:n]
        reach = float(radii.max())
        lo, hi = pts.min(axis=0) - reach, pts.max(axis=0) + reach
        near = np.flatnonzero(((pos >= lo) & (pos <= hi)).all(axis=1))
        if near.size == 0:
            return match
        d = np.linalg.norm(pts[:, None, :] - pos[near][None, :, :], axis=2)
        ok = d <= radii[:, None]
        cand = np.argwhere(ok)
        if cand.size == 0:
            return match
        order = np.argsort(d[ok], kind="stable")
        used: set[int] = set()
        ids = self._ids[field_id]
        for i, j in cand[order]:
            if match[i] < 0 and j not in used:
                match[i] = ids[near[j]]
                used.add(int(j))
        return match

    def _new(self, field_id: int, pos: tuple[float, float], d: Detection, frame: int) -> Track:
        n = self._n.get(field_id, 0)
        track = Track(len(self.tracks), field_id, pos, d.diameter, frame, frame, slot=n)
        track.prob_sum = np.zeros(len(d.probs))
        track.edge_prob_sum = np.zeros(len(d.probs))
        self.tracks.append(track)
        arr = self._pos.get(field_id)
        if arr is None or n == len(arr):
            grown = np.empty((max(16, 2 * n), 2), np.float64)
            if arr is not None:
                grown[:n] = arr[:n]
            self._pos[field_id] = arr = grown
        arr[n] = pos
        self._ids.setdefault(field_id, []).append(track.id)
        self._n[field_id] = n + 1
        return track

    def _update(self, track: Track, d: Detection, pos: tuple[float, float], frame: int) -> bool:
        """Add a sighting; True when it is the best view of the cell so far."""
        track.sightings += 1
        track.last_frame = frame
        whole = not d.touches_edge
        if whole:
            track.whole_sightings += 1
            track.prob_sum += d.probs
        else:
            track.edge_prob_sum += d.probs
        if whole or track.edge_only:  # a whole view places the cell better than a cut one
            track.position = pos
            track.diameter = d.diameter
            self._pos[track.field][track.slot] = pos
        rank = (int(whole), d.score)
        if rank > track.best:
            track.best = rank
            return True
        return False
