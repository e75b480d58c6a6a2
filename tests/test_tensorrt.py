"""TensorRT engine plan, builder and backend, on a machine without TensorRT or a GPU.

The plain logic (keys, names, sidecars, compatibility, reuse) is tested directly.
The TensorRT calls are tested against a small stand-in ``tensorrt`` module that
has the same method names as the TensorRT 10 Python API and records what the
builder asked of it; its ONNX parser reads the real ONNX file. A stand-in CUDA
binding keeps "device memory" in numpy arrays so the backend's buffer handling
runs for real.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leukedge.export import tensorrt as tx
from leukedge.io import sha256_file
from leukedge.runtime.backends import cuda_mem
from leukedge.runtime.backends import engine_plan as ep
from leukedge.runtime.backends import gpu as gpu_probe
from leukedge.runtime.backends.base import BackendError
from leukedge.runtime.backends.trt import TrtBackend
from leukedge.spec import ONNX_METADATA_KEY, ModelSpec

SIZE = 16
SPEC = ModelSpec(arch="cnn", input_size=SIZE)
GPU = gpu_probe.GpuInfo("NVIDIA Fake GPU", "8.7", "CUDA 12.6", 16000, "fake")
TRT_VERSION = "10.3.0"


# ---------------------------------------------------------------- fixtures


def write_onnx(path: Path, weights: np.ndarray, batch: int | str = "N") -> Path:
    """input (N,3,S,S) -> GlobalAveragePool -> Flatten -> MatMul(W) -> logits (N,C)."""
    w = numpy_helper.from_array(weights.astype(np.float32), "W")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, weights.shape[1]])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {ONNX_METADATA_KEY: SPEC.to_json()})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


W = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.25]], dtype=np.float32)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    SPEC.save(run / "spec.json")
    write_onnx(run / "export" / "model.fp32.onnx", W)
    write_onnx(run / "export" / "model.fp16.onnx", W * 2)
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


# ---------------------------------------------------------------- names and keys


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
    with pytest.raises(ValueError, match="precision"):
        ep.engine_file_name("fp8")


def test_engine_key_is_stable_and_differs_when_any_input_differs() -> None:
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
        "dla_core": replace(key, flags=ep.BuildFlags(32, dla_core=0)),
    }
    digests = {key.digest()}
    for label, other in variants.items():
        digests.add(other.digest())
        (diff,) = other.differences(key)
        assert diff.startswith(label)
    assert len(digests) == len(variants) + 1
    assert key.engine_path("engines") == Path("engines/10.3.0_orin_sm87/model.fp16.engine")


def test_profile_shapes() -> None:
    p = ep.profile_shapes(SPEC, 32)
    assert (p.min, p.opt, p.max) == ((1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    assert ep.profile_shapes(SPEC, 4).opt[0] == 4
    one = ep.profile_shapes(SPEC, 1)
    assert one.min == one.opt == one.max == (1, 3, 16, 16)
    assert ep.ProfileShapes.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        ep.profile_shapes(SPEC, 0)
    with pytest.raises(ValueError, match="--max-batch"):
        ep.BuildFlags(max_batch=0)


def test_timing_cache_is_per_tensorrt_version_and_gpu() -> None:
    path = ep.timing_cache_path("engines", TRT_VERSION, "Orin", "8.7")
    assert path == Path("engines/10.3.0_orin_sm87/timing.cache")
    assert ep.timing_cache_path("engines", "10.4.0", "Orin", "8.7") != path
    assert ep.timing_cache_path("engines", TRT_VERSION, "NVIDIA H100", "9.0") != path


def test_precision_and_default_root_from_paths(run_dir: Path, tmp_path: Path) -> None:
    assert ep.onnx_precision("x/model.int8.onnx") == "int8"
    assert ep.onnx_precision("x/model.onnx") == "fp32"
    assert ep.default_engines_root(run_dir / "export" / "model.fp16.onnx") == run_dir / "engines"
    assert ep.default_engines_root(tmp_path / "m.onnx") == tmp_path / "engines"


# ---------------------------------------------------------------- sidecar, compatibility, reuse


def test_sidecar_round_trip(tmp_path: Path) -> None:
    side = make_sidecar(build_flags=ep.BuildFlags(16, workspace_mb=256, dla_core=0))
    assert ep.EngineSidecar.from_dict(json.loads(json.dumps(side.to_dict()))) == side
    path = side.save(tmp_path / "model.fp16.engine.json")
    loaded = ep.EngineSidecar.load(path)
    assert loaded == side and loaded.spec.input_size == SIZE
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
        build_flags=ep.BuildFlags(4, workspace_mb=512, dla_core=1),
    )
    assert ep.rebuild_command(side) == (
        "leukedge build-engine 'models/my model.int8.onnx' --precision int8 "
        "--max-batch 4 --workspace-mb 512 --dla-core 1"
    )


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
    engine.write_bytes(b"Serialized engine")  # same size, other bytes
    assert "sha256" in ep.reuse_decision(engine, key).reason


# ---------------------------------------------------------------- without TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def _assert_install_hint(message: str) -> None:
    assert "pip install 'leukedge[trt]'" in message
    assert "sudo apt install python3-libnvinfer" in message
    assert "--system-site-packages" in message
    assert "built on the device that will run them" in message


def test_build_engines_without_tensorrt(no_tensorrt: None, run_dir: Path) -> None:
    with pytest.raises(ep.TensorRTUnavailable) as info:
        tx.build_engines(run_dir)
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
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(gpu_probe, "_probe_gpu", lambda device=0: (None, "cuda-python: no device"))
    with pytest.raises(ep.TensorRTUnavailable, match="no NVIDIA GPU could be found"):
        tx.build_engines(run_dir)


def test_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="8.6.1"))
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


# ---------------------------------------------------------------- a stand-in tensorrt module


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]


def _onnx_dims(value_info) -> tuple[int, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1
        for d in value_info.type.tensor_type.shape.dim
    )


class _OnnxParser:
    def __init__(self, network: _Network, logger: object) -> None:
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        if FakeTensorRT.current.parse_errors:
            self.errors = list(FakeTensorRT.current.parse_errors)
            return False
        graph = onnx.load(path).graph
        self.network.inputs = [_Tensor(v.name, _onnx_dims(v)) for v in graph.input]
        self.network.outputs = [_Tensor(v.name, _onnx_dims(v)) for v in graph.output]
        return True

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _Profile:
    def set_shape(self, name: str, min, opt, max) -> None:
        self.shapes = (name, tuple(min), tuple(opt), tuple(max))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+timings"


class _Config:
    def __init__(self) -> None:
        self.flags: set = set()
        self.pools: dict = {}
        self.profiles: list[_Profile] = []
        self.default_device_type = FakeTensorRT.DeviceType.GPU
        self.DLA_core = -1
        self.cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: object, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag: object) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.cache


class _Builder:
    def __init__(self, logger: object) -> None:
        self.num_DLA_cores = FakeTensorRT.current.dla_cores
        FakeTensorRT.current.builders.append(self)

    def create_network(self, flags: int) -> _Network:
        self.network = _Network(flags)
        return self.network

    def create_builder_config(self) -> _Config:
        self.config = _Config()
        return self.config

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config):
        fake = FakeTensorRT.current
        if fake.build_raises:
            raise RuntimeError("builder crashed")
        if fake.build_returns_none:
            return None
        name, pmin, popt, pmax = config.profiles[0].shapes
        plan = {"input": name, "output": network.outputs[0].name, "profile": [pmin, popt, pmax]}
        return memoryview(b"PLAN" + json.dumps(plan).encode())  # IHostMemory is a buffer


class FakeTensorRT(types.ModuleType):
    """Just the TensorRT 10 Python API leukedge uses; no FP16/INT8 builder flags (as in 11)."""

    current: FakeTensorRT

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class DeviceType:
        GPU, DLA = 0, 1

    class BuilderFlag:
        GPU_FALLBACK = 3

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class DataType:
        FLOAT, HALF = "float32", "float16"

    Builder, OnnxParser = _Builder, _OnnxParser

    def __init__(self, version: str = TRT_VERSION, dla_cores: int = 0) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.dla_cores = dla_cores
        self.parse_errors: list[str] = []
        self.build_raises = self.build_returns_none = False
        self.builders: list[_Builder] = []
        self.input_dtype = self.DataType.FLOAT
        self.memory: dict[int, np.ndarray] = {}  # the stand-in CUDA binding's device memory
        FakeTensorRT.current = self

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.dtype(dtype).type

    def Runtime(self, logger: object) -> _Runtime:
        return _Runtime(self)


class _Runtime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, data: bytes):
        if not data.startswith(b"PLAN"):
            return None
        return _Engine(self.trt, json.loads(data[4:]))


class _Engine:
    def __init__(self, trt: FakeTensorRT, plan: dict) -> None:
        self.trt, self.plan = trt, plan
        self.names = [plan["input"], plan["output"]]

    num_io_tensors = property(lambda self: 2)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> int:
        io = self.trt.TensorIOMode
        return io.INPUT if name == self.plan["input"] else io.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return self.trt.input_dtype if name == self.plan["input"] else "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.plan["profile"]]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    """Runs the tiny ONNX graph's math (mean over H, W, then @ W) on the stand-in device memory."""

    def __init__(self, engine: _Engine) -> None:
        self.engine, self.addresses, self.shape = engine, {}, None

    def set_input_shape(self, name: str, shape) -> bool:
        pmin, _, pmax = self.engine.plan["profile"]
        ok = all(lo <= s <= hi for lo, s, hi in zip(pmin, shape, pmax, strict=True))
        self.shape = tuple(shape) if ok else self.shape
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape if name == self.engine.plan["input"] else (self.shape[0], 2)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        trt, plan = self.engine.trt, self.engine.plan
        n = int(np.prod(self.shape))
        dtype = np.dtype(trt.input_dtype)
        x = trt.memory[self.addresses[plan["input"]]].view(dtype)[:n].reshape(self.shape)
        logits = x.astype(np.float32).mean(axis=(2, 3)) @ W
        out = trt.memory[self.addresses[plan["output"]]].view(np.float32)
        out[: logits.size] = logits.ravel()
        return True


