"""ONNX export, FP16 and INT8 Q/DQ conversion, calibration reuse and export.json.

The three architectures are exported once per module at 64 px (untrained: export
and FP32 parity do not depend on the weights); FP16/INT8 agreement is checked on a
CNN trained a few steps on drawn cells, where logits are large and classes apart.
Every test that needs one of these exports or the trained run is marked slow:
whichever of them runs first pays for it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MakeRun, draw_cell

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from leukedge.artifacts import read_export_record  # noqa: E402
from leukedge.export import int8 as int8_mod  # noqa: E402
from leukedge.export import onnx_export  # noqa: E402
from leukedge.export.fp16 import convert_fp16  # noqa: E402
from leukedge.export.onnx_export import ExportError, OnnxExport, export_onnx  # noqa: E402
from leukedge.export.parity import reference_logits  # noqa: E402
from leukedge.export.pipeline import export_run  # noqa: E402
from leukedge.imaging.preprocess import preprocess_batch  # noqa: E402
from leukedge.io import sha256_file  # noqa: E402
from leukedge.runtime.backends.ort import OrtBackend, spec_from_onnx  # noqa: E402
from leukedge.spec import ModelSpec  # noqa: E402
from leukedge.train.models import build_model, default_spec  # noqa: E402

ARCHS = ("cnn", "resnet50", "vit-hybrid")
SIZE = 64


# --- shared exports -----------------------------------------------------------------


def cells(spec: ModelSpec, n: int, seed: int = 1) -> np.ndarray:
    """Preprocessed drawn cells, half of each class: inputs that look like the real thing."""
    rng = np.random.default_rng(seed)
    images = [draw_cell(rng, "hem" if i % 2 else "all") for i in range(n)]
    return preprocess_batch(images, spec)


def torch_out(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


Exported = tuple[torch.nn.Module, ModelSpec, OnnxExport]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """Export each architecture once (lazily) and share it between tests."""
    cache: dict[str, Exported] = {}

    def get(arch: str) -> Exported:
        if arch not in cache:
            torch.manual_seed(0)
            spec = default_spec(arch, ["hem", "all"], "all", SIZE, "context", 0.5)
            model = build_model(arch, spec.num_classes, SIZE).eval()
            path = tmp_path_factory.mktemp(arch) / "model.fp32.onnx"
            cache[arch] = (model, spec, export_onnx(model, spec, path))
        return cache[arch]

    return get


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def fed_by_dequantize(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    made_by = producers(model)
    return any(i in made_by and made_by[i].op_type == "DequantizeLinear" for i in node.input)


# --- FP32 export ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_export_matches_pytorch_at_any_batch(
    exported: Callable[[str], Exported], arch: str
) -> None:
    model, spec, result = exported(arch)
    assert result.opset >= 17
    onnx.checker.check_model(str(result.path), full_check=True)
    backend = OrtBackend(result.path)
    assert backend.max_batch is None, "batch dimension must be symbolic"
    rng = np.random.default_rng(0)
    inputs = {
        "random": rng.standard_normal((5, *spec.input_shape)).astype(np.float32),
        "cells": cells(spec, 5),
    }
    for name, x in inputs.items():
        for n in (1, 5):
            diff = np.abs(backend.infer(x[:n]) - torch_out(model, x[:n])).max()
            # Same fp32 arithmetic in another order: differences are rounding (~1e-6).
            assert diff <= 1e-4, f"{arch} {name} batch {n}: max |Δlogit| {diff}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_graph_contract(exported: Callable[[str], Exported], arch: str) -> None:
    _, spec, result = exported(arch)
    assert spec_from_onnx(result.path) == spec
    model = onnx.load(str(result.path))
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    assert onnx_export.graph_problems(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert "Ceil" not in ops and "BatchNormalization" not in ops
    assert result.seconds > 0 and result.graph["nodes"] == len(model.graph.node)


@pytest.mark.slow
def test_vit_hybrid_graph_is_folded_for_its_input_size(
    exported: Callable[[str], Exported],
) -> None:
    """No weight-standardisation BatchNorm, no SAME-padding chains, no -inf Pad left."""
    _, _, result = exported("vit-hybrid")
    model = onnx.load(str(result.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == 25  # 12 blocks x 2 + final norm, native op
    for op in ("BatchNormalization", "Ceil", "Pad", "ConstantOfShape"):
        assert op not in ops, op
    made_by = producers(model)
    for node in model.graph.node:  # Shape only feeds reshapes that carry the batch size
        if node.op_type == "Shape":
            assert node.input[0] in made_by or node.input[0] == "input"
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert any(a.name == "pads" for a in pool.attribute)
    names = [n.name for n in model.graph.node]
    assert "head/Gemm" in names and "norm/LayerNormalization" in names


@pytest.mark.slow
def test_opset_below_17_is_refused(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    model, spec, _ = exported("cnn")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(model, spec, tmp_path / "m.onnx", opset=16)
    assert not (tmp_path / "m.onnx").exists()


# --- FP16 and INT8 on the ViT hybrid ---------------------------------------------------


@pytest.mark.slow
def test_fp16_keeps_normalizations_in_fp32(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    model, spec, result = exported("vit-hybrid")
    x = cells(spec, 6)
    fp16 = convert_fp16(result.path, tmp_path / "model.fp16.onnx", x)
    assert set(fp16.keep_op_types) == {"InstanceNormalization", "LayerNormalization"}
    converted = onnx.shape_inference.infer_shapes(onnx.load(str(fp16.path)))
    types = {v.name: v.type.tensor_type.elem_type for v in converted.graph.value_info}
    types.update({t.name: t.data_type for t in converted.graph.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    for node in converted.graph.node:
        if node.op_type in fp16.keep_op_types:
            assert types[node.input[0]] == f32, node.name
        if node.op_type == "MatMul" and node.name.startswith("blocks."):
            assert types[node.input[0]] == f16, node.name
    assert converted.graph.input[0].type.tensor_type.elem_type == f32
    assert converted.graph.output[0].type.tensor_type.elem_type == f32
    assert spec_from_onnx(fp16.path) == spec
    diff = np.abs(OrtBackend(fp16.path).infer(x) - torch_out(model, x)).max()
    # fp16 weights and tensors: ~1e-3 relative; these logits are O(1).
    assert diff <= 1e-2


@pytest.mark.slow
def test_vit_int8_quantizes_backbone_and_blocks_not_patch_proj_norm_head(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    model, spec, result = exported("vit-hybrid")
    x = cells(spec, 8)
    r = int8_mod.quantize_int8(
        result.path,
        tmp_path / "model.int8.onnx",
        tmp_path / "calibration.json",
        images=lambda: (x, [f"cell{i}" for i in range(len(x))]),
        image_count=len(x),
        images_id="cells",
    )
    assert {"patch_embed.proj/Conv", "norm/LayerNormalization", "head/Gemm"} <= set(
        r.excluded_nodes
    )
    q = onnx.load(str(r.path))
    by_name = {n.name: n for n in q.graph.node}
    for name in r.excluded_nodes:
        assert not fed_by_dequantize(q, by_name[name]), f"{name} was quantized"
    assert fed_by_dequantize(q, by_name["blocks.0.attn.qkv/MatMul"])
    stem = [n for n in q.graph.node if n.name.startswith("patch_embed.backbone")]
    assert any(n.op_type == "Conv" and fed_by_dequantize(q, n) for n in stem)
    scales = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert scales, "no QuantizeLinear"
    out = reference_logits(r.path, x)
    assert np.isfinite(out).all()
    # Untrained ViT, logits O(1): INT8 of the stem and 12 blocks moves them by ~0.1.
    assert np.abs(out - torch_out(model, x)).max() <= 0.5


def tiny_model_with_inf(path: Path) -> Path:
    """Conv -> Relu -> Log (-inf where Relu is 0) -> Conv -> pool: a tensor holding -inf."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        h.make_node("Conv", ["input", "w1"], ["c1"], "a/Conv", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], "a/Relu"),
        h.make_node("Log", ["r1"], ["l1"], "b/Log"),
        h.make_node("Conv", ["l1", "w2"], ["c2"], "b/Conv"),
        h.make_node("GlobalAveragePool", ["c2"], ["p"], "pool/GlobalAveragePool"),
        h.make_node("Flatten", ["p"], ["logits"], "pool/Flatten"),
    ]
    graph = h.make_graph(
        nodes,
        "tiny",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 2])],
        [w1, w2],
    )
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    return path


