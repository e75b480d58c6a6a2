"""Stain colour: normalisation to a reference, HED jitter, and colour statistics.

Labs stain, light and photograph smears differently; a classifier that learned one
lab's colours reads another lab's colours as evidence. Two published remedies:

- **normalise** every crop to the training set's colours before the model sees it
  (Reinhard et al. 2001: match mean/std in CIE Lab; Macenko et al. 2009: estimate the
  two stain vectors in optical-density space and rescale stain concentrations to the
  reference's), applied by THE preprocessing function, so train, export parity and
  the runtime do the same;
- **augment** stain concentrations during training (Tellez et al. 2018, "HED jitter",
  as in tiatoolbox and torchstain) so the model does not rely on one lab's colours.

:func:`stain_stats` (the Lab colour of the darkest and of the brightest tenth of a
crop: the nuclear stain and the illumination) is what the runtime compares with the
training crops to see that a microscope's colours are not the ones the model knows.

numpy and OpenCV only (the runtime floor). Images are 8-bit BGR. A crop on black
(masked cells) is measured and changed on its non-black pixels only, and stays black
outside the cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from leukedge.spec import STAIN_NORMS

# Macenko et al. 2009 (and torchstain/staintools): pixels of little optical density are
# background; ALPHA is the percentile of the angle that picks each stain. The original
# drops pixels below BETA in *any* channel; red cells of a blood smear absorb little red
# and blue light and would all be dropped with the eosin they carry, so here a pixel is
# stained when its total OD (vector norm) exceeds BETA.
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0
MIN_STAINED_PIXELS = 50  # fewer than this: no stain vectors can be estimated, leave as is
# Background intensity of a bright-field slide is the high percentile of each channel.
BACKGROUND_PERCENTILE = 99.0
MIN_BACKGROUND = 100.0

# Ruifrok & Johnston 2001 stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RGB_FROM_HED[2] = np.cross(RGB_FROM_HED[0], RGB_FROM_HED[1])
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = np.log(1e-6)


class StainError(ValueError):
    """A stain reference that does not fit its method."""


def foreground(bgr: np.ndarray) -> np.ndarray:
    """Pixels that are not pure black (a masked crop's cell; every pixel of a context crop)."""
    b, g, r = cv2.split(np.ascontiguousarray(bgr))
    return cv2.max(cv2.max(b, g), r) > 0


def _pixels(bgr: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(foreground mask or None when every pixel is foreground, foreground pixels (N, 3))."""
    fg = foreground(bgr)
    if fg.all():
        return None, bgr.reshape(-1, 3)
    return fg, bgr[fg]


def _lab(bgr: np.ndarray) -> np.ndarray:
    """float32 CIE Lab (L 0..100, a/b about -128..127) of an 8-bit BGR image."""
    return cv2.cvtColor(bgr.astype(np.float32) * np.float32(1 / 255.0), cv2.COLOR_BGR2LAB)


def lab_mean_std(bgr: np.ndarray) -> np.ndarray:
    """Mean and std of L, a, b over the crop's foreground (Reinhard's statistics)."""
    lab = _lab(bgr)
    fg = foreground(bgr)
    px = lab[fg] if fg.any() else lab.reshape(-1, 3)
    return np.concatenate([px.mean(axis=0), px.std(axis=0)]).astype(np.float64)


STAIN_DECILE = 10.0  # percent of a crop's pixels that make each of the two colours
# Statistics of a crop are measured on at most this many pixels (a regular subsample):
# a percentile or two stain vectors do not need 50,000 pixels, and the runtime measures
# every cell of every frame.
MAX_STAT_PIXELS = 4096


def subsample(px: np.ndarray, limit: int = MAX_STAT_PIXELS) -> np.ndarray:
    """Every k-th row of ``px`` so that at most ``limit`` remain (deterministic)."""
    step = -(-len(px) // limit)
    return px[::step] if step > 1 else px


def stain_stats(bgr: np.ndarray) -> np.ndarray:
    """Lab colour of the darkest and of the brightest tenth of the crop's foreground.

    Six numbers that describe the lab rather than the cell: the darkest pixels are
    nuclear stain (its hue and strength), the brightest are the slide under the lamp
    (white balance, exposure). Mean and spread over the whole crop would change with
    how much of it the cell fills.
    """
    fg, raw = _pixels(bgr)
    sample = subsample(raw if len(raw) >= 10 else bgr.reshape(-1, 3))
    px = _lab(sample[None])[0]
    lo, hi = np.percentile(px[:, 0], [STAIN_DECILE, 100.0 - STAIN_DECILE])
    dark, bright = px[px[:, 0] <= lo], px[px[:, 0] >= hi]
    return np.concatenate([dark.mean(axis=0), bright.mean(axis=0)]).astype(np.float64)


# --------------------------------------------------------------------------- Reinhard


def reinhard_reference(images: Iterable[np.ndarray]) -> dict[str, Any]:
    """Mean of the per-image Lab means and stds of the training crops."""
    stats = np.array([lab_mean_std(im) for im in images])
    if len(stats) == 0:
        raise StainError("no images to compute a Reinhard reference from")
    mean = stats.mean(axis=0)
    return {"lab_mean": mean[:3].round(4).tolist(), "lab_std": mean[3:].round(4).tolist()}


def reinhard(bgr: np.ndarray, reference: dict[str, Any]) -> np.ndarray:
    """Shift and scale each Lab channel to the reference's mean and std."""
    try:
        ref_mean = np.asarray(reference["lab_mean"], np.float32)
        ref_std = np.asarray(reference["lab_std"], np.float32)
    except (KeyError, TypeError) as e:
        raise StainError(f"a Reinhard reference needs lab_mean and lab_std: {e}") from e
    fg, px = _pixels(bgr)
    if not len(px):
        return bgr
    lab = _lab(bgr)
    mask = None if fg is None else fg.astype(np.uint8)
    mean, std = (v.ravel().astype(np.float32) for v in cv2.meanStdDev(lab, mask=mask))
    gain = ref_std / np.maximum(std, 1e-3)
    out = cv2.cvtColor(lab * gain + (ref_mean - mean * gain), cv2.COLOR_LAB2BGR)
    out = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if fg is not None:
        out[~fg] = 0
    return out


# --------------------------------------------------------------------------- Macenko


def background_intensity(bgr: np.ndarray, px: np.ndarray | None = None) -> np.ndarray:
    """Per-channel brightness of the empty slide (I0 of Beer-Lambert), from the brightest pixels.

    ``px``: the crop's foreground pixels when the caller has them already.
    """
    if px is None:
        _, px = _pixels(bgr)
    px = subsample(px if len(px) else bgr.reshape(-1, 3))
    return np.maximum(np.percentile(px, BACKGROUND_PERCENTILE, axis=0), MIN_BACKGROUND)


def optical_density(bgr: np.ndarray, io: np.ndarray) -> np.ndarray:
    """Beer-Lambert OD per channel (H, W, 3), BGR order; pixels brighter than I0 count as 0."""
    od = -np.log((bgr.astype(np.float64) + 1.0) / (np.asarray(io, np.float64) + 1.0))
    return np.maximum(od, 0.0)


def stain_vectors(od: np.ndarray) -> np.ndarray | None:
    """Macenko's two stain vectors (3 x 2, unit columns, BGR rows) of OD pixels (N, 3).

    Ordered so the first absorbs red light more (the nuclear, blue-violet dye of
    Romanowsky and H&E stains alike). None when too few stained pixels.
    """
    stained = od[np.linalg.norm(od, axis=1) > MACENKO_BETA]
    if len(stained) < MIN_STAINED_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(stained.T))
    plane = vecs[:, 1:3]  # the two largest eigenvalues
    t = stained @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [MACENKO_ALPHA, 100 - MACENKO_ALPHA])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = (v1 if v1.sum() >= 0 else -v1), (v2 if v2.sum() >= 0 else -v2)
    red = 2  # BGR: the red channel is last
    he = np.stack([v1, v2], axis=1) if v1[red] >= v2[red] else np.stack([v2, v1], axis=1)
    return he / np.linalg.norm(he, axis=0, keepdims=True)