class FakeCuda:
    """The CudaApi methods over numpy arrays standing in for device memory."""

    library = "fake"

    def __init__(self, memory: dict[int, np.ndarray], name: str = GPU.name, cc: str = "8.7"):
        self.device, self.memory, self.name, self.cc = 0, memory, name, cc
        self.host: list[np.ndarray] = []
        self.next_ptr, self.closed = 4096, False

    def device_info(self) -> cuda_mem.DeviceInfo:
        return cuda_mem.DeviceInfo(0, self.name, self.cc, 16000, "12.6", self.library)

    def malloc(self, nbytes: int) -> int:
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 256
        self.memory[ptr] = np.zeros(nbytes, dtype=np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def host_empty(self, count: int, dtype) -> np.ndarray:
        self.host.append(np.empty(count, dtype=dtype))
        return self.host[-1]

    def host_free(self, array: np.ndarray) -> None:
        self.host = [a for a in self.host if a is not array]

    def stream_create(self) -> object:
        return object()

    def stream_handle(self, stream: object) -> int:
        return 7

    def stream_synchronize(self, stream: object) -> None: ...

    def stream_destroy(self, stream: object) -> None: ...

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: object) -> None:
        self.memory[dst][: src.nbytes] = np.ascontiguousarray(src).view(np.uint8).ravel()

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: object) -> None:
        dst[...] = self.memory[src][: dst.nbytes].view(dst.dtype).reshape(dst.shape)

    def event_create(self) -> object:
        return object()

    def event_record(self, event: object, stream: object) -> None: ...

    def event_elapsed_ms(self, start: object, end: object) -> float:
        return 0.25

    def event_destroy(self, event: object) -> None: ...

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(gpu_probe, "_probe_gpu", lambda device=0: (GPU, ""))
    return fake


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- building with the stand-in


