"""Domain shift, calibration and adjusted counts through export and the runtime.

A tiny untrained CNN is exported with the ``features`` output and a shift model
embedded; a second file is exported the old way (logits only) to show that models
exported before this change keep working everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from stub_finders import TwoCells

from leukedge.export.onnx_export import export_onnx
from leukedge.runtime.backends.ort import OrtBackend
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.shift import ONNX_SHIFT_KEY, WARNING, ShiftModel, find_shift_model
from leukedge.spec import FEATURES_NAME, OUTPUT_NAME, ModelSpec
from leukedge.train.features import WithFeatures, penultimate
from leukedge.train.models import build_model

SIZE = 32


def shift_for(dim: int, threshold: float) -> ShiftModel:
    """A shift model around the origin whose threshold decides how much gets flagged."""
    return ShiftModel(
        class_means=np.zeros((2, dim)),
        feature_whitener=np.eye(dim),
        stain_mean=np.zeros(6),
        stain_whitener=np.eye(6) * 1e-6,
        feature_threshold=threshold,
        stain_threshold=1.0,
        info={"test": True},
    )


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", 2, SIZE).eval()


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    op = {
        "split": "test",
        "positives": 20,
        "negatives": 20,
        "true_positives": 18,
        "false_positives": 2,
        "tpr": 0.9,
        "fpr": 0.1,
    }
    return ModelSpec(
        arch="cnn", input_size=SIZE, crop_style="context", temperature=2.0, operating_point=op
    )


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, model: torch.nn.Module, spec: ModelSpec
) -> Path:
    path = tmp_path_factory.mktemp("shift") / "model.fp32.onnx"
    export_onnx(model, spec, path, shift=shift_for(256, threshold=1e-9))
    return path


@pytest.fixture(scope="module")
def old_style(tmp_path_factory: pytest.TempPathFactory, model: torch.nn.Module, spec: ModelSpec):
    path = tmp_path_factory.mktemp("old") / "model.fp32.onnx"
    export_onnx(model, spec, path, features=False)
    return path


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def test_with_features_returns_the_model_logits_and_the_penultimate_features(model) -> None:
    x = torch.from_numpy(images(3))
    logits, feats = WithFeatures(model)(x)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(feats, penultimate(model, x))
    assert feats.shape == (3, 256)


def test_export_has_a_features_output_and_carries_the_shift_model(exported: Path, model) -> None:
    proto = onnx.load(str(exported))
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME, FEATURES_NAME]
    assert ONNX_SHIFT_KEY in {p.key for p in proto.metadata_props}
    backend = OrtBackend(exported)
    x = images(5)
    logits, feats = backend.infer_with_features(x)
    with torch.no_grad():
        ref_logits, ref_feats = WithFeatures(model)(torch.from_numpy(x))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(feats, ref_feats.numpy(), atol=1e-4)
    np.testing.assert_allclose(backend.infer(x), logits)
    shift = find_shift_model(exported)
    assert shift is not None and shift.info == {"test": True}


def test_fp16_and_int8_files_keep_both_outputs_in_float32(exported: Path, tmp_path: Path) -> None:
    from leukedge.export.fp16 import convert_fp16
    from leukedge.export.int8 import quantize_int8

    x = images(8)
    fp16 = convert_fp16(exported, tmp_path / "model.fp16.onnx", x).path
    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(
        exported,
        int8,
        tmp_path / "calibration.json",
        images=lambda: (x, [f"r{i}" for i in range(len(x))]),
        image_count=len(x),
        images_id="random",
    )
    ref_logits, ref_feats = OrtBackend(exported).infer_with_features(x)
    for path, tol in ((fp16, 0.05), (int8, 0.5)):
        proto = onnx.load(str(path))
        outs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
        assert outs == {OUTPUT_NAME: onnx.TensorProto.FLOAT, FEATURES_NAME: onnx.TensorProto.FLOAT}
        assert ONNX_SHIFT_KEY in {p.key for p in proto.metadata_props}
        logits, feats = OrtBackend(path).infer_with_features(x)
        assert feats is not None and feats.dtype == np.float32
        assert np.abs(feats - ref_feats).max() < tol * max(1.0, np.abs(ref_feats).max())


@pytest.fixture(scope="module")
def clf(exported: Path) -> Iterator[Classifier]:
    with Classifier.load(exported, backend="ort-fp32", device="cpu") as c:
        yield c


def test_classifier_applies_the_spec_temperature(clf: Classifier) -> None:
    crops = [np.full((40, 40, 3), v, np.uint8) for v in (30, 120, 220)]
    logits = clf.logits(crops)
    z = logits / 2.0
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.predict(crops), expected, atol=1e-6)


def frames(n: int):
    from leukedge.runtime.sources import Frame

    rng = np.random.default_rng(0)
    for i in range(n):
        yield Frame(i, f"f{i:03d}", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), None, 0.0)


def test_pipeline_reports_shift_calibration_and_adjusted_ratio(
    clf: Classifier, tmp_path: Path
) -> None:
    s = run_pipeline(clf, frames(3), tmp_path, finder=TwoCells(), annotate=False)
    shift = s["domain_shift"]
    assert shift["available"] and shift["cells_scored"] == 6 and shift["flagged"] == 6
    assert shift["warning"] == WARNING  # threshold 1e-9: everything is "out of distribution"
    assert s["blast_ratio_adjusted"]["method"].startswith("adjusted classify-and-count")
    assert "note" in s["blast_ratio_adjusted"]  # the correction does not hold under shift
    assert s["calibration"]["temperature"] == 2.0
    assert s["calibration"]["uncertain_band"] == [0.35, 0.65]
    lines = [json.loads(x) for x in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert all(r["out_of_distribution"] is True and r["shift_score"] > 1 for r in lines)
    assert sum(r["uncertain"] for r in lines) == s["calibration"]["uncertain"]
    sure = s["blast_ratio_sure"]
    assert sure["cells"] == 6 - s["calibration"]["uncertain"]


def test_in_distribution_run_has_no_warning(clf: Classifier, tmp_path: Path) -> None:
    calm = Classifier(clf.backend, clf.selection, shift=shift_for(256, threshold=1e12))
    s = run_pipeline(calm, frames(2), tmp_path, finder=TwoCells(), annotate=False)
    assert s["domain_shift"]["flagged"] == 0 and s["domain_shift"]["warning"] is None


def test_models_exported_before_features_still_run(old_style: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(old_style))
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    with Classifier.load(old_style, backend="ort-fp32", device="cpu") as c:
        c.shift = shift_for(256, 1.0)  # even with a shift model beside it
        logits, feats = c.infer_outputs(images(2))
        assert logits.shape == (2, 2) and feats is None
        s = run_pipeline(c, frames(2), tmp_path, finder=TwoCells(), annotate=False)
    assert s["frames"]["processed"] == 2 and s["cells"]["total"] == 4
    assert s["domain_shift"]["available"] is False
    assert "features" in s["domain_shift"]["reason"]
    line = json.loads((tmp_path / "cells.jsonl").read_text().splitlines()[0])
    assert line["shift_score"] is None and line["out_of_distribution"] is None


def test_cli_run_prints_the_warning(exported: Path, tmp_path: Path) -> None:
    import cv2
    from typer.testing import CliRunner

    from leukedge.cli import app

    src = tmp_path / "frames"
    src.mkdir()
    for f in frames(2):
        cv2.imwrite(str(src / f"{f.name}.png"), f.image)
    out = tmp_path / "out"
    args = ["run", str(exported), "--source", str(src), "--out", str(out), "--no-annotate"]
    r = CliRunner().invoke(app, [*args, "--cell-diameter-px", "20", "--backend", "ort-fp32"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    if summary["cells"]["total"]:
        assert "differ from the training data" in r.output
        assert "domain shift" in r.output