def test_entropy_on_nonfinite_tensor_falls_back_and_keeps_its_nodes_float(
    tmp_path: Path,
) -> None:
    src = tiny_model_with_inf(tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    r = int8_mod.quantize_int8(
        src,
        tmp_path / "tiny.int8.onnx",
        tmp_path / "calibration.json",
        method="entropy",
        images=lambda: (x, [str(i) for i in range(len(x))]),
        image_count=len(x),
        images_id="random",
    )
    assert r.calibration["requested_method"] == "entropy"
    assert r.calibration["method"] == "minmax"
    assert any("fell back to minmax" in w for w in r.warnings)
    assert "b/Conv" in r.excluded_reasons["nonfinite"]
    q = onnx.load(str(r.path))
    by_name = {n.name: n for n in q.graph.node}
    assert fed_by_dequantize(q, by_name["a/Conv"])
    assert not fed_by_dequantize(q, by_name["b/Conv"])
    text = (tmp_path / "calibration.json").read_text()
    stored = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in calibration.json"))
    assert stored["nonfinite_tensors"]
    assert all(np.isfinite(v).all() for v in stored["ranges"].values())


def test_unknown_calibration_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(int8_mod.Int8Error, match="calibration method"):
        int8_mod.quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", tmp_path / "c.json", "kl")


# --- the whole pipeline on a trained run ---------------------------------------------


@pytest.fixture(scope="module")
def trained_export(
    make_run: MakeRun, drawn_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict, list[str]]:
    trained = make_run(drawn_data, model="cnn", img_size=32, steps=20)
    run = shutil.copytree(trained, tmp_path_factory.mktemp("trained") / "run")
    stages: list[str] = []
    record = export_run(run, progress=lambda stage, done, total: stages.append(stage))
    return run, record, stages


@pytest.mark.slow
def test_export_run_writes_every_file_and_export_json(trained_export) -> None:
    run, record, stages = trained_export
    out = run / "export"
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(record))
    assert (out / "calibration.json").is_file()
    for precision in ("fp32", "fp16", "int8"):
        entry = record["files"][precision]
        path = out / f"model.{precision}.onnx"
        assert entry["file"] == path.name and entry["precision"] == precision
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
        assert entry["opset"] >= 17
        assert spec_from_onnx(path) == ModelSpec.load(run / "spec.json")
        assert entry["parity"]["n"] == record["parity_images"] > 0
    assert record["files"]["fp32"]["export_seconds"] > 0
    assert record["files"]["fp16"]["keep_fp32_op_types"] == []  # the CNN has no norms left
    assert record["files"]["int8"]["calibration"]["images"] == record["parity_images"]
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    assert {"export fp32", "convert fp16", "calibrate int8", "parity int8"} <= set(stages)
    assert record["errors"] == {}


