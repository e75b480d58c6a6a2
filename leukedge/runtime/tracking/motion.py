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
moving during the exposure) lose their fine detail: the variance of the Laplacian
below ``blur_ratio`` times the run's running median marks them too blurred to
classify; the threshold is learned from the frames of the run itself, because
what counts as sharp depends on the camera, the objective and the stain.

Cost at 1080p: one linear downscale to ``work_width`` (about 0.5 ms), one forward
and one inverse DFT of that size (the previous frame's spectrum is kept).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 256  # columns of the grey copy motion and blur are measured on
MIN_RESPONSE = 0.05  # correlation peak below which two frames do not overlap: a new field
BLUR_RATIO = 0.4  # sharper than this share of the running median, or too blurred
BLUR_WINDOW = 60  # frames the running median of sharpness looks back over
BLUR_WARMUP = 5  # frames seen before blur is judged at all
MAX_SHIFT = 0.45  # a shift beyond this share of the frame side is not trusted
MIN_OVERLAP_NCC = 0.8  # two sharp views of one field correlate better than this where they overlap


@dataclass(frozen=True)
class FrameMotion:
    """Where one frame lies on the slide and whether it is sharp enough to classify.

    ``origin`` (x, y): slide coordinates of the frame's pixel (0, 0), in frame
    pixels of the first frame of its ``field``. ``shift``: how far the image content
    moved since the frame it was measured against, the last sharp frame of the
    field (None for the first frame of a field). ``response``: the correlation peak (1 = identical content).
    ``sharpness``: variance of the Laplacian of the grey copy; ``blurred``: below
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
        g -= float(g.mean())
        return cv2.dft(g * self.window, flags=cv2.DFT_COMPLEX_OUTPUT)

    def shift(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        """(dx, dy, response): content of spectrum ``b`` is that of ``a`` moved by (dx, dy)."""
        cross = np.asarray(cv2.mulSpectrums(b, a, 0, conjB=True), np.float32)
        mag = np.sqrt(cross[..., 0] ** 2 + cross[..., 1] ** 2) + 1e-9
        cross = cross / mag[..., None]
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
    pa = a[max(0, -iy) : h - max(0, iy), max(0, -ix) : w - max(0, ix)].astype(np.float32)
    pb = b[max(0, iy) : h - max(0, -iy), max(0, ix) : w - max(0, -ix)].astype(np.float32)
    pa -= float(pa.mean())
    pb -= float(pb.mean())
    den = float(np.sqrt((pa * pa).sum() * (pb * pb).sum()))
    return float((pa * pb).sum()) / den if den > 0 else 0.0


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
        self._ref: np.ndarray | None = None  # spectrum of the last frame in the chain
        self._ref_grey: np.ndarray | None = None
        self._origin = (0.0, 0.0)

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
        _, sd = cv2.meanStdDev(cv2.Laplacian(small, cv2.CV_32F))
        sharp = float(sd[0, 0]) ** 2
        limit = self.threshold()
        self.sharpness.append(sharp)
        blurred = limit is not None and sharp < limit
        self.blurred += blurred
        size = (small.shape[1], small.shape[0])
        if self._pc is None or self._pc.size != size or self._frame_size != image.shape[:2]:
            self._pc, self._ref = PhaseCorrelator(size), None
            self._frame_size = image.shape[:2]
        spec = self._pc.spectrum(small)
        shift: tuple[float, float] | None = None
        response = 0.0
        if self._ref is not None:
            dx, dy, response = self._pc.shift(self._ref, spec)
            inside = abs(dx) <= MAX_SHIFT * size[0] and abs(dy) <= MAX_SHIFT * size[1]
            if response >= self.min_response and inside:
                assert self._ref_grey is not None
                if overlap_ncc(self._ref_grey, small, dx, dy) >= MIN_OVERLAP_NCC:
                    shift = (dx / scale, dy / scale)
        if shift is not None:
            origin = (self._origin[0] - shift[0], self._origin[1] - shift[1])
            if not blurred:  # a smeared frame's shift is biased: the next is measured without it
                self._origin, self._ref, self._ref_grey = origin, spec, small
            return FrameMotion(self.field, origin, shift, response, sharp, limit, blurred, False)
        if blurred and self._ref is not None:
            # smeared beyond recognition: skip it, keep measuring against the last good frame
            return FrameMotion(self.field, self._origin, None, response, sharp, limit, True, False)
        self.field += 1
        self.new_fields += 1
        self._origin, self._ref, self._ref_grey = (0.0, 0.0), spec, small
        return FrameMotion(self.field, self._origin, None, response, sharp, limit, blurred, True)

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