def test_build_engine_strongly_typed_profile_cache_and_sidecar(
    fake_trt: FakeTensorRT, run_dir: Path
) -> None:
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    result = tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    (builder,) = fake_trt.builders
    assert builder.network.flags == 1 << fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    (profile,) = builder.config.profiles
    assert profile.shapes == ("input", (1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16))
    assert builder.config.flags == set()  # precision comes from the ONNX, never from flags
    assert builder.config.pools == {}  # no --workspace-mb: TensorRT's default

    folder = run_dir / "engines" / "10.3.0_nvidia-fake-gpu_sm87"
    assert result.engine_path == folder / "model.fp16.engine" and not result.reused
    assert result.timing_cache == folder / "timing.cache"
    assert result.timing_cache.read_bytes() == b"+timings"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.fp16.engine",
        "model.fp16.engine.json",
        "timing.cache",
    ]
    side = json.loads(result.sidecar_path.read_text())
    assert side["spec"]["input_size"] == SIZE and side["precision"] == "fp16"
    assert side["tensorrt_version"] == TRT_VERSION and side["gpu_name"] == GPU.name
    assert side["compute_capability"] == "8.7"
    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["build_flags"] == {"max_batch": 32, "workspace_mb": None, "dla_core": None}
    assert side["profile"]["max"] == [32, 3, 16, 16]
    assert side["engine_sha256"] == sha256_file(result.engine_path)
    assert side["leukedge_version"] and side["built_at"] and side["build_seconds"] >= 0

    again = tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    assert again.reused and len(fake_trt.builders) == 1  # cache hit: TensorRT not called
    forced = tx.build_engine(onnx_path, max_batch=32, force=True, log=_quiet)
    assert not forced.reused and len(fake_trt.builders) == 2
    assert fake_trt.builders[1].config.cache.data == b"+timings"  # saved cache was loaded
    other = tx.build_engine(onnx_path, max_batch=4, log=_quiet)
    assert not other.reused and fake_trt.builders[2].config.profiles[0].shapes[2][0] == 4


