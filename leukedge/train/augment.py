"""Training augmentation on 8-bit images, before the shared normalisation.

The paper's set (rotation, flips, zoom, brightness, contrast) plus a per-channel
gain (stains and white balance differ between labs and slides) as one affine
warp and one linear intensity change, done in OpenCV at the model's input size so it
is cheap on a CPU. Optionally (``hed``) the stain concentrations are jittered too
(Tellez et al. 2018): a model that has seen many stain intensities relies less on
one lab's colours. Augmentation starts from the stain-normalised pixels of
:func:`~leukedge.imaging.preprocess.model_pixels`. The result goes through the same ``normalize`` as evaluation
images, so the only difference between train and eval inputs is the
augmentation itself. Randomness comes from a generator seeded by (seed, epoch,
index): a resumed run sees exactly the images an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from leukedge.imaging.preprocess import model_pixels
from leukedge.imaging.stain import hed_jitter
from leukedge.spec import ModelSpec


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 180.0  # cells have no up: any rotation is a valid view
    hflip: bool = True
    vflip: bool = True
    zoom: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.15  # added offset, fraction of 255
    contrast: float = 0.15  # multiplicative change around the mean
    color: float = 0.08  # per-channel gain in [1 - color, 1 + color]
    hed: bool = False  # HED stain-concentration jitter
    hed_alpha: float = 0.25  # concentration scale in [1 - alpha, 1 + alpha]
    hed_beta: float = 0.02  # concentration shift in [-beta, beta] (skimage HED units)


def augment(
    image_bgr: np.ndarray,
    spec: ModelSpec,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
) -> np.ndarray:
    """One random view of a cell image at the model's input size (8-bit BGR)."""
    img = model_pixels(image_bgr, spec)
    if cfg.hed:
        img = hed_jitter(img, rng, cfg.hed_alpha, cfg.hed_beta)
    s = spec.input_size
    angle = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = float(rng.uniform(*cfg.zoom))
    m = cv2.getRotationMatrix2D((s / 2.0 - 0.5, s / 2.0 - 0.5), angle, scale)
    if cfg.hflip and rng.random() < 0.5:
        m[0] = -m[0]
        m[0, 2] += s - 1
    if cfg.vflip and rng.random() < 0.5:
        m[1] = -m[1]
        m[1, 2] += s - 1
    # Masked cells sit on black; context crops continue their surroundings.
    border = cv2.BORDER_CONSTANT if spec.crop_style == "masked" else cv2.BORDER_REFLECT_101
    img = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    alpha = 1.0 + float(rng.uniform(-cfg.contrast, cfg.contrast))
    beta = 255.0 * float(rng.uniform(-cfg.brightness, cfg.brightness))
    gains = (1.0 + rng.uniform(-cfg.color, cfg.color, 3)).astype(np.float32)
    out = img.astype(np.float32) * gains
    if spec.crop_style == "masked":
        foreground = out.max(axis=2, keepdims=True) > 0
        mean = out[foreground[..., 0]].mean(axis=0) if foreground.any() else 0.0
        out = np.where(foreground, (out - mean) * alpha + mean + beta, 0.0)
    else:
        mean = out.mean(axis=(0, 1))
        out = (out - mean) * alpha + mean + beta
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
