"""Scoring a cell finder against annotated frames.

Two annotation styles exist for white cells on whole microscope frames:

- **boxes** (BCCD, Pascal VOC XML): a detection matches a ground-truth box when
  their IoU is at least a threshold (0.5 by default). Matching is greedy and
  one-to-one: all (detection, truth) pairs are taken in order of decreasing IoU
  and a pair is accepted when neither side is matched yet.
- **centroids** (ALL-IDB1 ``.xyc``: one ``x y`` blast centre per line): a
  centroid can match a detection when it lies inside the detection (its mask by
  default, or its box). Matching is one-to-one: candidate pairs are taken in
  order of increasing distance between the centroid and the detection's own
  centroid, so a detection counts for one centroid at most and two touching
  cells merged into one detection lose one centroid.

Only numpy and the standard library are used, so the same functions serve the
tests, the benchmark and a device.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MatchResult:
    """Counts and pairs of one matching; sums over frames with ``+``."""

    tp: int
    fp: int
    fn: int
    pairs: tuple[tuple[int, int], ...] = ()  # (detection index, truth index)

    @property
    def precision(self) -> float:
        n = self.tp + self.fp
        return self.tp / n if n else 1.0

    @property
    def recall(self) -> float:
        n = self.tp + self.fn
        return self.tp / n if n else 1.0

    def __add__(self, other: MatchResult) -> MatchResult:
        return MatchResult(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


# --------------------------------------------------------------------------- boxes


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU of every box in ``a`` against every box in ``b`` (boxes x0, y0, x1, y1)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    A = np.asarray(a, dtype=np.float64)[:, None, :]
    B = np.asarray(b, dtype=np.float64)[None, :, :]
    iw = np.clip(np.minimum(A[..., 2], B[..., 2]) - np.maximum(A[..., 0], B[..., 0]), 0, None)
    ih = np.clip(np.minimum(A[..., 3], B[..., 3]) - np.maximum(A[..., 1], B[..., 1]), 0, None)
    inter = iw * ih
    area_a = (A[..., 2] - A[..., 0]) * (A[..., 3] - A[..., 1])
    area_b = (B[..., 2] - B[..., 0]) * (B[..., 3] - B[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_pairs(ranked: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """One-to-one pairs from (detection, truth) candidates in order of preference.

    A candidate is taken unless its detection or its truth is already paired.
    """
    used_d: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i, j in ranked:
        if i in used_d or j in used_t:
            continue
        used_d.add(i)
        used_t.add(j)
        pairs.append((i, j))
    return pairs


def match_boxes(
    pred: Sequence[Box], truth: Sequence[Box], iou_threshold: float = 0.5
) -> MatchResult:
    """Greedy one-to-one matching by decreasing IoU; pairs below the threshold never match."""
    m = iou_matrix(pred, truth)
    order = np.argsort(-m, axis=None, kind="stable")  # empty when either side is
    ranked = (divmod(int(flat), m.shape[1]) for flat in order)
    pairs = greedy_pairs(takewhile(lambda ij: m[ij] >= iou_threshold, ranked))
    tp = len(pairs)
    return MatchResult(tp=tp, fp=len(pred) - tp, fn=len(truth) - tp, pairs=tuple(pairs))


# --------------------------------------------------------------------------- centroids


def _inside(
    point: tuple[float, float],
    box: Sequence[float],
    mask: np.ndarray | None,
) -> bool:
    x, y = point
    x0, y0, x1, y1 = (int(v) for v in box)
    xi, yi = int(np.floor(x)), int(np.floor(y))
    if not (x0 <= xi < x1 and y0 <= yi < y1):
        return False
    if mask is None:
        return True
    return bool(mask[yi - y0, xi - x0])


def match_centroids(
    boxes: Sequence[Sequence[float]],
    centres: Sequence[tuple[float, float]],
    points: np.ndarray | Sequence[tuple[float, float]],
    masks: Sequence[np.ndarray | None] | None = None,
) -> MatchResult:
    """One-to-one matching of annotated points to detections that contain them.

    ``boxes`` are detection boxes (x0, y0, x1, y1, x1/y1 exclusive), ``centres``
    their centroids, ``masks`` their box-sized boolean masks (``None`` to use the
    boxes alone). Pairs are accepted by increasing point-to-centroid distance.
    ``fp`` counts detections without a point; on data where only some cells are
    annotated (ALL-IDB1 annotates blasts only) it is not a false-positive count.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cands: list[tuple[float, int, int]] = []
    for i, box in enumerate(boxes):
        mask = None if masks is None else masks[i]
        cx, cy = centres[i]
        for j, (x, y) in enumerate(pts):
            if _inside((x, y), box, mask):
                cands.append((float(np.hypot(x - cx, y - cy)), i, j))
    cands.sort()
    pairs = greedy_pairs((i, j) for _, i, j in cands)
    tp = len(pairs)
    return MatchResult(tp=tp, fp=len(boxes) - tp, fn=len(pts) - tp, pairs=tuple(pairs))


# --------------------------------------------------------------------------- loaders


def load_voc_boxes(xml_path: str | Path, names: Sequence[str] = ("WBC",)) -> list[Box]:
    """Boxes of the named classes from a Pascal VOC annotation, as (x0, y0, x1, y1).

    VOC corners are used as written (BCCD writes ``xmax`` up to the image width),
    so boxes compare directly with detection boxes whose x1/y1 are exclusive.
    """
    root = ET.parse(str(xml_path)).getroot()
    wanted = {n.lower() for n in names}
    out: list[Box] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        bb = obj.find("bndbox")
        if name not in wanted or bb is None:
            continue
        x0, y0, x1, y1 = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        if np.isfinite([x0, y0, x1, y1]).all() and x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out


def bccd_split(root: str | Path, split: str = "test") -> list[tuple[Path, list[Box]]]:
    """(image path, WBC boxes) for every frame of a BCCD split (``ImageSets/Main/<split>.txt``)."""
    root = Path(root)
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    return [
        (root / "JPEGImages" / f"{i}.jpg", load_voc_boxes(root / "Annotations" / f"{i}.xml"))
        for i in ids
    ]


def load_xyc(path: str | Path) -> np.ndarray:
    """Points of an ALL-IDB ``.xyc`` file as float (n, 2) ``x, y``; empty file -> (0, 2)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 2:
            rows.append((float(parts[0]), float(parts[1])))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def all_idb1_frames(root: str | Path) -> list[tuple[Path, np.ndarray]]:
    """(image path, blast centroids) for every ALL-IDB1 frame under ``root/im`` + ``root/xyc``."""
    root = Path(root)
    out = []
    for img in sorted((root / "im").glob("*.jpg")):
        xyc = root / "xyc" / f"{img.stem}.xyc"
        pts = load_xyc(xyc) if xyc.is_file() else np.zeros((0, 2))
        out.append((img, pts))
    return out
