"""ModelSpec round-trips and the one preprocessing path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leukedge.imaging.images import read_image
from leukedge.imaging.preprocess import crop_cell, preprocess, preprocess_batch, resize_to_input
from leukedge.spec import ModelSpec, SpecError


def test_spec_json_round_trip_and_validation(tmp_path) -> None:
    spec = ModelSpec(
        arch="vit-hybrid",
        backbone="vit_small_r26_s32_224",
        input_size=96,
        crop_style="context",
        cell_fraction=0.5,
        extra={"note": "x"},
    )
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    spec.save(tmp_path / "spec.json")
    assert ModelSpec.load(tmp_path / "spec.json") == spec
    data = spec.to_dict() | {"future_field": 1}
    assert ModelSpec.from_dict(data).extra["unknown_fields"] == {"future_field": 1}
    for bad in (
        {"classes": ["all"]},
        {"positive_class": "blast"},
        {"resize": "squash"},
        {"crop_style": "whole"},
        {"channel_order": "GBR"},
        {"interpolation": "lanczos"},
        {"std": (0, 1, 1)},
        {"version": 99},
    ):
        with pytest.raises(SpecError):
            ModelSpec(arch="cnn", **bad)
    with pytest.raises(SpecError):
        ModelSpec.from_json("not json")


def test_spec_interpolation_round_trips_and_older_specs_default_to_area() -> None:
    spec = ModelSpec(arch="vit-hybrid", mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_json(spec.to_json()).interpolation == "bicubic"
    older = spec.to_dict()
    del older["interpolation"]  # spec.json written before the field existed
    loaded = ModelSpec.from_dict(older)
    assert loaded.interpolation == "area" and "unknown_fields" not in loaded.extra
    assert loaded.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("size", [24, 96])
def test_resize_filter_follows_the_spec(size: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    shrinking = size < 48
    area = resize_to_input(img, ModelSpec(arch="cnn", input_size=size))
    default = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    assert np.array_equal(area, cv2.resize(img, (size, size), interpolation=default))
    for name, flag in (("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)):
        spec = ModelSpec(arch="cnn", input_size=size, interpolation=name)
        out = resize_to_input(img, spec)
        expected = cv2.INTER_AREA if shrinking else flag  # shrinking always antialiases
        assert np.array_equal(out, cv2.resize(img, (size, size), interpolation=expected)), name


def test_normalisation_values_and_channel_order() -> None:
    spec = ModelSpec(arch="cnn", input_size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    x = preprocess(img, spec)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[0], (1.0 - 0.5) / 0.5)  # R first in RGB order
    assert np.allclose(x[1], (0.0 - 0.25) / 0.25)
    assert np.allclose(x[2], 0.0)
    bgr = ModelSpec(arch="cnn", input_size=8, channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    assert np.allclose(preprocess(img, bgr)[2], 1.0)


@pytest.mark.parametrize("rule", ["stretch", "letterbox", "center_crop"])
def test_resize_rules(rule: str) -> None:
    spec = ModelSpec(arch="cnn", input_size=32, resize=rule)
    img = np.full((40, 80, 3), 200, np.uint8)
    out = resize_to_input(img, spec)
    assert out.shape == (32, 32, 3)
    if rule == "letterbox":
        assert out[0, 0].max() == 0 and out[16, 16].min() == 200
    else:
        assert out.min() == 200


def test_odd_inputs_become_tensors() -> None:
    spec = ModelSpec(arch="cnn", input_size=16)
    gray = np.full((20, 30), 100, np.uint8)
    deep = np.full((20, 20, 3), 4000, np.uint16)
    rgba = np.dstack([np.full((10, 10, 3), 50, np.uint8), np.full((10, 10), 255, np.uint8)])
    batch = preprocess_batch([gray, deep, rgba], spec)
    assert batch.shape == (3, 3, 16, 16) and np.isfinite(batch).all()


def test_training_eval_preprocessing_is_the_runtime_path_bit_for_bit(synth_data) -> None:
    import torch  # noqa: F401 - the training side

    from leukedge.data import load_dataset
    from leukedge.train.dataset import CellDataset

    ds = load_dataset(synth_data)
    spec = ModelSpec(arch="cnn", input_size=40, crop_style="context")
    item = CellDataset(ds.records[:3], spec, train=False)[2]
    direct = preprocess(read_image(ds.records[2].path), spec)
    assert np.array_equal(item["x"].numpy(), direct)


def test_crop_cell_context_and_masked() -> None:
    frame = np.full((100, 100, 3), 90, np.uint8)
    frame[40:60, 40:60] = 200
    box = (40, 40, 60, 60)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    ctx = crop_cell(
        frame, box, ModelSpec(arch="cnn", crop_style="context", cell_fraction=0.5), mask
    )
    assert ctx.shape == (40, 40, 3) and ctx[0, 0, 0] == 90 and ctx[20, 20, 0] == 200
    masked = crop_cell(
        frame, box, ModelSpec(arch="cnn", crop_style="masked", cell_fraction=0.5), mask
    )
    assert masked[0, 0].max() == 0 and masked[20, 20, 0] == 200 and masked[11, 11].max() == 0
    edge = crop_cell(
        frame, (0, 0, 20, 20), ModelSpec(arch="cnn", crop_style="context", cell_fraction=0.5)
    )
    assert edge.shape == (40, 40, 3) and edge[0, 0].max() == 0  # outside the frame is black
