"""TensorRT engine plan, builder and backend, on a machine without TensorRT or a GPU.

The plain logic (keys, names, flags, sidecars, compatibility, reuse) is tested
directly. The TensorRT calls run against ``fake_tensorrt``: a stand-in module that
exposes exactly the real API names of TensorRT 10.3 (JetPack 6) and 11.4 (read
from the binding wheels, ``tests/data/``) and raises AttributeError on any other,
whose parser applies TensorRT's Q/DQ rules and whose DLA build refuses dynamic
shapes. Builder tests run against both versions. A stand-in CUDA binding keeps
"device memory" in numpy arrays, so the backend's buffer handling runs for real.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import FakeCuda, FakeTensorRT, load_api, qdq_errors
from onnx import TensorProto, helper, numpy_helper

from leukedge.artifacts import ENGINE_AUTO_ORDER
from leukedge.export import tensorrt as tx
from leukedge.export.trt_build import strongly_typed_flags
from leukedge.io import sha256_file
from leukedge.runtime.backends import cuda_mem
from leukedge.runtime.backends import engine_plan as ep
from leukedge.runtime.backends import gpu as gpu_probe
from leukedge.runtime.backends import trt as trt_backend
from leukedge.runtime.backends.base import BackendError
from leukedge.runtime.backends.trt import TrtBackend
from leukedge.spec import ONNX_METADATA_KEY, ModelSpec

SIZE = 16
SPEC = ModelSpec(arch="cnn", input_size=SIZE)
GPU = gpu_probe.GpuInfo("NVIDIA Fake GPU", "8.7", "CUDA 12.6", 16000, "fake")
ORIN = gpu_probe.GpuInfo("Orin", "8.7", None, None, "fake")
TRT_VERSION = "10.3.0"
API_VERSIONS = ("10.3", "11.4")
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures


def write_onnx(
    path: Path, weights: np.ndarray, batch: int | str = "N", spec: ModelSpec = SPEC
) -> Path:
    """input (N,3,S,S) -> GlobalAveragePool -> Flatten -> MatMul(W) -> logits (N,C)."""
    w = numpy_helper.from_array(weights.astype(np.float32), "W")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "W"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, weights.shape[1]])],
        initializer=[w],
    )
    return _save(graph, path, spec)


def write_conv_onnx(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten: layers a DLA runs, then GPU-only ones."""
    w = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["logits"], axis=1, name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    return _save(graph, path, SPEC)


def _save(graph: onnx.GraphProto, path: Path, spec: ModelSpec) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {ONNX_METADATA_KEY: spec.to_json()})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


W = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.25]], dtype=np.float32)