def test_build_engines_for_a_run_dir(fake_trt: FakeTensorRT, run_dir: Path) -> None:
    results = tx.build_engines(run_dir, workspace_mb=256, log=_quiet)
    assert [r.precision for r in results] == ["fp16", "fp32"]
    assert all(
        b.config.pools == {fake_trt.MemoryPoolType.WORKSPACE: 256 << 20} for b in fake_trt.builders
    )
    out = run_dir.parent / "elsewhere"
    (one,) = tx.build_engines(run_dir, ["fp32"], out=out, timing_cache=None, log=_quiet)
    assert one.engine_path.parent.parent == out and one.timing_cache is None
    assert not (one.engine_path.parent / "timing.cache").exists()


def test_dla_build(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    fake = FakeTensorRT(dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(
        gpu_probe,
        "_probe_gpu",
        lambda device=0: (gpu_probe.GpuInfo("Orin", "8.7", None, None, "fake"), ""),
    )
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    result = tx.build_engine(onnx_path, dla_core=1, log=_quiet)
    config = fake.builders[0].config
    assert config.default_device_type == fake.DeviceType.DLA and config.DLA_core == 1
    assert config.flags == {fake.BuilderFlag.GPU_FALLBACK}
    assert result.engine_path.name == "model.fp16.dla1.engine"
    with pytest.raises(ep.EngineBuildError, match="2 DLA core"):
        tx.build_engine(onnx_path, dla_core=2, log=_quiet)


@pytest.mark.parametrize("failure", ["returns_none", "raises"])
def test_failed_build_leaves_no_files(fake_trt: FakeTensorRT, run_dir: Path, failure: str) -> None:
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    if failure == "raises":
        fake_trt.build_raises = True
        with pytest.raises(RuntimeError, match="builder crashed"):
            tx.build_engine(onnx_path, log=_quiet)
    else:
        fake_trt.build_returns_none = True
        with pytest.raises(ep.EngineBuildError, match="could not build an engine"):
            tx.build_engine(onnx_path, log=_quiet)
    folder = run_dir / "engines" / "10.3.0_nvidia-fake-gpu_sm87"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_failed_rebuild_keeps_the_previous_engine(fake_trt: FakeTensorRT, run_dir: Path) -> None:
    onnx_path = run_dir / "export" / "model.fp16.onnx"
    first = tx.build_engine(onnx_path, log=_quiet)
    before = first.engine_path.read_bytes()
    fake_trt.build_raises = True
    with pytest.raises(RuntimeError):
        tx.build_engine(onnx_path, force=True, log=_quiet)
    assert first.engine_path.read_bytes() == before and first.sidecar_path.is_file()
    assert [p.name for p in first.engine_path.parent.iterdir() if p.name.startswith(".")] == []


def test_parse_errors_are_listed(fake_trt: FakeTensorRT, run_dir: Path) -> None:
    fake_trt.parse_errors = ["node Foo: unsupported operator", "node Bar: bad shape"]
    with pytest.raises(ep.EngineBuildError) as info:
        tx.build_engine(run_dir / "export" / "model.fp16.onnx", log=_quiet)
    assert "could not parse" in str(info.value)
    assert "  - node Foo: unsupported operator\n  - node Bar: bad shape" in str(info.value)


def test_fixed_batch_onnx_needs_matching_max_batch(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    onnx_path = write_onnx(tmp_path / "model.fp32.onnx", W, batch=1)
    with pytest.raises(ep.EngineBuildError, match="fixed batch size of 1"):
        tx.build_engine(onnx_path, max_batch=32, log=_quiet)
    result = tx.build_engine(onnx_path, max_batch=1, log=_quiet)
    assert result.sidecar.profile.max == (1, 3, 16, 16)


# ---------------------------------------------------------------- the backend with the stand-ins


@pytest.fixture
def built(fake_trt: FakeTensorRT, run_dir: Path) -> tx.BuildResult:
    return tx.build_engine(run_dir / "export" / "model.fp16.onnx", max_batch=8, log=_quiet)


@pytest.mark.parametrize("input_dtype", ["float32", "float16"])
def test_backend_infers_within_the_profile(
    fake_trt: FakeTensorRT, built: tx.BuildResult, input_dtype: str
) -> None:
    fake_trt.input_dtype = input_dtype
    cuda = FakeCuda(fake_trt.memory)
    backend = TrtBackend(built.engine_path, cuda=cuda)
    assert (backend.name, backend.precision, backend.max_batch) == ("trt-fp16", "fp16", 8)
    assert backend.spec == SPEC and backend.device == "cuda:0"
    rng = np.random.default_rng(0)
    for n in (1, 5, 8):
        x = rng.normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)
        expected = x.astype(input_dtype).astype(np.float32).mean(axis=(2, 3)) @ W
        logits = backend.infer(x)
        assert logits.dtype == np.float32 and logits.shape == (n, 2)
        np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert backend.last_device_ms == 0.25
    with pytest.raises(BackendError, match="exceeds"):
        backend.infer(np.zeros((9, 3, SIZE, SIZE), np.float32))
    backend.synchronize()
    backend.close()
    backend.close()
    assert fake_trt.memory == {} and cuda.host == [] and not cuda.closed  # shared cuda stays open
    with pytest.raises(BackendError, match="closed"):
        backend.infer(np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_backend_refuses_engine_from_another_gpu(
    fake_trt: FakeTensorRT, built: tx.BuildResult
) -> None:
    cuda = FakeCuda(fake_trt.memory, name="NVIDIA H100 80GB HBM3", cc="9.0")
    with pytest.raises(ep.EngineMismatch) as info:
        TrtBackend(built.engine_path, cuda=cuda)
    message = str(info.value)
    assert "NVIDIA Fake GPU" in message and "NVIDIA H100 80GB HBM3" in message
    assert "leukedge build-engine" in message and "--precision fp16 --max-batch 8" in message
    assert fake_trt.memory == {}


def test_backend_refuses_other_tensorrt_and_replaced_engine(
    monkeypatch: pytest.MonkeyPatch, fake_trt: FakeTensorRT, built: tx.BuildResult
) -> None:
    monkeypatch.setattr(fake_trt, "__version__", "10.7.0")
    with pytest.raises(ep.EngineMismatch, match="built with 10.3.0, this machine has 10.7.0"):
        TrtBackend(built.engine_path, cuda=FakeCuda(fake_trt.memory))
    monkeypatch.setattr(fake_trt, "__version__", TRT_VERSION)
    data = bytearray(built.engine_path.read_bytes())
    data[-2:] = b"!}"
    built.engine_path.write_bytes(bytes(data))
    with pytest.raises(ep.EngineMismatch, match="sha256 differs"):
        TrtBackend(built.engine_path, cuda=FakeCuda(fake_trt.memory))


def test_backend_needs_a_sidecar(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"PLAN{}")
    with pytest.raises(ep.SidecarError, match="leukedge build-engine"):
        TrtBackend(engine, cuda=FakeCuda(fake_trt.memory))


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

    def __init__(self) -> None:
        self.buffers: dict[int, object] = {}

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


def test_cuda_python_adapter_pinned_views_and_errors() -> None:
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


def test_trt_available_and_find_engine(
    monkeypatch: pytest.MonkeyPatch, fake_trt: FakeTensorRT, built: tx.BuildResult, run_dir: Path
) -> None:
    from leukedge.runtime.backends import trt as trt_backend

    assert gpu_probe.trt_available() == (True, "TensorRT 10.3.0 on NVIDIA Fake GPU (sm87)")
    monkeypatch.setattr(trt_backend, "open_cuda", lambda device=0: FakeCuda(fake_trt.memory))
    assert trt_backend.find_engine(run_dir, "fp16") == built.engine_path
    assert trt_backend.find_engine(run_dir / "engines", "fp16") == built.engine_path
    with pytest.raises(BackendError, match="leukedge build-engine .* --precision int8"):
        trt_backend.find_engine(run_dir, "int8")
