"""Stain references from the training split (``leukedge train --stain-norm``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from leukedge.data.records import Record
from leukedge.imaging.images import ImageReadError, read_image, to_bgr_uint8
from leukedge.imaging.preprocess import resize_to_input
from leukedge.imaging.stain import fit_reference
from leukedge.spec import ModelSpec

# More crops than this add nothing to a mean colour or two stain vectors.
MAX_REFERENCE_IMAGES = 400


def with_stain_reference(
    spec: ModelSpec, records: Sequence[Record], method: str, seed: int = 0
) -> ModelSpec:
    """``spec`` normalising stains by ``method`` to the colours of ``records`` (train split).

    The reference is measured on the crops as the model sees them (resized to the
    input size), from at most :data:`MAX_REFERENCE_IMAGES` of them, chosen by ``seed``.
    """
    if method == "none":
        return replace(spec, stain_norm="none", stain_reference=None)
    chosen = list(records)
    if len(chosen) > MAX_REFERENCE_IMAGES:
        idx = np.random.default_rng(seed).choice(len(chosen), MAX_REFERENCE_IMAGES, replace=False)
        chosen = [chosen[i] for i in sorted(idx)]
    images = []
    for r in chosen:
        try:
            images.append(resize_to_input(to_bgr_uint8(read_image(r.path)), spec))
        except ImageReadError:
            continue  # listed by the training loop when it meets the file
    reference = fit_reference(method, images)
    assert reference is not None  # method is not "none"
    reference["images"] = len(images)
    return replace(spec, stain_norm=method, stain_reference=reference)