@pytest.fixture(autouse=True)
def machine_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own per-machine cache folder (never the user's ~/.cache)."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv(ep.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    SPEC.save(run / "spec.json")
    write_onnx(run / "export" / "model.fp32.onnx", W)
    write_onnx(run / "export" / "model.fp16.onnx", W * 2)
    return run


@pytest.fixture
def run_with_data(tmp_path: Path) -> Path:
    """A run dir whose split.json points at real (synthetic) images: parity can be measured."""
    from leukedge.data.layouts import load_dataset
    from leukedge.data.splits import make_split
    from leukedge.data.synth import synthesize

    synthesize(tmp_path / "synth", n=48, frames=0, seed=0, cell_size=32, n_subjects=6)
    ds = load_dataset(tmp_path / "synth" / "cells")
    run = tmp_path / "runs" / "measured"
    run.mkdir(parents=True)
    spec = ModelSpec(arch="cnn", classes=ds.classes, input_size=SIZE)
    spec.save(run / "spec.json")
    make_split(ds, seed=0).save(run / "split.json", ds)
    for precision, scale in (("fp32", 1.0), ("fp16", 2.0), ("int8", 3.0)):
        write_onnx(run / "export" / f"model.{precision}.onnx", W * scale, spec=spec)
    return run


def make_sidecar(**changes) -> ep.EngineSidecar:
    base = ep.EngineSidecar(
        spec=SPEC,
        precision="fp16",
        tensorrt_version=TRT_VERSION,
        gpu_name="Orin",
        compute_capability="8.7",
        onnx_path="runs/demo/export/model.fp16.onnx",
        onnx_sha256="a" * 64,
        engine_file="model.fp16.engine",
        engine_sha256="b" * 64,
        engine_bytes=10,
        build_flags=ep.BuildFlags(max_batch=32),
        profile=ep.profile_shapes(SPEC, 32),
        build_seconds=1.5,
        built_at="2025-01-01T00:00:00+00:00",
        leukedge_version="0.1.0",
    )
    return replace(base, **changes)


@pytest.fixture(params=API_VERSIONS)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """The strict stand-in of TensorRT 10.3 and of 11.4, installed as ``tensorrt``."""
    return install(monkeypatch, FakeTensorRT(request.param))


def install(
    monkeypatch: pytest.MonkeyPatch, fake: FakeTensorRT, gpu: gpu_probe.GpuInfo = GPU
) -> FakeTensorRT:
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(gpu_probe, "_probe_gpu", lambda device=0: (gpu, ""))
    monkeypatch.setattr(
        trt_backend, "open_cuda", lambda device=0: FakeCuda(fake, name=gpu.name, cc="8.7")
    )
    return fake


def folder_of(fake: FakeTensorRT, gpu: str = "nvidia-fake-gpu") -> str:
    return f"{fake.version_string}_{gpu}_sm87"


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- names, flags and keys


def test_folder_names_are_stable_and_readable() -> None:
    assert ep.target_folder_name("10.3.0", "Orin", "8.7") == "10.3.0_orin_sm87"
    assert (
        ep.target_folder_name("10.13.3.9", "NVIDIA H100 80GB HBM3", (9, 0))
        == "10.13.3.9_nvidia-h100-80gb-hbm3_sm90"
    )
    assert ep.sm_tag((12, 0)) == "sm120"
    for cc in ("8.7", (8, 7), "sm87", "87", "sm_87"):
        assert ep.normalize_cc(cc) == "8.7"
    with pytest.raises(ValueError):
        ep.normalize_cc("eight")
    assert ep.engine_file_name("fp16") == "model.fp16.engine"
    assert ep.engine_file_name("int8", dla_core=1) == "model.int8.dla1.engine"
    assert ep.sidecar_path_for("e/model.fp16.engine").name == "model.fp16.engine.json"
    assert ep.build_log_path_for("e/model.fp16.engine").name == "model.fp16.engine.build.log"
    with pytest.raises(ValueError, match="precision"):
        ep.engine_file_name("fp8")


def test_engine_key_differs_when_any_input_or_flag_differs() -> None:
    key = ep.EngineKey(TRT_VERSION, "Orin", "8.7", "fp16", "a" * 64, ep.BuildFlags(32))
    same = ep.EngineKey(TRT_VERSION, "Orin", (8, 7), "fp16", "a" * 64, ep.BuildFlags(32))
    assert key == same and key.digest() == same.digest() and key.differences(same) == []
    variants = {
        "TensorRT version": replace(key, trt_version="10.4.0"),
        "GPU": replace(key, gpu_name="NVIDIA H100"),
        "compute capability": replace(key, compute_capability="9.0"),
        "precision": replace(key, precision="int8"),
        "ONNX sha256": replace(key, onnx_sha256="c" * 64),
        "max_batch": replace(key, flags=ep.BuildFlags(16)),
        "workspace_mb": replace(key, flags=ep.BuildFlags(32, workspace_mb=512)),
        "opt_batch": replace(key, flags=ep.BuildFlags(32, opt_batch=4)),
        "tf32": replace(key, flags=ep.BuildFlags(32, tf32=True)),
        "builder_optimization_level": replace(
            key, flags=ep.BuildFlags(32, builder_optimization_level=5)
        ),
        "batch": replace(key, flags=ep.BuildFlags.create(batch=32)),
    }
    digests = {key.digest()}
    for label, other in variants.items():
        digests.add(other.digest())
        diffs = other.differences(key)
        assert any(d.startswith(label) for d in diffs), (label, diffs)
    assert len(digests) == len(variants) + 1
    dla = replace(key, flags=ep.BuildFlags.create(dla_core=0))
    assert any(d.startswith("dla_core") for d in dla.differences(key))
    assert key.engine_path("engines") == Path("engines/10.3.0_orin_sm87/model.fp16.engine")


def test_build_flags_static_batch_and_dla_rules() -> None:
    dla = ep.BuildFlags.create(dla_core=1)
    assert (dla.batch, dla.max_batch, dla.opt_batch, dla.static) == (1, 1, 1, True)
    assert ep.BuildFlags.create(dla_core=0, batch=4).max_batch == 4
    with pytest.raises(ValueError, match="static shapes only"):
        ep.BuildFlags(max_batch=8, dla_core=0)  # a DLA engine without a static batch
    with pytest.raises(ValueError, match="static shapes only"):
        ep.BuildFlags.create(max_batch=32, dla_core=0)
    with pytest.raises(ValueError, match="--opt-batch"):
        ep.BuildFlags.create(max_batch=4, opt_batch=8)
    with pytest.raises(ValueError, match="--batch 2 builds a static engine"):
        ep.BuildFlags.create(max_batch=8, batch=2)
    with pytest.raises(ValueError, match="0..5"):
        ep.BuildFlags.create(builder_optimization_level=7)
    assert not ep.BuildFlags().tf32  # fp32 means fp32 unless asked
    old = {"max_batch": 32, "workspace_mb": None, "dla_core": None}  # a sidecar from before
    assert ep.BuildFlags.from_dict(old).tf32  # those builds left TensorRT's TF32 on
    assert ep.BuildFlags.from_dict(dla.to_dict()) == dla


def test_profile_shapes() -> None:
    p = ep.profile_shapes(SPEC, 32)
    assert (p.min, p.opt, p.max) == ((1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    assert ep.profile_shapes(SPEC, 4).opt[0] == 4
    assert ep.profile_shapes(SPEC, 32, opt_batch=2).opt[0] == 2
    one = ep.profile_shapes(SPEC, 1)
    assert one.min == one.opt == one.max == (1, 3, 16, 16)
    static = ep.profile_for(SPEC, ep.BuildFlags.create(batch=4))
    assert static.min == static.opt == static.max == (4, 3, 16, 16)
    assert ep.ProfileShapes.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        ep.profile_shapes(SPEC, 0)
    with pytest.raises(ValueError, match="--max-batch"):
        ep.BuildFlags(max_batch=0)


def test_timing_caches_are_per_tensorrt_version_and_gpu(machine_cache: Path) -> None:
    path = ep.timing_cache_path("engines", TRT_VERSION, "Orin", "8.7")
    assert path == Path("engines/10.3.0_orin_sm87/timing.cache")
    assert ep.timing_cache_path("engines", "10.4.0", "Orin", "8.7") != path
    assert ep.timing_cache_path("engines", TRT_VERSION, "NVIDIA H100", "9.0") != path
    shared = ep.machine_timing_cache_path(TRT_VERSION, "Orin", "8.7")
    assert shared == machine_cache / "tensorrt" / "10.3.0_orin_sm87" / "timing.cache"


def test_precision_and_default_root_from_paths(run_dir: Path, tmp_path: Path) -> None:
    assert ep.onnx_precision("x/model.int8.onnx") == "int8"
    assert ep.onnx_precision("x/model.onnx") == "fp32"
    assert ep.default_engines_root(run_dir / "export" / "model.fp16.onnx") == run_dir / "engines"
    assert ep.default_engines_root(tmp_path / "m.onnx") == tmp_path / "engines"


# ---------------------------------------------------------------- sidecar, compatibility, reuse


def test_sidecar_round_trip(tmp_path: Path) -> None:
    side = make_sidecar(
        build_flags=ep.BuildFlags.create(workspace_mb=256, dla_core=0),
        parity={"measured": True, "verdict": {"status": "fail", "reasons": ["agreement 0.5"]}},
        placement={"dla_core": 0, "network_layers": 3},
        warnings=["w"],
    )
    assert ep.EngineSidecar.from_dict(json.loads(json.dumps(side.to_dict()))) == side
    path = side.save(tmp_path / "model.fp16.engine.json")
    loaded = ep.EngineSidecar.load(path)
    assert loaded == side and loaded.spec.input_size == SIZE
    assert loaded.parity_failed == ["agreement 0.5"] and make_sidecar().parity_failed == []
    assert json.loads(path.read_text())["key"] == side.key().digest()
    newer = {**side.to_dict(), "format_version": ep.SIDECAR_VERSION + 1}
    with pytest.raises(ep.SidecarError, match="upgrade leukedge"):
        ep.EngineSidecar.from_dict(newer)
    with pytest.raises(ep.SidecarError, match="not a leukedge engine sidecar"):
        ep.EngineSidecar.from_dict({"format": "other"})
    with pytest.raises(ep.SidecarError, match="has no sidecar"):
        ep.load_sidecar_for(tmp_path / "lonely.engine")


def test_compatible_engine_passes() -> None:
    ep.check_engine_compatible(make_sidecar(), TRT_VERSION, "Orin", (8, 7))


@pytest.mark.parametrize(
    ("trt_version", "gpu", "cc", "needle"),
    [
        ("10.7.0", "Orin", "8.7", "TensorRT version: built with 10.3.0, this machine has 10.7.0"),
        (TRT_VERSION, "NVIDIA H100", "8.7", "GPU: built on Orin, this machine has NVIDIA H100"),
        (TRT_VERSION, "Orin", "9.0", "built for sm87 (8.7), this GPU is sm90 (9.0)"),
    ],
)
def test_mismatched_engine_is_refused(trt_version: str, gpu: str, cc: str, needle: str) -> None:
    with pytest.raises(ep.EngineMismatch) as info:
        ep.check_engine_compatible(make_sidecar(), trt_version, gpu, cc, "e/model.fp16.engine")
    message = str(info.value)
    assert needle in message
    assert "e/model.fp16.engine" in message
    assert "leukedge build-engine runs/demo --precision fp16 --max-batch 32" in message


def test_rebuild_command_for_bare_onnx_and_flags() -> None:
    side = make_sidecar(
        onnx_path="models/my model.int8.onnx",
        precision="int8",
        build_flags=ep.BuildFlags.create(
            workspace_mb=512, dla_core=1, batch=4, builder_optimization_level=4
        ),
    )
    assert ep.rebuild_command(side) == (
        "leukedge build-engine 'models/my model.int8.onnx' --precision int8 "
        "--batch 4 --workspace-mb 512 --dla-core 1 --builder-optimization-level 4"
    )
    tf32 = make_sidecar(build_flags=ep.BuildFlags(8, opt_batch=2, tf32=True))
    assert ep.rebuild_command(tf32).endswith("--max-batch 8 --opt-batch 2 --tf32")


def test_reuse_decision(tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    plan = b"serialized engine"
    side = make_sidecar(engine_sha256=hashlib.sha256(plan).hexdigest(), engine_bytes=len(plan))
    key = side.key()
    assert not ep.reuse_decision(engine, key)
    engine.write_bytes(plan)
    assert "no sidecar" in ep.reuse_decision(engine, key).reason
    side.save(ep.sidecar_path_for(engine))
    assert ep.reuse_decision(engine, key)
    changed = ep.reuse_decision(engine, replace(key, onnx_sha256="c" * 64))
    assert not changed and "ONNX sha256" in changed.reason
    flags = ep.reuse_decision(engine, replace(key, flags=ep.BuildFlags(8)))
    assert not flags and "max_batch: engine has 32, wanted 8" in flags.reason
    tf32 = ep.reuse_decision(engine, replace(key, flags=ep.BuildFlags(32, tf32=True)))
    assert not tf32 and "tf32: engine has False, wanted True" in tf32.reason
    engine.write_bytes(b"Serialized engine")  # same size, other bytes
    assert "sha256" in ep.reuse_decision(engine, key).reason


def test_layer_placement_and_its_warnings() -> None:
    info = {"Layers": [{"Name": "{ForeignNode[conv...relu]}"}, {"Name": "pool"}, "flatten"]}
    placed = ep.layer_placement(0, [("conv", True), ("relu", True), ("pool", False)], info)
    assert placed["network_layers_dla_capable"] == 2 and placed["engine_layers_dla"] == 1
    (partial,) = ep.placement_warnings(placed)
    assert "1 of 3 layers cannot run on the DLA" in partial and "pool" in partial
    none = ep.layer_placement(1, [("pool", False)], json.dumps({"Layers": ["pool"]}))
    (warning,) = ep.placement_warnings(none)
    assert "no layer runs on DLA core 1" in warning
    assert ep.layer_placement(0, [("conv", True)], "not json")["network_layers"] == 1


# ---------------------------------------------------------------- the real API surfaces


def test_api_surfaces_hold_what_tensorrt_11_removed() -> None:
    old, new = load_api("10.3"), load_api("11.4")
    assert old["tensorrt_version"] == "10.3.0" and new["tensorrt_version"].startswith("11.4")
    for flag in ("FP16", "INT8"):
        assert flag in old["enums"]["BuilderFlag"] and flag not in new["enums"]["BuilderFlag"]
    assert "EXPLICIT_BATCH" not in new["enums"]["NetworkDefinitionCreationFlag"]
    assert "IInt8EntropyCalibrator2" in old["module"]
    assert "IInt8EntropyCalibrator2" not in new["module"]
    for api in (old, new):  # what leukedge relies on, in both
        assert {"TF32", "GPU_FALLBACK"} <= set(api["enums"]["BuilderFlag"])
        assert "STRONGLY_TYPED" in api["enums"]["NetworkDefinitionCreationFlag"]
        assert {"DLA_core", "num_DLA_cores"} <= set(api["classes"]["Runtime"])
        assert {"can_run_on_DLA", "clear_flag", "profiling_verbosity"} <= set(
            api["classes"]["IBuilderConfig"]
        )
        assert "execute_async_v3" in api["classes"]["IExecutionContext"]


def _trt_uses(path: Path) -> set[tuple[str, ...]]:
    """Every ``trt.A``, ``trt.A.B`` and ``trt.A.B.C`` chain written in a source file."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "trt" and parts:
            chains.add(tuple(parts))
    return chains


@pytest.mark.parametrize("version", API_VERSIONS)
def test_source_names_only_tensorrt_that_exists(version: str) -> None:
    """Each ``trt.X.Y`` in leukedge's source is in the real API of 10.3 and of 11.4."""
    api = load_api(version)
    classes = {**api["classes"], **api["enums"]}
    files = [
        REPO / "leukedge/export/tensorrt.py",
        REPO / "leukedge/export/trt_build.py",
        REPO / "leukedge/runtime/backends/trt.py",
    ]
    used = set().union(*(_trt_uses(f) for f in files))
    assert ("BuilderFlag", "TF32") in used and ("Runtime",) in used
    for chain in used:
        head = chain[0]
        assert head in api["module"] or head == "__version__", f"trt.{head} ({version})"
        if len(chain) >= 2 and head in classes:
            nested = f"{head}.{chain[1]}"
            member_ok = chain[1] in classes[head] or nested in classes
            assert member_ok, f"trt.{'.'.join(chain)} does not exist in TensorRT {version}"
            if len(chain) == 3 and nested in classes:
                assert chain[2] in classes[nested], f"trt.{'.'.join(chain)} ({version})"


@pytest.mark.parametrize("version", API_VERSIONS)
def test_the_fake_refuses_names_the_real_api_lacks(version: str) -> None:
    trt = FakeTensorRT(version).module
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    config.DLA_core = 1
    with pytest.raises(AttributeError):
        config.dla_core = 1
    with pytest.raises(AttributeError):
        _ = trt.BuilderFlag.TF16
    with pytest.raises(AttributeError):
        _ = trt.NotAClass
    if version == "11.4":
        with pytest.raises(AttributeError):
            _ = trt.BuilderFlag.FP16
        with pytest.raises(AttributeError):
            _ = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
        with pytest.raises(AttributeError):
            _ = trt.IInt8EntropyCalibrator2
    assert trt.Runtime(trt.Logger(trt.Logger.WARNING)).DLA_core == 0


def _qdq_model(weight: np.ndarray, zero: np.ndarray | None, axis: int, bias_int32: bool):
    """input -> Q/DQ -> Conv(DQ(weight), DQ?(bias)) -> output: one quantized conv."""
    scale = np.full(weight.shape[0] if zero is None or zero.size > 1 else 1, 0.1, np.float32)
    inits = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(scale if scale.size > 1 else scale[0], "w_scale"),
        numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(np.int8(0), "x_zero"),
    ]
    w_inputs = ["w_q", "w_scale"]
    if zero is not None:
        inits.append(numpy_helper.from_array(zero, "w_zero"))
        w_inputs.append("w_zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", w_inputs, ["w"], axis=axis),
    ]
    conv_inputs = ["xd", "w"]
    if bias_int32:
        inits += [
            numpy_helper.from_array(np.zeros(weight.shape[0], np.int32), "b_q"),
            numpy_helper.from_array(np.full(weight.shape[0], 0.005, np.float32), "b_scale"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["output"]))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_fake_parser_applies_tensorrts_qdq_rules() -> None:
    w = np.ones((4, 3, 3, 3), np.int8)
    good = _qdq_model(w, np.zeros(4, np.int8), axis=0, bias_int32=False)
    assert qdq_errors(good) == []
    bias = qdq_errors(_qdq_model(w, np.zeros(4, np.int8), 0, bias_int32=True))
    assert any("int32" in e and "bias must stay float" in e for e in bias), bias
    axis = qdq_errors(_qdq_model(w, np.zeros(4, np.int8), axis=1, bias_int32=False))
    assert any("per-channel axis 1" in e for e in axis)
    asym = qdq_errors(_qdq_model(w, np.full(4, 3, np.int8), 0, bias_int32=False))
    assert any("symmetric" in e for e in asym)
    unsigned = qdq_errors(_qdq_model(w.astype(np.uint8), np.zeros(4, np.uint8), 0, False))
    assert any("uint8" in e for e in unsigned)


# ---------------------------------------------------------------- without TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def _assert_install_hint(message: str) -> None:
    assert "pip install 'leukedge[trt-cu12]'" in message and "'leukedge[trt-cu13]'" in message
    assert "sudo apt install python3-libnvinfer" in message
    assert "--system-site-packages" in message
    assert "built on the device that will run them" in message


def test_build_engines_without_tensorrt(no_tensorrt: None, run_dir: Path) -> None:
    with pytest.raises(ep.TensorRTUnavailable) as info:
        tx.build_engines(run_dir, log=_quiet)
    _assert_install_hint(str(info.value))
    ok, reason = gpu_probe.trt_available()
    assert not ok and "TensorRT is not installed" in reason


def test_backend_without_tensorrt(no_tensorrt: None, tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ep.TensorRTUnavailable) as info:
        TrtBackend(engine)
    _assert_install_hint(str(info.value))


def test_tensorrt_without_gpu(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT().module)
    monkeypatch.setattr(gpu_probe, "_probe_gpu", lambda device=0: (None, "cuda-python: no device"))
    with pytest.raises(ep.TensorRTUnavailable, match="no NVIDIA GPU could be found"):
        tx.build_engines(run_dir, log=_quiet)


def test_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTensorRT()
    fake.module.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    ok, reason = gpu_probe.trt_available()
    assert not ok and "TensorRT 8.6.1 is too old" in reason


def test_runtime_module_imports_without_torch_tensorrt_or_cuda() -> None:
    code = (
        "import sys, leukedge.runtime.backends.trt, leukedge.export.tensorrt\n"
        "bad = [m for m in ('torch', 'tensorrt', 'pycuda', 'cuda') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolve_onnx_files(run_dir: Path) -> None:
    found = tx.resolve_onnx_files(run_dir)
    assert [p for _, p in found] == ["fp16", "fp32"]  # int8 not exported: skipped
    with pytest.raises(ep.EngineBuildError, match="model.int8.onnx not found"):
        tx.resolve_onnx_files(run_dir, ["int8"])
    with pytest.raises(ep.EngineBuildError, match="unknown precision"):
        tx.resolve_onnx_files(run_dir, ["fp8"])
    single = run_dir / "export" / "model.fp16.onnx"
    assert tx.resolve_onnx_files(single) == [(single, "fp16")]
    with pytest.raises(ep.EngineBuildError, match="is a fp16 model"):
        tx.resolve_onnx_files(single, ["int8"])
    empty = run_dir.parent / "empty"
    (empty / "export").mkdir(parents=True)
    with pytest.raises(ep.EngineBuildError, match="leukedge export"):
        tx.resolve_onnx_files(empty)
    with pytest.raises(ep.EngineBuildError, match="does not exist"):
        tx.resolve_onnx_files(run_dir.parent / "missing")


# ---------------------------------------------------------------- building, both versions


def test_build_engine_strongly_typed_profile_caches_log_and_sidecar(
    fake: FakeTensorRT, run_dir: Path, machine_cache: Path
) -> None:
    trt = fake.trt
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    result = tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    (builder,) = fake.builders
    typed = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert builder._network._flags == 1 << int(typed)
    (profile,) = builder._config._profiles
    assert profile._shapes == ("input", (1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    assert builder._config._flags == set()  # no precision flag, and TF32 cleared
    assert builder._config._pools == {}  # no --workspace-mb: TensorRT's default

    folder = run_dir / "engines" / folder_of(fake)
    assert result.engine_path == folder / "model.fp16.engine" and not result.reused
    assert result.timing_cache == folder / "timing.cache"
    assert result.shared_timing_cache == machine_cache / "tensorrt" / folder.name / "timing.cache"
    for cache in (result.timing_cache, result.shared_timing_cache):
        assert cache.read_bytes().startswith(b"TCACHE")
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.fp16.engine",
        "model.fp16.engine.build.log",
        "model.fp16.engine.json",
        "timing.cache",
    ]
    log = result.build_log.read_text()
    assert "[INFO] building a fake engine" in log and "VERBOSE" not in log
    side = json.loads(result.sidecar_path.read_text())
    assert side["spec"]["input_size"] == SIZE and side["precision"] == "fp16"
    assert side["tensorrt_version"] == fake.version_string and side["gpu_name"] == GPU.name
    assert side["compute_capability"] == "8.7"
    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["build_flags"] == {
        "max_batch": 32,
        "workspace_mb": None,
        "dla_core": None,
        "opt_batch": None,
        "batch": None,
        "tf32": False,
        "builder_optimization_level": None,
    }
    assert side["profile"]["max"] == [32, 3, 16, 16]
    assert side["engine_sha256"] == sha256_file(result.engine_path)
    assert side["leukedge_version"] and side["built_at"] and side["build_seconds"] >= 0
    assert side["build_log"] == "model.fp16.engine.build.log"
    assert side["parity"] == {"measured": False, "reason": "no validation images given"}

    again = tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    assert again.reused and len(fake.builders) == 1  # cache hit: TensorRT not called
    forced = tx.build_engine(onnx_path, max_batch=32, force=True, log=_quiet, verbose=True)
    assert not forced.reused and len(fake.builders) == 2
    assert fake.builders[1]._config._cache._data.startswith(b"TCACHE")  # saved cache was loaded
    assert "[VERBOSE] tactic timings" in forced.build_log.read_text()
    other = tx.build_engine(onnx_path, max_batch=4, log=_quiet)
    assert not other.reused and fake.builders[2]._config._profiles[0]._shapes[2][0] == 4


def test_build_options_reach_tensorrt(fake: FakeTensorRT, run_dir: Path) -> None:
    trt = fake.trt
    flags = ep.BuildFlags.create(
        max_batch=16, opt_batch=2, tf32=True, builder_optimization_level=5, workspace_mb=64
    )
    tx.build_engine(run_dir / "export" / "model.fp32.onnx", flags=flags, log=_quiet)
    config = fake.builders[-1]._config
    assert config._flags == {trt.BuilderFlag.TF32}  # --tf32: left on
    assert config.builder_optimization_level == 5
    assert config._pools == {trt.MemoryPoolType.WORKSPACE: 64 << 20}
    assert config._profiles[0]._shapes[1:] == ((1, 3, 16, 16), (2, 3, 16, 16), (16, 3, 16, 16))
    tx.build_engine(run_dir / "export" / "model.fp32.onnx", log=_quiet)
    assert trt.BuilderFlag.TF32 not in fake.builders[-1]._config._flags  # fp32 is fp32


def test_machine_timing_cache_is_shared_between_runs(
    fake: FakeTensorRT, run_dir: Path, tmp_path: Path
) -> None:
    tx.build_engine(run_dir / "export" / "model.fp16.onnx", log=_quiet)
    second = tmp_path / "second.fp16.onnx"
    write_onnx(second, W * 3)
    result = tx.build_engine(second, out_dir=tmp_path / "other", timing_cache=None, log=_quiet)
    assert result.timing_cache is None and result.shared_timing_cache.is_file()
    assert fake.builders[-1]._config._cache._data.startswith(b"TCACHE")  # the first run's
    tx.build_engine(second, out_dir=tmp_path / "x", timing_cache=None, shared_timing_cache=None)
    assert fake.builders[-1]._config._cache is None  # no cache at all: TensorRT's own


@pytest.mark.parametrize("corrupt", ["none", "raises"])
def test_corrupt_timing_cache_starts_afresh(
    fake: FakeTensorRT, run_dir: Path, corrupt: str
) -> None:
    fake.corrupt_cache = corrupt
    cache = run_dir / "engines" / folder_of(fake) / "timing.cache"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00garbage from a crash")
    messages: list[str] = []
    result = tx.build_engine(
        run_dir / "export" / "model.fp16.onnx", shared_timing_cache=None, log=messages.append
    )
    assert result.engine_path.is_file()
    assert any("is unreadable" in m and "fresh one" in m for m in messages), messages
    assert cache.read_bytes().startswith(b"TCACHE")  # replaced by a good one


def test_one_failed_precision_does_not_stop_the_others(fake: FakeTensorRT, run_dir: Path) -> None:
    bad = _qdq_model(np.ones((2, 3, 3, 3), np.int8), np.zeros(2, np.int8), 0, bias_int32=True)
    helper.set_model_props(bad, {ONNX_METADATA_KEY: SPEC.to_json()})
    onnx.save(bad, str(run_dir / "export" / "model.int8.onnx"))
    messages: list[str] = []
    outcomes = tx.build_engines(run_dir, workspace_mb=256, log=messages.append)
    assert [(o.precision, o.status) for o in outcomes] == [
        ("fp16", "built"),
        ("int8", "failed"),
        ("fp32", "built"),
    ]
    assert (
        "could not parse" in outcomes[1].message and "bias must stay float" in outcomes[1].message
    )
    assert any(m.startswith("int8: failed") for m in messages)
    out = run_dir.parent / "elsewhere"
    (one,) = tx.build_engines(run_dir, ["fp32"], out=out, timing_cache=None, log=_quiet)
    assert one.result.engine_path.parent.parent == out and one.result.timing_cache is None
    assert not (one.result.engine_path.parent / "timing.cache").exists()


def test_dla_build_is_static_fp16_int8_and_records_the_placement(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path
) -> None:
    fake = install(monkeypatch, FakeTensorRT("10.3", dla_cores=2), ORIN)
    trt = fake.trt
    write_conv_onnx(run_dir / "export" / "model.int8.onnx")
    outcomes = tx.build_engines(run_dir, dla_core=1, log=_quiet)
    status = {o.precision: o.status for o in outcomes}
    assert status == {"fp16": "built", "int8": "built", "fp32": "skipped"}
    config = fake.builders[0]._config
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert config._flags == {trt.BuilderFlag.GPU_FALLBACK}
    assert config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert config._profiles[0]._shapes[1:] == ((1, 3, 16, 16),) * 3  # static, batch 1
    fp16, int8 = outcomes[0].result, outcomes[1].result
    assert fp16.engine_path.name == "model.fp16.dla1.engine"
    assert fp16.sidecar.placement["engine_layers_dla"] == 0  # pool, flatten, matmul: GPU only
    assert any("no layer runs on DLA core 1" in w for w in fp16.sidecar.warnings)
    placed = int8.sidecar.placement
    assert placed["network_layers_dla_capable"] == 2 and placed["engine_layers_dla"] == 1
    assert placed["engine_layer_names"][0] == "{ForeignNode[conv...relu]}"
    with pytest.raises(ep.EngineBuildError, match="DLA runs FP16 and INT8 only"):
        tx.build_engine(run_dir / "export" / "model.fp32.onnx", dla_core=0, log=_quiet)
    (refused,) = tx.build_engines(run_dir, ["fp32"], dla_core=0, log=_quiet)
    assert refused.status == "failed" and "FP16 and INT8 only" in refused.message
    with pytest.raises(ep.EngineBuildError, match="2 DLA core.*after 10.7 on x86 has no DLA"):
        tx.build_engine(run_dir / "export" / "model.fp16.onnx", dla_core=2, log=_quiet)


def test_fake_dla_refuses_a_dynamic_profile(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    """What the static profile prevents: TensorRT would put every layer on the GPU."""
    fake = install(monkeypatch, FakeTensorRT("11.4", dla_cores=1), ORIN)
    trt = fake.trt
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(strongly_typed_flags(trt))
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(
        str(run_dir / "export" / "model.fp16.onnx")
    )
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    config.add_optimization_profile(profile)
    config.default_device_type = trt.DeviceType.DLA
    assert builder.build_serialized_network(network, config) is None


@pytest.mark.parametrize("failure", ["returns_none", "raises"])
def test_failed_build_leaves_only_its_log(fake: FakeTensorRT, run_dir: Path, failure: str) -> None:
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    if failure == "raises":
        fake.build_raises = True
        with pytest.raises(RuntimeError, match="builder crashed"):
            tx.build_engine(onnx_path, log=_quiet)
    else:
        fake.build_returns_none = True
        with pytest.raises(ep.EngineBuildError, match="could not build an engine.*build.log"):
            tx.build_engine(onnx_path, log=_quiet)
    folder = run_dir / "engines" / folder_of(fake)
    assert sorted(p.name for p in folder.iterdir()) == ["model.fp16.engine.build.log"]


def test_failed_rebuild_keeps_the_previous_engine(fake: FakeTensorRT, run_dir: Path) -> None:
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    first = tx.build_engine(onnx_path, log=_quiet)
    before = first.engine_path.read_bytes()
    fake.build_raises = True
    with pytest.raises(RuntimeError):
        tx.build_engine(onnx_path, force=True, log=_quiet)
    assert first.engine_path.read_bytes() == before and first.sidecar_path.is_file()
    assert [p.name for p in first.engine_path.parent.iterdir() if p.name.startswith(".")] == []


def test_parse_errors_are_listed(fake: FakeTensorRT, run_dir: Path) -> None:
    fake.parse_errors = ["node Foo: unsupported operator", "node Bar: bad shape"]
    with pytest.raises(ep.EngineBuildError) as info:
        tx.build_engine(run_dir / "export" / "model.fp16.onnx", log=_quiet)
    assert "could not parse" in str(info.value)
    assert "  - node Foo: unsupported operator\n  - node Bar: bad shape" in str(info.value)


def test_fixed_batch_onnx_needs_a_matching_batch(fake: FakeTensorRT, tmp_path: Path) -> None:
    onnx_path = write_onnx(tmp_path / "model.fp32.onnx", W, batch=1)
    with pytest.raises(ep.EngineBuildError, match="fixed batch size of 1.*--batch 1"):
        tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    result = tx.build_engine(onnx_path, flags=ep.BuildFlags.create(batch=1), log=_quiet)
    assert result.sidecar.profile.max == (1, 3, 16, 16)


# ---------------------------------------------------------------- parity, export, the CLI


def test_engines_record_their_parity_and_a_failing_one_leaves_auto(
    fake: FakeTensorRT, run_with_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leukedge.runtime.backends.resolve import OpenOptions, _trt_engine_candidates

    outcomes = tx.build_engines(run_with_data, ["fp16", "fp32"], log=_quiet)
    for o in outcomes:
        parity = o.result.sidecar.parity
        assert parity["measured"] and parity["verdict"]["status"] == "pass", parity
        assert parity["reference"] == "onnxruntime fp32 CPU: model.fp32.onnx"
        assert parity["images"].endswith(f"val images of {run_with_data}") and parity["n"] > 0
    # fp16 (2 W) agrees with fp32 (W) in argmax; an int8 engine that swaps classes does not
    fake.output_transform = lambda logits: logits[:, ::-1]
    (int8,) = tx.build_engines(run_with_data, ["int8"], parity_images=8, log=_quiet)
    parity = int8.result.sidecar.parity
    assert parity["verdict"]["status"] == "fail" and parity["n"] <= 8
    assert int8.result.sidecar.parity_failed
    unavailable: list[str] = []
    auto = _trt_engine_candidates(run_with_data, ENGINE_AUTO_ORDER, OpenOptions(), unavailable)
    assert [c.name for c in auto] == ["trt-fp16", "trt-fp32"]
    assert any("trt-int8: left out of --backend auto" in u for u in unavailable)
    named = _trt_engine_candidates(run_with_data, ("int8",), OpenOptions(), [])
    assert [c.name for c in named] == ["trt-int8"]  # naming it still runs it


def test_parity_without_data_is_reported_not_fatal(fake: FakeTensorRT, run_dir: Path) -> None:
    (fp16,) = tx.build_engines(run_dir, ["fp16"], log=_quiet)
    parity = fp16.result.sidecar.parity
    assert not parity["measured"] and "no validation images" in parity["reason"]
    (off,) = tx.build_engines(run_dir, ["fp32"], parity=False, log=_quiet)
    assert off.result.sidecar.parity == {"measured": False, "reason": "--no-parity"}


def add_parity_set(run: Path, spec: ModelSpec = SPEC, n: int = 12) -> Path:
    """A parity set whose "recorded PyTorch" logits are the fp32 ONNX file's, in export.json."""
    from leukedge.artifacts import write_export_record
    from leukedge.export.parity import onnx_logits
    from leukedge.runtime.parityset import ParitySet, input_digests, pack_crops, save_parity_set

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 255, (SIZE + 8, SIZE + 4, 3), dtype=np.uint8) for _ in range(n)]
    packed, sizes = pack_crops(crops)
    ps = ParitySet(
        crops=packed,
        sizes=sizes,
        labels=np.arange(n, dtype=np.int64) % 2,
        subjects=[None] * n,
        names=[f"c{i}.png" for i in range(n)],
        splits=["val"] * n,
        logits=np.zeros((n, 2), np.float32),
        digests=np.zeros((n, 16), np.uint8),
        meta={
            "classes": spec.classes,
            "input_size": SIZE,
            "side": SIZE + 4,
            "versions": {"torch": "2.9"},
        },
    )
    x = ps.inputs(spec)
    ps.logits, ps.digests = (
        onnx_logits(run / "export" / "model.fp32.onnx", x, spec),
        input_digests(x),
    )
    path = run / "export" / "parity_set.npz"
    sha = save_parity_set(path, ps)
    write_export_record(run / "export", {"parity_set": {"file": path.name, "sha256": sha}})
    return path


def test_engines_are_measured_on_the_parity_set_without_data(
    fake: FakeTensorRT, run_dir: Path
) -> None:
    """A Jetson with spec.json and export/ only: parity against the recorded PyTorch logits."""
    add_parity_set(run_dir)
    assert not (run_dir / "split.json").exists()
    for o in tx.build_engines(run_dir, ["fp32", "fp16"], log=_quiet):
        parity = o.result.sidecar.parity
        assert parity["measured"] and parity["verdict"]["status"] == "pass", parity
        assert parity["reference"] == "torch fp32 recorded at export (torch 2.9): parity_set.npz"
        assert parity["images"] == f"12 parity-set crops (val+test) of {run_dir / 'export'}"
        assert parity["n"] == 12
    fake.output_transform = lambda logits: logits[:, ::-1]
    (fp16,) = tx.build_engines(run_dir, ["fp16"], force=True, parity_images=6, log=_quiet)
    parity = fp16.result.sidecar.parity
    assert parity["n"] == 6 and parity["verdict"]["status"] == "fail"


def test_a_changed_parity_set_is_not_measured_against(fake: FakeTensorRT, run_dir: Path) -> None:
    path = add_parity_set(run_dir)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # the file no longer has the sha256 export.json recorded
    path.write_bytes(bytes(data))
    messages: list[str] = []
    (fp32,) = tx.build_engines(run_dir, ["fp32"], log=messages.append)
    parity = fp32.result.sidecar.parity
    assert fp32.status == "built" and not parity["measured"]
    assert "changed or replaced after export" in parity["reason"]
    assert any("parity not measured" in m for m in messages)


def test_build_engine_right_after_train_exports_first(
    fake: FakeTensorRT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leukedge.export

    run = tmp_path / "runs" / "fresh"
    run.mkdir(parents=True)
    SPEC.save(run / "spec.json")
    monkeypatch.setattr(tx, "_torch_available", lambda: False)
    with pytest.raises(ep.EngineBuildError, match="on the training machine and copy the whole"):
        tx.build_engines(run, log=_quiet)
    calls: list[tuple] = []

    def export_run(run_dir, precisions, *args, **kwargs):
        calls.append((Path(run_dir), list(precisions)))
        write_onnx(Path(run_dir) / "export" / "model.fp16.onnx", W)
        return {}

    monkeypatch.setattr(tx, "_torch_available", lambda: True)
    monkeypatch.setattr(leukedge.export, "export_run", export_run, raising=False)
    messages: list[str] = []
    (built,) = tx.build_engines(run, log=messages.append)
    assert calls == [(run, ["fp32", "fp16", "int8"])] and built.status == "built"
    assert any("exporting first" in m for m in messages)


def test_cli_reports_every_precision_and_exits_1_on_a_failure(
    fake: FakeTensorRT, run_with_data: Path
) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    onnx.save(
        _qdq_model(np.ones((2, 3, 3, 3), np.int8), np.zeros(2, np.int8), 0, True),
        str(run_with_data / "export" / "model.int8.onnx"),
    )
    fake.output_transform = lambda logits: logits[:, ::-1]  # every engine disagrees
    runner = CliRunner()
    result = runner.invoke(app, ["build-engine", str(run_with_data), "--parity-images", "6"])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "int8 failed" in out and "bias must stay float" in out
    assert "fp16: left out of --backend auto" in out and "--backend trt-fp16" in out
    assert "TensorRT build log" in out
    bad = runner.invoke(
        app, ["build-engine", str(run_with_data), "--dla-core", "0", "--max-batch", "8"]
    )
    assert bad.exit_code == 2 and "static shapes only" in " ".join(bad.output.split())


# ---------------------------------------------------------------- the backend


@pytest.fixture
def built(fake: FakeTensorRT, run_dir: Path) -> tx.BuildResult:
    return tx.build_engine(run_dir / "export" / "model.fp16.onnx", max_batch=8, log=_quiet)


@pytest.mark.parametrize("input_dtype", ["float32", "float16"])
def test_backend_infers_within_the_profile(
    fake: FakeTensorRT, built: tx.BuildResult, input_dtype: str
) -> None:
    fake.input_dtype = input_dtype
    cuda = FakeCuda(fake)
    backend = TrtBackend(built.engine_path, cuda=cuda)
    assert (backend.name, backend.precision, backend.max_batch) == ("trt-fp16", "fp16", 8)
    assert backend.spec == SPEC and backend.device == "cuda:0"
    rng = np.random.default_rng(0)
    for n in (1, 5, 8):
        x = rng.normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)
        expected = x.astype(input_dtype).astype(np.float32).mean(axis=(2, 3)) @ (W * 2)
        logits = backend.infer(x)
        assert logits.dtype == np.float32 and logits.shape == (n, 2)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert backend.last_device_ms == 0.25
    with pytest.raises(BackendError, match="exceeds"):
        backend.infer(np.zeros((9, 3, SIZE, SIZE), np.float32))
    backend.synchronize()
    backend.close()
    backend.close()
    assert fake.memory == {} and cuda.host == [] and not cuda.closed  # shared cuda stays open
    with pytest.raises(BackendError, match="closed"):
        backend.infer(np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_backend_cuda_graph_replays_one_capture_per_shape(
    fake: FakeTensorRT, built: tx.BuildResult
) -> None:
    cuda = FakeCuda(fake)
    plain = TrtBackend(built.engine_path, cuda=FakeCuda(fake))
    graphed = TrtBackend(built.engine_path, cuda=cuda, cuda_graph=True)
    x = np.random.default_rng(1).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    want = plain.infer(x[:1])
    fake.plain_runs = fake.graph_runs = 0
    for _ in range(3):
        np.testing.assert_allclose(graphed.infer(x[:1]), want, rtol=1e-6)
    assert (fake.plain_runs, fake.graph_runs, cuda.graphs_alive) == (1, 3, 1)  # one warm-up
    np.testing.assert_allclose(graphed.infer(x), plain.infer(x), rtol=1e-6)  # new shape
    assert cuda.graphs_alive == 1 and graphed.cuda_graph_error is None
    graphed.close()
    plain.close()
    assert cuda.graphs_alive == 0


def test_backend_without_graph_capture_runs_plainly(
    fake: FakeTensorRT, built: tx.BuildResult
) -> None:
    cuda = FakeCuda(fake)

    def refuse(stream: object) -> None:
        raise cuda_mem.CudaError("cudaStreamBeginCapture failed: not supported")

    cuda.stream_begin_capture = refuse  # type: ignore[method-assign]
    backend = TrtBackend(built.engine_path, cuda=cuda, cuda_graph=True)
    x = np.ones((1, 3, SIZE, SIZE), np.float32)
    np.testing.assert_allclose(backend.infer(x), x.mean(axis=(2, 3)) @ (W * 2), rtol=1e-6)
    assert not backend.cuda_graph and "not supported" in backend.cuda_graph_error
    backend.close()


def test_dla_engine_loads_on_its_core(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    fake = install(monkeypatch, FakeTensorRT("11.4", dla_cores=2), ORIN)
    (fp16,) = tx.build_engines(run_dir, ["fp16"], dla_core=1, log=_quiet)
    backend = TrtBackend(fp16.result.engine_path, cuda=FakeCuda(fake, name="Orin"))
    assert backend._runtime.DLA_core == 1 and backend._engine._dla_core == 1
    assert backend.name == "trt-fp16-dla1" and backend.max_batch == backend.min_batch == 1
    backend.close()
    fake.dla_cores = 1  # the same engine on a device with one core
    with pytest.raises(ep.EngineMismatch, match="built for DLA core 1 but this device has 1"):
        TrtBackend(fp16.result.engine_path, cuda=FakeCuda(fake, name="Orin"))


def test_backend_refuses_engine_from_another_gpu(fake: FakeTensorRT, built: tx.BuildResult) -> None:
    cuda = FakeCuda(fake, name="NVIDIA H100 80GB HBM3", cc="9.0")
    with pytest.raises(ep.EngineMismatch) as info:
        TrtBackend(built.engine_path, cuda=cuda)
    message = str(info.value)
    assert "NVIDIA Fake GPU" in message and "NVIDIA H100 80GB HBM3" in message
    assert "leukedge build-engine" in message and "--precision fp16 --max-batch 8" in message
    assert fake.memory == {}


def test_backend_refuses_other_tensorrt_and_replaced_engine(
    fake: FakeTensorRT, built: tx.BuildResult
) -> None:
    real = fake.module.__version__
    fake.module.__version__ = "10.7.0"
    with pytest.raises(ep.EngineMismatch, match=f"built with {real}, this machine has 10.7.0"):
        TrtBackend(built.engine_path, cuda=FakeCuda(fake))
    fake.module.__version__ = real
    data = bytearray(built.engine_path.read_bytes())
    data[-2:] = b"!}"
    built.engine_path.write_bytes(bytes(data))
    with pytest.raises(ep.EngineMismatch, match="sha256 differs"):
        TrtBackend(built.engine_path, cuda=FakeCuda(fake))


def test_backend_needs_a_sidecar(fake: FakeTensorRT, tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"PLAN{}")
    with pytest.raises(ep.SidecarError, match="leukedge build-engine"):
        TrtBackend(engine, cuda=FakeCuda(fake))


def test_trt_available_and_find_engine(
    fake: FakeTensorRT, built: tx.BuildResult, run_dir: Path
) -> None:
    assert gpu_probe.trt_available() == (
        True,
        f"TensorRT {fake.version_string} on NVIDIA Fake GPU (sm87)",
    )
    assert trt_backend.find_engine(run_dir, "fp16") == built.engine_path
    assert trt_backend.find_engine(run_dir / "engines", "fp16") == built.engine_path
    with pytest.raises(BackendError, match="leukedge build-engine .* --precision int8"):
        trt_backend.find_engine(run_dir, "int8")


# ---------------------------------------------------------------- the CUDA binding adapter


def test_open_cuda_lists_every_binding_that_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(device: int):
        raise ImportError("no module", name="pycuda")

    def no_driver(device: int):
        raise cuda_mem.CudaError("cudaSetDevice failed: cudaErrorNoDevice")

    monkeypatch.setattr(cuda_mem, "OPENERS", {"cuda-python": no_driver, "pycuda": missing})
    with pytest.raises(cuda_mem.CudaUnavailable) as info:
        cuda_mem.open_cuda(0)
    message = str(info.value)
    assert "cuda-python: CudaError: cudaSetDevice failed" in message
    assert "pycuda: not installed (pycuda)" in message
    assert "cuda-python>=12,<13" in message


class _FakeRuntimeModule:
    """cuda-python's calling convention: (error, *results); pinned memory from ctypes."""

    class cudaError_t:
        cudaSuccess, cudaErrorMemoryAllocation = 0, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self) -> None:
        self.buffers: dict[int, object] = {}
        self.calls: list[tuple] = []

    def cudaSetDevice(self, device: int):
        return (self.cudaError_t.cudaSuccess,)

    def cudaMallocHost(self, nbytes: int):
        import ctypes

        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return (self.cudaError_t.cudaSuccess, ctypes.addressof(buf))

    def cudaFreeHost(self, ptr: int):
        del self.buffers[ptr]
        return (self.cudaError_t.cudaSuccess,)

    def cudaMalloc(self, nbytes: int):
        return (self.cudaError_t.cudaErrorMemoryAllocation, None)

    def cudaGetErrorString(self, err: int):
        return (self.cudaError_t.cudaSuccess, b"out of memory")

    def __getattr__(self, name: str):
        if not name.startswith(("cudaStream", "cudaGraph")):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name, *args))
            return (self.cudaError_t.cudaSuccess, f"{name}-handle")

        return call


def test_cuda_python_adapter_pinned_views_graphs_and_errors() -> None:
    rt = _FakeRuntimeModule()
    api = cuda_mem.CudaPythonApi(rt, 0)
    host = api.host_empty(6, np.float16)
    assert host.shape == (6,) and host.dtype == np.float16 and host.ctypes.data in rt.buffers
    host[:] = np.arange(6)
    assert host[:3].ctypes.data == host.ctypes.data  # a batch view starts at the buffer
    api.host_free(host)
    assert rt.buffers == {}
    with pytest.raises(cuda_mem.CudaError, match="cudaMalloc failed: .*out of memory"):
        api.malloc(1 << 40)
    api.stream_begin_capture("s")
    graph = api.stream_end_capture("s")
    graph_exec = api.graph_instantiate(graph)
    api.graph_launch(graph_exec, "s")
    api.graph_destroy(graph, graph_exec)
    assert [c[0] for c in rt.calls] == [
        "cudaStreamBeginCapture",
        "cudaStreamEndCapture",
        "cudaGraphInstantiate",
        "cudaGraphLaunch",
        "cudaGraphExecDestroy",
        "cudaGraphDestroy",
    ]
    assert rt.calls[0] == ("cudaStreamBeginCapture", "s", 1)
    assert rt.calls[2] == ("cudaGraphInstantiate", "cudaStreamEndCapture-handle", 0)


# ---------------------------------------------------------------- every model's INT8 export


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch",
    ["cnn", "resnet50", "vit-hybrid"],
)
def test_int8_export_of_every_model_parses_in_tensorrt(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's Q/DQ graph meets TensorRT's rules (int8 inputs, zero points 0, axes)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from leukedge.export.int8 import quantize_int8
    from leukedge.export.onnx_export import export_onnx
    from leukedge.train.models import build_model, default_spec

    size = 64
    torch.manual_seed(0)
    spec = default_spec(arch, ["hem", "all"], "all", size, "context", 0.5)
    model = build_model(arch, spec.num_classes, size).eval()
    fp32 = tmp_path / "export" / "model.fp32.onnx"
    export_onnx(model, spec, fp32)
    x = np.random.default_rng(0).normal(size=(8, 3, size, size)).astype(np.float32)
    int8 = tmp_path / "export" / "model.int8.onnx"
    quantize_int8(
        fp32, int8, tmp_path / "calibration.json", images=lambda: (x, [str(i) for i in range(8)])
    )
    errors = qdq_errors(onnx.load(str(int8)))
    assert errors == [], "\n".join(errors)
    for version in API_VERSIONS:
        fake = install(monkeypatch, FakeTensorRT(version))
        result = tx.build_engine(int8, out_dir=tmp_path / version, log=_quiet)
        assert result.sidecar.precision == "int8" and len(fake.builders) == 1
