"""Image -> input tensor, exactly as the model was trained.

This module is the single preprocessing path for evaluation during training,
for ONNX/TensorRT parity checks and for the microscope runtime, so the three
cannot drift. It needs only numpy and OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from leukedge.imaging.images import to_bgr_uint8
from leukedge.imaging.stain import normalise_stain, stain_stats
from leukedge.spec import ModelSpec
from leukedge.validate import MAX_CROP_SIDE

_CV2_FILTERS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def _interpolation(spec: ModelSpec, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """The OpenCV filter for ``spec.interpolation``.

    Shrinking always averages (``INTER_AREA``): timm's pretrained transforms resize with
    PIL, whose bilinear/bicubic filters widen with the scale and so antialias, while
    OpenCV's sample at the source scale and alias (a 450 px C-NMC cell to 224 px).
    Enlarging uses the named filter (``area``: bilinear).
    """
    shrinking = dst_hw[0] * dst_hw[1] < src_hw[0] * src_hw[1]
    if shrinking:
        return cv2.INTER_AREA
    return _CV2_FILTERS.get(spec.interpolation, cv2.INTER_LINEAR)


def resize_to_input(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Resize an 8-bit BGR image to ``spec.input_size`` square by ``spec.resize``.

    The filter is ``spec.interpolation``.

    - ``stretch``: scale each axis to the input size (aspect ratio not kept);
    - ``letterbox``: keep aspect ratio, pad with black (the masked-cell background);
    - ``center_crop``: keep aspect ratio, scale the short side, crop the centre.
    """
    s = spec.input_size
    h, w = image.shape[:2]
    if spec.resize == "stretch":
        return cv2.resize(image, (s, s), interpolation=_interpolation(spec, (h, w), (s, s)))
    if spec.resize == "letterbox":
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = cv2.resize(image, (nw, nh), interpolation=_interpolation(spec, (h, w), (nh, nw)))
        out = np.zeros((s, s, 3), dtype=np.uint8)
        y0, x0 = (s - nh) // 2, (s - nw) // 2
        out[y0 : y0 + nh, x0 : x0 + nw] = small
        return out
    # center_crop
    scale = s / min(h, w)
    nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
    big = cv2.resize(image, (nw, nh), interpolation=_interpolation(spec, (h, w), (nh, nw)))
    y0, x0 = (nh - s) // 2, (nw - s) // 2
    return np.ascontiguousarray(big[y0 : y0 + s, x0 : x0 + s])


def normalize(image_bgr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """8-bit BGR (H, W, 3) at input size -> float32 (3, H, W) in the spec's order and scale."""
    img = image_bgr[:, :, ::-1] if spec.channel_order == "RGB" else image_bgr
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(spec.std, dtype=np.float32)
    x = (x - mean) * inv_std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def model_pixels(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Any decoded image -> 8-bit BGR at input size in the spec's stain stains.

    What the model sees before scaling: training augments these pixels, evaluation and
    the runtime normalise them as they are. Stain normalisation runs after the resize,
    on the few thousand pixels the model sees, so the runtime pays little for it.
    """
    small = resize_to_input(to_bgr_uint8(image), spec)
    return normalise_stain(small, spec.stain_norm, spec.stain_reference)


def preprocess(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Any decoded image -> float32 (3, S, S) tensor for the model described by ``spec``."""
    return normalize(model_pixels(image, spec), spec)


def preprocess_batch(images: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """A list of images -> float32 (N, 3, S, S), contiguous, ready for any backend."""
    out = np.empty((len(images), *spec.input_shape), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess(image, spec)
    return out


def prepare(image: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess` plus the crop's stain statistics before stain normalisation.

    The statistics (:func:`~leukedge.imaging.stain.stain_stats`) are what the
    domain-shift score compares with the training crops; they share the resize.
    """
    small = resize_to_input(to_bgr_uint8(image), spec)
    x = normalize(normalise_stain(small, spec.stain_norm, spec.stain_reference), spec)
    return x, stain_stats(small)


def prepare_batch(images: Sequence[np.ndarray], spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images -> float32 (N, 3, S, S) and their stain statistics (N, 6)."""
    x = np.empty((len(images), *spec.input_shape), dtype=np.float32)
    stains = np.empty((len(images), 6), dtype=np.float64)
    for i, image in enumerate(images):
        x[i], stains[i] = prepare(image, spec)
    return x, stains


def crop_side_for(diameter_px: float, spec: ModelSpec) -> int:
    """Side of the square crop that shows a cell of ``diameter_px`` at the training scale."""
    side = float(diameter_px) / spec.cell_fraction
    if not math.isfinite(side):
        raise ValueError(f"cell diameter {diameter_px!r} px is not a finite number")
    return max(8, int(round(side)))


def crop_cell(
    frame_bgr: np.ndarray,
    box: tuple[int, int, int, int],
    spec: ModelSpec,
    mask: np.ndarray | None = None,
    diameter_px: float | None = None,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """Cut one cell out of a camera frame the way the model's training images showed cells.

    ``box`` is (x0, y0, x1, y1) in frame pixels (x1, y1 exclusive); ``mask`` is the
    cell's boolean mask over that box. The crop is a square centred on the box whose
    side is the cell diameter divided by ``spec.cell_fraction``; parts outside the
    frame are black. For ``masked`` specs every pixel outside the cell mask is black
    too, like C-NMC's segmented cells.

    The diameter is the box's longer side unless ``diameter_px`` is given, and the
    centre is the box's unless ``centre`` (x, y) is given, in the box's coordinates
    (pixel i spans i..i+1). A cell cut by the frame edge shows only part of itself:
    its whole diameter and centre keep it at the training scale and in the middle.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    side = crop_side_for(max(bw, bh) if diameter_px is None else float(diameter_px), spec)
    if side > MAX_CROP_SIDE:  # bounds the memory one cell can take, whatever its scale
        raise ValueError(
            f"a {side} px crop is over the limit of {MAX_CROP_SIDE} px (cell of "
            f"{side * spec.cell_fraction:.0f} px): the cell scale is implausible"
        )
    cx, cy = (x0 + bw / 2.0, y0 + bh / 2.0) if centre is None else (float(c) for c in centre)
    sx0, sy0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    out = np.zeros((side, side, 3), dtype=np.uint8)
    fh, fw = frame_bgr.shape[:2]
    fx0, fy0 = max(0, sx0), max(0, sy0)
    fx1, fy1 = min(fw, sx0 + side), min(fh, sy0 + side)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - sy0 : fy1 - sy0, fx0 - sx0 : fx1 - sx0] = frame_bgr[fy0:fy1, fx0:fx1]
    if spec.crop_style == "masked":
        keep = np.zeros((side, side), dtype=bool)
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            # Place the box mask into crop coordinates, clipped to the crop.
            my0, mx0 = y0 - sy0, x0 - sx0
            ys0, xs0 = max(0, my0), max(0, mx0)
            ys1, xs1 = min(side, my0 + m.shape[0]), min(side, mx0 + m.shape[1])
            if ys1 > ys0 and xs1 > xs0:
                keep[ys0:ys1, xs0:xs1] = m[ys0 - my0 : ys1 - my0, xs0 - mx0 : xs1 - mx0]
        else:
            keep[max(0, y0 - sy0) : max(0, y1 - sy0), max(0, x0 - sx0) : max(0, x1 - sx0)] = True
        out[~keep] = 0
    return out
