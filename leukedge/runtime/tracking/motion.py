"""Where the stage is: frame-to-frame motion by phase correlation, and blur.

A differential count moves the slide field by field. To count each cell once, every
detection is placed in slide coordinates: ``slide = pixel + origin``, where
``origin`` is where the frame's top-left pixel lies on the slide. The origin of a
frame follows from the previous one by the shift of the image content between them,
measured by phase correlation on a small grey copy of the frame (the cross-power
spectrum's peak; sub-pixel by the centroid around it). Phase correlation sees a
global translation, which is what a stage moving under a fixed camera produces.

Two frames that do not overlap (two unrelated still images, a jump of the stage)
give a flat correlation: a peak below ``min_response`` starts a new field, whose
cells are never matched with another field's. Frames smeared by motion (the stage
moving during the exposure) lose their fine detail: a :func:`sharpness` below
``blur_ratio`` times the run's running median marks them too blurred to classify; the threshold is learned from the frames of the run itself, because
what counts as sharp depends on the camera, the objective and the stain.

Cost at 1080p (about 1.3 ms of one core, see benchmarks/results/panning.md): one linear
downscale to ``work_width``, one forward
and one inverse DFT of that size (the previous frame's spectrum is kept).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 192  # columns of the grey copy motion and blur are measured on
MIN_RESPONSE = 0.05  # correlation peak below which two frames do not overlap: a new field
BLUR_RATIO = 0.7  # sharper than this share of the running median, or too blurred
BLUR_WINDOW = 60  # frames the running median of sharpness looks back over
BLUR_WARMUP = 5  # frames seen before blur is judged at all
MIN_OVERLAP = 0.12  # two frames overlapping on less than this share of their area: no match
MIN_OVERLAP_NCC = 0.8  # two sharp views of one field correlate better than this where they overlap
MIN_OVERLAP_NCC_BLURRED = 0.6  # ... a sharp and a smeared one (consecutive frames of a video)


@dataclass(frozen=True)
class FrameMotion:
    """Where one frame lies on the slide and whether it is sharp enough to classify.

    ``origin`` (x, y): slide coordinates of the frame's pixel (0, 0), in frame
    pixels of the first frame of its ``field``. ``shift``: how far the image content
    moved since the frame it was measured against, the last sharp frame of the
    field (None for the first frame of a field). ``response``: the correlation peak (1 = identical content).
    ``sharpness``: :func:`sharpness` of the grey copy; ``blurred``: below
    the run's threshold (``threshold``, None while it is still being learned).
    """

    field: int
    origin: tuple[float, float]
    shift: tuple[float, float] | None
    response: float
    sharpness: float
    threshold: float | None
    blurred: bool
    new_field: bool


class PhaseCorrelator:
    """Translation between consecutive small grey frames, reusing the last spectrum."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size  # (width, height)
        self.window = cv2.createHanningWindow(size, cv2.CV_32F)
        self._last: np.ndarray | None = None

    def spectrum(self, grey: np.ndarray) -> np.ndarray:
        g = grey.astype(np.float32)
        g -= float(cv2.mean(grey)[0])
        return cv2.dft(cv2.multiply(g, self.window), flags=cv2.DFT_COMPLEX_OUTPUT)

    def shift(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        """(dx, dy, response): content of spectrum ``b`` is that of ``a`` moved by (dx, dy)."""
        re, im = cv2.split(cv2.mulSpectrums(b, a, 0, conjB=True))
        mag = np.asarray(cv2.magnitude(re, im)) + np.float32(1e-9)
        cross = cv2.merge([cv2.divide(re, mag), cv2.divide(im, mag)])
        corr = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
        h, w = corr.shape
        _, peak, _, (px, py) = cv2.minMaxLoc(corr)
        # sub-pixel: weighted centroid of the 3x3 around the peak (wrapping around)
        ys = (np.arange(py - 1, py + 2) % h)[:, None]
        xs = (np.arange(px - 1, px + 2) % w)[None, :]
        patch = np.maximum(corr[ys, xs], 0.0)
        total = float(patch.sum()) or 1.0
        off = np.array([-1.0, 0.0, 1.0])
        fx = px + float((patch.sum(axis=0) * off).sum()) / total
        fy = py + float((patch.sum(axis=1) * off).sum()) / total
        dx = fx - w if fx > w / 2 else fx
        dy = fy - h if fy > h / 2 else fy
        return dx, dy, float(peak)


def overlap_ncc(a: np.ndarray, b: np.ndarray, dx: float, dy: float) -> float:
    """Normalised correlation of ``a`` and ``b`` where they overlap, ``b`` being ``a`` moved.

    The check that a correlation peak is a real overlap: a camera's fixed pattern
    (JPEG blocks, dust, vignetting) peaks at no shift between unrelated frames too,
    but their pixels do not correlate.
    """
    h, w = a.shape
    ix, iy = round(dx), round(dy)
    if abs(ix) >= w - 4 or abs(iy) >= h - 4:
        return 0.0
    # every other pixel: as telling, a quarter of the work
    pa = a[max(0, -iy) : h - max(0, iy) : 2, max(0, -ix) : w - max(0, ix) : 2].astype(np.float32)
    pb = b[max(0, iy) : h - max(0, -iy) : 2, max(0, ix) : w - max(0, -ix) : 2].astype(np.float32)
    pa -= float(pa.mean())
    pb -= float(pb.mean())
    den = float(np.sqrt((pa * pa).sum() * (pb * pb).sum()))
    return float((pa * pb).sum()) / den if den > 0 else 0.0


def best_overlap(
    a: np.ndarray, b: np.ndarray, dx: float, dy: float, min_ncc: float = MIN_OVERLAP_NCC
) -> tuple[float, float] | None:
    """The shift, among the correlation peak's wrap-arounds, whose overlap correlates best.

    Phase correlation is periodic: a peak at ``dx`` also means ``dx - width`` (a stage
    that moved more than half a frame while frames were too blurred to use). Each
    candidate leaving at least ``MIN_OVERLAP`` of the frame is checked by
    :func:`overlap_ncc`; None when none reaches ``min_ncc``.
    """
    h, w = a.shape
    xs = [dx, dx - w if dx > 0 else dx + w]
    ys = [dy, dy - h if dy > 0 else dy + h]
    best: tuple[float, float] | None = None
    best_ncc = min_ncc
    for cx in xs:
        for cy in ys:
            if (w - abs(cx)) * (h - abs(cy)) < MIN_OVERLAP * w * h or abs(cx) >= w or abs(cy) >= h:
                continue
            ncc = overlap_ncc(a, b, cx, cy)
            if ncc >= best_ncc:
                best, best_ncc = (cx, cy), ncc
    return best


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian over the mean squared gradient: how fine the edges are.

    Both grow with the number and contrast of the edges in view (more cells, darker
    stain); their ratio does not, while motion blur lowers the second derivative much
    more than the first. On ALL-IDB1 windows it varies less than 3-fold between sharp
    fields, where the variance of the Laplacian alone varies 6-fold.
    """
    g = grey.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
    _, sd = cv2.meanStdDev(lap)
    grad = float(cv2.mean(cv2.magnitude(gx, gy) ** 2)[0])
    return float(sd[0, 0]) ** 2 / max(grad, 1e-6)


@dataclass
class _View:
    """A frame as motion is measured on it: spectrum, grey copy, place on the slide."""

    spectrum: np.ndarray
    grey: np.ndarray
    origin: tuple[float, float]
    blurred: bool = False


class MotionTracker:
    """Frame by frame: the frame's origin on the slide, its field, and whether it is blurred.

    ``judge_blur`` False (still images) never marks a frame blurred: unrelated
    still images differ in content, not in focus, and each was taken deliberately.
    """

    def __init__(
        self,
        work_width: int = WORK_WIDTH,
        min_response: float = MIN_RESPONSE,
        blur_ratio: float = BLUR_RATIO,
        blur_window: int = BLUR_WINDOW,
        judge_blur: bool = True,
    ) -> None:
        self.work_width = work_width
        self.min_response = min_response
        self.blur_ratio = blur_ratio
        self.judge_blur = judge_blur
        self.sharpness: deque[float] = deque(maxlen=max(1, blur_window))
        self.field = -1
        self.frames = 0
        self.blurred = 0
        self.new_fields = 0
        self._pc: PhaseCorrelator | None = None
        self._frame_size: tuple[int, int] | None = None
        self._sharp: _View | None = None  # the last sharp frame placed on the slide
        self._chain: _View | None = None  # the last frame placed, sharp or not

    def small_grey(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The grey copy (``work_width`` wide) and its scale (small px per frame px)."""
        h, w = image.shape[:2]
        scale = min(1.0, self.work_width / w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return small, scale

    def threshold(self) -> float | None:
        """The sharpness below which a frame is blurred (None while learning)."""
        if not self.judge_blur or len(self.sharpness) < BLUR_WARMUP:
            return None
        return self.blur_ratio * float(np.median(np.asarray(self.sharpness)))

    def step(self, image: np.ndarray) -> FrameMotion:
        """Measure one frame (frames must come in source order)."""
        self.frames += 1
        small, scale = self.small_grey(image)
        sharp = sharpness(small)
        limit = self.threshold()
        self.sharpness.append(sharp)
        blurred = limit is not None and sharp < limit
        self.blurred += blurred
        size = (small.shape[1], small.shape[0])
        if self._pc is None or self._pc.size != size or self._frame_size != image.shape[:2]:
            self._pc, self._sharp, self._chain = PhaseCorrelator(size), None, None
            self._frame_size = image.shape[:2]
        view = _View(self._pc.spectrum(small), small, (0.0, 0.0), blurred)
        # against the last sharp frame (a blurred frame's shift is biased), else through the
        # blurred frames since (a fast stretch that left the last sharp frame behind)
        response, origin = 0.0, None
        refs = [self._sharp] + ([self._chain] if self._chain is not self._sharp else [])
        for ref in refs:
            if ref is None:
                continue
            found, r = self._match(ref, view, scale)
            response = max(response, r)
            if found is not None:
                origin = (ref.origin[0] - found[0], ref.origin[1] - found[1])
                shift = found
                break
        if origin is not None:
            view.origin = origin
            self._chain = view
            if not blurred:
                self._sharp = view
            return FrameMotion(self.field, origin, shift, response, sharp, limit, blurred, False)
        if blurred and self._sharp is not None:  # smeared beyond recognition: skip it
            where = self._chain.origin if self._chain is not None else self._sharp.origin
            return FrameMotion(self.field, where, None, response, sharp, limit, True, False)
        self.field += 1
        self.new_fields += 1
        self._sharp = self._chain = view
        return FrameMotion(self.field, view.origin, None, response, sharp, limit, blurred, True)

    def _match(
        self, ref: _View, view: _View, scale: float
    ) -> tuple[tuple[float, float] | None, float]:
        """(shift in frame pixels or None, correlation peak) of ``view`` against ``ref``."""
        assert self._pc is not None
        dx, dy, response = self._pc.shift(ref.spectrum, view.spectrum)
        if response < self.min_response:
            return None, response
        # a smeared frame correlates less with a sharp one: a lower bar, for the frames of
        # one pass of the stage (blur is only judged in videos, never between still images)
        bar = MIN_OVERLAP_NCC_BLURRED if ref.blurred or view.blurred else MIN_OVERLAP_NCC
        found = best_overlap(ref.grey, view.grey, dx, dy, bar)
        if found is None:
            return None, response
        return (found[0] / scale, found[1] / scale), response

    def describe(self) -> dict[str, object]:
        """summary.json's account of the motion: fields, blurred frames, the threshold."""
        limit = self.threshold()
        return {
            "frames": self.frames,
            "fields": self.new_fields,
            "blurred_frames": self.blurred,
            "blur_threshold": None if limit is None else round(limit, 3),
            "judge_blur": self.judge_blur,
            "min_response": self.min_response,
        }