def concentrations(od: np.ndarray, he: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (2, N) of OD pixels (N, 3)."""
    c, *_ = np.linalg.lstsq(he, od.T, rcond=None)
    return c


def macenko_reference(images: Iterable[np.ndarray], max_pixels: int = 200_000) -> dict[str, Any]:
    """Stain vectors, 99th-percentile concentrations and background of the training crops."""
    ods, ios = [], []
    for im in images:
        io = background_intensity(im)
        ios.append(io)
        ods.append(optical_density(im, io)[foreground(im)])
    if not ods:
        raise StainError("no images to compute a Macenko reference from")
    od = np.concatenate(ods)
    if len(od) > max_pixels:
        od = od[np.random.default_rng(0).choice(len(od), max_pixels, replace=False)]
    he = stain_vectors(od)
    if he is None:
        raise StainError("the training crops hold too few stained pixels for Macenko")
    max_c = np.percentile(concentrations(od, he), 99, axis=1)
    return {
        "stain_matrix": he.round(6).tolist(),
        "max_concentrations": max_c.round(6).tolist(),
        "background": np.mean(ios, axis=0).round(3).tolist(),
    }


def macenko(bgr: np.ndarray, reference: dict[str, Any]) -> np.ndarray:
    """Re-express the crop's stains with the reference's stain vectors and concentration range."""
    try:
        he_ref = np.asarray(reference["stain_matrix"], np.float64)
        max_ref = np.asarray(reference["max_concentrations"], np.float64)
        io_ref = np.asarray(reference["background"], np.float64)
    except (KeyError, TypeError) as e:
        raise StainError(
            f"a Macenko reference needs stain_matrix, max_concentrations, background: {e}"
        ) from e
    fg, px = _pixels(bgr)
    if not len(px):
        return bgr
    io = background_intensity(bgr, px)
    sample = optical_density(subsample(px)[None], io)[0]
    he = stain_vectors(sample)
    if he is None:  # a nearly empty crop: nothing to re-stain
        return bgr
    unmix = np.linalg.pinv(he)  # (2, 3): least-squares concentrations of every pixel
    max_c = np.maximum(np.percentile(sample @ unmix.T, 99, axis=0), 1e-6)
    # Unmix, rescale the concentrations, re-mix with the reference's stains: one 3x3 map.
    remix = he_ref @ np.diag(max_ref / max_c) @ unmix
    od = cv2.LUT(np.ascontiguousarray(bgr), _od_table(io))
    transmitted = cv2.exp(cv2.transform(od, -remix.astype(np.float32)))
    out_f = transmitted * (io_ref + 1.0).astype(np.float32) - 0.5  # -1, then +0.5 to round
    out = np.clip(out_f, 0, 255).astype(np.uint8)
    if fg is not None:
        out[~fg] = 0
    return out


def _od_table(io: np.ndarray) -> np.ndarray:
    """(1, 256, 3) float32 lookup table 8-bit value -> OD per channel (:func:`optical_density`)."""
    values = np.arange(256, dtype=np.float64)[:, None]
    table = np.maximum(-np.log((values + 1.0) / (np.asarray(io, np.float64) + 1.0)), 0.0)
    return np.ascontiguousarray(table.astype(np.float32)[None])


# --------------------------------------------------------------------------- the spec's choice


def fit_reference(method: str, images: Iterable[np.ndarray]) -> dict[str, Any] | None:
    """The reference statistics of ``method`` from training crops (None for ``none``)."""
    if method == "none":
        return None
    if method == "reinhard":
        return reinhard_reference(images)
    if method == "macenko":
        return macenko_reference(images)
    raise StainError(f"stain normalisation must be one of {STAIN_NORMS}, got {method!r}")


def normalise_stain(bgr: np.ndarray, method: str, reference: dict[str, Any] | None) -> np.ndarray:
    """``bgr`` in the reference's colours by ``method`` (unchanged for ``none``)."""
    if method == "none":
        return bgr
    if reference is None:
        raise StainError(f"stain normalisation {method!r} needs reference statistics")
    if method == "reinhard":
        return reinhard(bgr, reference)
    if method == "macenko":
        return macenko(bgr, reference)
    raise StainError(f"stain normalisation must be one of {STAIN_NORMS}, got {method!r}")


# --------------------------------------------------------------------------- HED jitter


def bgr_to_hed(bgr: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin, DAB concentrations (H, W, 3) as skimage's ``rgb2hed`` computes them.

    Unlike ``rgb2hed`` negative values are kept, so that :func:`hed_to_bgr` inverts it.
    """
    rgb = np.maximum(bgr[:, :, ::-1].astype(np.float64) / 255.0, 1e-6)
    return (np.log(rgb) / _LOG_ADJUST) @ HED_FROM_RGB


def hed_to_bgr(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bgr_to_hed`, 8-bit BGR."""
    rgb = np.exp((hed * _LOG_ADJUST) @ RGB_FROM_HED)
    return np.clip(rgb[:, :, ::-1] * 255.0 + 0.5, 0, 255).astype(np.uint8)


def hed_jitter(
    bgr: np.ndarray, rng: np.random.Generator, alpha: float = 0.25, beta: float = 0.02
) -> np.ndarray:
    """Scale each stain concentration by U(1 - alpha, 1 + alpha), shift it by U(-beta, beta).

    Tellez et al. 2018; ``beta`` is in skimage's HED units, where a well-stained
    nucleus measures about 0.1-0.2. Black background stays black.
    """
    fg = foreground(bgr)
    hed = bgr_to_hed(bgr)
    a = rng.uniform(1.0 - alpha, 1.0 + alpha, 3)
    b = rng.uniform(-beta, beta, 3)
    out = hed_to_bgr(hed * a + b)
    out[~fg] = 0
    return out
