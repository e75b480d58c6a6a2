"""Stain normalisation, HED jitter and the spec fields that carry them (numpy + OpenCV only)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from leukedge.imaging import stain
from leukedge.imaging.preprocess import model_pixels, normalize, prepare, preprocess
from leukedge.spec import ModelSpec, SpecError
from leukedge.train.augment import AugmentConfig, augment


def smear(seed: int, he: np.ndarray, size: int = 32, io: float = 230.0) -> np.ndarray:
    """A synthetic two-stain crop: a dark nucleus, cytoplasm, a red cell, bright background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = np.zeros((2, size, size))
    nucleus = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    red_cell = (yy - size / 5) ** 2 + (xx - size / 5) ** 2 < (size / 7) ** 2
    c[0][nucleus] = 1.0
    c[1][nucleus | ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.6) ** 2)] += 0.3
    c[1][red_cell] = 0.9
    c += rng.uniform(0, 0.05, c.shape)
    od = np.einsum("kc,chw->hwk", he, c)  # he: (3 BGR, 2 stains)
    return np.clip((io + 1) * np.exp(-od) - 1 + 0.5, 0, 255).astype(np.uint8)


# Nuclear dye absorbs red (BGR: last row large); the eosin-like one absorbs green.
HE_A = np.array([[0.55, 0.25], [0.60, 0.90], [0.58, 0.35]])
HE_B = np.array([[0.35, 0.10], [0.70, 0.85], [0.62, 0.52]])


def test_reinhard_moves_colour_statistics_to_the_reference() -> None:
    ref_imgs = [smear(i, HE_A) for i in range(4)]
    ref = stain.reinhard_reference(ref_imgs)
    out = stain.reinhard(smear(9, HE_B, io=200), ref)
    stats = stain.lab_mean_std(out)
    np.testing.assert_allclose(stats[:3], ref["lab_mean"], atol=1.0)
    np.testing.assert_allclose(stats[3:], ref["lab_std"], atol=1.0)


def test_macenko_recovers_the_reference_stains_of_a_differently_stained_crop() -> None:
    ref = stain.macenko_reference([smear(i, HE_A) for i in range(4)])
    target = smear(9, HE_A)
    other = smear(9, HE_B, io=200)  # same cell: other stain vectors, dimmer lamp
    fixed = stain.macenko(other, ref)
    before = np.abs(other.astype(float) - target).mean()
    after = np.abs(fixed.astype(float) - target).mean()
    assert after < before / 2
    he = np.asarray(ref["stain_matrix"])
    assert abs(he[:, 0] @ (HE_A[:, 0] / np.linalg.norm(HE_A[:, 0]))) > 0.97


def test_masked_crops_stay_black_outside_the_cell() -> None:
    img = smear(0, HE_A)
    img[:, :8] = 0
    for out in (
        stain.reinhard(img, stain.reinhard_reference([smear(1, HE_B)])),
        stain.macenko(img, stain.macenko_reference([smear(1, HE_B)])),
        stain.hed_jitter(img, np.random.default_rng(0)),
    ):
        assert (out[:, :8] == 0).all()


def test_nearly_empty_crop_is_left_alone_by_macenko() -> None:
    blank = np.full((16, 16, 3), 230, np.uint8)
    ref = stain.macenko_reference([smear(0, HE_A)])
    np.testing.assert_array_equal(stain.macenko(blank, ref), blank)


def test_hed_round_trip_and_identity_jitter() -> None:
    img = smear(3, HE_A)
    np.testing.assert_array_equal(stain.hed_to_bgr(stain.bgr_to_hed(img)), img)
    same = stain.hed_jitter(img, np.random.default_rng(0), alpha=0.0, beta=0.0)
    np.testing.assert_array_equal(same, img)
    a = stain.hed_jitter(img, np.random.default_rng(1))
    b = stain.hed_jitter(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)


def test_unknown_method_and_missing_reference_are_errors() -> None:
    img = smear(0, HE_A)
    with pytest.raises(stain.StainError):
        stain.normalise_stain(img, "vahadane", {})
    with pytest.raises(stain.StainError):
        stain.normalise_stain(img, "reinhard", None)
    with pytest.raises(stain.StainError):
        stain.reinhard(img, {"lab_mean": [1, 2, 3]})


def test_spec_stain_fields_validate_and_old_specs_load() -> None:
    with pytest.raises(SpecError):
        ModelSpec(arch="cnn", stain_norm="macenko")  # no reference
    with pytest.raises(SpecError):
        ModelSpec(arch="cnn", stain_norm="vahadane", stain_reference={"x": 1})
    with pytest.raises(SpecError):
        ModelSpec(arch="cnn", temperature=0.0)
    old = {"arch": "cnn", "classes": ["hem", "all"], "input_size": 32}  # before these fields
    spec = ModelSpec.from_json(json.dumps(old))
    assert (spec.stain_norm, spec.stain_reference, spec.temperature) == ("none", None, 1.0)
    assert spec.operating_point is None
    ref = stain.reinhard_reference([smear(0, HE_A)])
    new = ModelSpec(arch="cnn", input_size=32, stain_norm="reinhard", stain_reference=ref)
    assert ModelSpec.from_json(new.to_json()) == new


def test_the_one_preprocessing_function_applies_the_spec_stain_norm() -> None:
    ref = stain.reinhard_reference([smear(i, HE_A) for i in range(3)])
    plain = ModelSpec(arch="cnn", input_size=32, crop_style="context")
    spec = ModelSpec(
        arch="cnn", input_size=32, crop_style="context", stain_norm="reinhard", stain_reference=ref
    )
    img = cv2.resize(smear(5, HE_B, size=48), (48, 48))
    x = preprocess(img, spec)
    np.testing.assert_array_equal(x, normalize(model_pixels(img, spec), spec))
    assert not np.allclose(x, preprocess(img, plain))
    x2, stains = prepare(img, spec)
    np.testing.assert_array_equal(x2, x)
    # The stain statistics describe the crop as the camera gave it, before normalisation.
    np.testing.assert_allclose(stains, stain.stain_stats(model_pixels(img, plain)))


def test_hed_augmentation_is_seeded_and_optional() -> None:
    spec = ModelSpec(arch="cnn", input_size=32, crop_style="context")
    img = smear(0, HE_A)
    on = AugmentConfig(hed=True)
    a = augment(img, spec, np.random.default_rng(7), on)
    b = augment(img, spec, np.random.default_rng(7), on)
    np.testing.assert_array_equal(a, b)
    off = augment(img, spec, np.random.default_rng(7), AugmentConfig())
    assert not np.array_equal(a, off)