@pytest.mark.slow
def test_export_run_parity_on_trained_cnn(trained_export) -> None:
    _, record, _ = trained_export
    files = record["files"]
    fp32, fp16 = files["fp32"]["parity"], files["fp16"]["parity"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4
    assert fp32["accuracy_reference"] >= 0.9  # the drawn classes are easy: it did learn
    # FP16 keeps ~3 significant digits; logits here reach ~50, so |Δ| stays below ~0.05.
    assert fp16["agreement"] == 1.0 and fp16["max_abs_diff"] <= 0.05
    assert fp16["accuracy_delta"] == 0.0
    exact = files["int8"]["parity_qdq_reference"]
    # Q/DQ arithmetic on its own calibration images: each layer's error ~1% of its range.
    assert exact["agreement"] == 1.0 and exact["accuracy_delta"] == 0.0
    assert exact["max_abs_diff"] <= 1.0  # logits reach ~40: ~2% of their range
    # ONNX Runtime's int8 kernels on x86 without VNNI saturate (see parity.reference_logits):
    # the optimised run must still be finite and give the same answers on separable cells.
    assert files["int8"]["parity"]["all_finite"] and files["int8"]["parity"]["agreement"] >= 0.9


def dequantize_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """DequantizeLinear name -> element type of its input (initializer or QuantizeLinear)."""
    inits = {t.name: t for t in model.graph.initializer}
    made_by = producers(model)
    out = {}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        if src in inits:
            out[n.name] = inits[src].data_type
        else:
            q = made_by[src]
            assert q.op_type == "QuantizeLinear", n.name
            out[n.name] = inits[q.input[2]].data_type
    return out


def assert_tensorrt_int8_rules(path: Path) -> None:
    """int8 into every DequantizeLinear, zero points 0, float biases, float logits."""
    q = onnx.load(str(path))
    assert set(dequantize_inputs(q).values()) == {onnx.TensorProto.INT8}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    inits = {t.name: t for t in q.graph.initializer}
    for node in qdq:
        zero = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert zero.dtype == np.int8 and (zero == 0).all(), node.name
        scale = onnx.numpy_helper.to_array(inits[node.input[1]])
        assert np.isfinite(scale).all() and (scale > 0).all(), node.name
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT, node.name
    assert producers(q)["logits"].op_type not in ("QuantizeLinear", "DequantizeLinear")


@pytest.mark.slow
def test_int8_graph_holds_qdq(trained_export) -> None:
    run, _, _ = trained_export
    path = run / "export" / "model.int8.onnx"
    q = onnx.load(str(path))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert convs and all(fed_by_dequantize(q, n) for n in convs)
    # Symmetric int8 everywhere, biases left in float (TensorRT refuses int32 into a DQ).
    assert_tensorrt_int8_rules(path)
    made_by = producers(q)
    for node in q.graph.node:  # inputs of weighted ops quantized, their outputs not
        if node.op_type in ("Conv", "Gemm"):
            assert made_by[node.input[1]].op_type == "DequantizeLinear"
            readers = [n.op_type for n in q.graph.node if node.output[0] in n.input]
            assert "QuantizeLinear" not in readers, node.name


def test_export_json_says_tensorrt_parses_every_file(trained_export) -> None:
    _, record, stages = trained_export
    for precision, entry in record["files"].items():
        assert entry["tensorrt_compatible"] is True, (precision, entry["tensorrt_issues"])
        assert entry["tensorrt_issues"] == []
    settings = record["files"]["int8"]["settings"]
    assert settings["quantize_bias"] is False and settings["output_quantization"] is False
    assert record["files"]["int8"]["residual_adds_quantized"] == 0  # the CNN has no skips
    assert "check for TensorRT" in stages


@pytest.mark.parametrize(
    "arch",
    [
        "cnn",
        # An FP32 export and a calibration each: minutes on a shared 2-core CPU.
        pytest.param("resnet50", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
        pytest.param("vit-hybrid", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
    ],
)
def test_every_arch_exports_an_int8_file_tensorrt_parses(
    make_run: MakeRun, drawn_data: Path, arch: str
) -> None:
    """Untrained but for two steps, at 32 px: placement and parser rules do not need more."""
    run = make_run(drawn_data, model=arch, img_size=32, steps=2, lr=0.01, export=("int8",))
    record = read_export_record(run)
    int8 = record["files"]["int8"]
    assert int8["tensorrt_compatible"] is True, int8["tensorrt_issues"]
    assert_tensorrt_int8_rules(run / "export" / "model.int8.onnx")
    # ResNet-50's 16 bottlenecks each fuse Conv+Add; the hybrid's stem has a norm in between.
    assert int8["residual_adds_quantized"] == {"cnn": 0, "resnet50": 16, "vit-hybrid": 0}[arch]
    assert int8["parity_qdq_reference"]["all_finite"]


def test_incompatible_int8_fails_the_export_unless_allowed(
    trained_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TensorRT that parsed opsets up to 17 only: every file is refused, the INT8 one fails."""
    from typer.testing import CliRunner

    from leukedge.cli import app
    from leukedge.export import trt_compat
    from leukedge.export.pipeline import TensorRTIncompatibleError

    run = copy_run(trained_export[0], tmp_path / "run")
    monkeypatch.setattr(trt_compat, "OPSET_RANGE", (9, 17))
    with pytest.raises(TensorRTIncompatibleError, match="opset 18 is outside 9-17"):
        export_run(run, precisions=("int8",))
    written = json.loads((run / "export" / "export.json").read_text())
    assert written["files"]["int8"]["tensorrt_compatible"] is False
    assert any("fp32: TensorRT's ONNX parser would refuse" in w for w in written["warnings"])

    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(run), "--precision", "int8"])
    assert refused.exit_code == 1, refused.output
    text = " ".join(refused.output.split())  # rich wraps long lines
    assert "model.int8.onnx: opset 18 is outside 9-17" in text and "--allow-incompatible" in text
    allowed = runner.invoke(
        app, ["export", str(run), "--precision", "int8", "--allow-incompatible"]
    )
    assert allowed.exit_code == 0, allowed.output
    text = " ".join(allowed.output.split())
    assert "refused" in text and "would refuse model.int8.onnx: opset 18 is outside" in text


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


@pytest.mark.slow
def test_requantization_reuses_calibration(
    trained_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, first, _ = trained_export
    run = copy_run(run, tmp_path / "run")

    def must_not_calibrate(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration ran although calibration.json matches")

    monkeypatch.setattr(int8_mod, "run_calibration", must_not_calibrate)
    record = export_run(run, precisions=("int8",))
    int8 = record["files"]["int8"]
    assert first["files"]["int8"]["calibration_reused"] is False
    assert int8["calibration_reused"] is True
    assert int8["sha256"] == first["files"]["int8"]["sha256"]  # same ranges, same file
    assert record["files"]["fp32"] == first["files"]["fp32"]  # not exported again
    assert record["files"]["fp16"]["sha256"] == first["files"]["fp16"]["sha256"]


@pytest.mark.slow
def test_requantization_without_data_reuses_calibration(trained_export, tmp_path: Path) -> None:
    run, first, _ = trained_export
    run = copy_run(run, tmp_path / "run")
    record = export_run(run, precisions=("int8",), data=tmp_path / "absent")
    assert record["files"]["int8"]["calibration_reused"] is True
    assert record["parity_images"] == 0
    assert any("no validation images" in w for w in record["warnings"])


@pytest.mark.slow
def test_other_method_or_size_recalibrates(trained_export, tmp_path: Path) -> None:
    run, _, _ = trained_export
    run = copy_run(run, tmp_path / "run")
    record = export_run(run, precisions=("int8",), calib_method="percentile", calib_size=11)
    int8 = record["files"]["int8"]
    assert int8["calibration_reused"] is False
    assert int8["calibration"]["method"] == "percentile"
    assert int8["calibration"]["images"] == 11
    stored = json.loads((run / "export" / "calibration.json").read_text())
    assert stored["method"] == "percentile" and stored["images"] == 11
    assert stored["onnx_sha256"] == record["files"]["fp32"]["sha256"]


@pytest.mark.slow
def test_bad_arguments_are_refused(trained_export) -> None:
    run, _, _ = trained_export
    with pytest.raises(ExportError, match="precision"):
        export_run(run, precisions=("fp8",))
    with pytest.raises(ExportError, match="fp8"):
        export_run(run, precisions="fp32,fp8")
    with pytest.raises(int8_mod.Int8Error, match="calibration method"):
        export_run(run, calib_method="kl")


# --- atomic writes --------------------------------------------------------------------


def crash_while_saving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make onnx.save_model write half a file, then fail, as a crash or Ctrl-C would."""

    def half_then_crash(proto: onnx.ModelProto, path: str, *args: object, **kw: object) -> None:
        data = proto.SerializeToString()
        Path(path).write_bytes(data[: len(data) // 2])
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(onnx, "save_model", half_then_crash)


@pytest.mark.slow
def test_interrupted_writes_leave_no_partial_file(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, spec, result = exported("cnn")
    proto = onnx.load(str(result.path))
    existing = tmp_path / "model.fp32.onnx"
    shutil.copy(result.path, existing)
    before = sha256_file(existing)
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda *a, **k: proto)
    crash_while_saving(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(model, spec, existing)
    assert sha256_file(existing) == before  # the previous file is untouched
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(model, spec, tmp_path / "new.onnx")
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_fp16(existing, tmp_path / "model.fp16.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]
