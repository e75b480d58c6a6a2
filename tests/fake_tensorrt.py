"""A strict stand-in for the ``tensorrt`` Python module, and a CUDA binding over numpy.

The stand-in exposes exactly the names of the real bindings of one TensorRT version
(``tests/data/tensorrt_api_<version>.json``, read from the binding wheels; see
``tests/data/README.md``): the module's names, each class's methods and properties,
each enum's values. Any other name raises ``AttributeError``, so code that calls
``BuilderFlag.FP16`` or ``EXPLICIT_BATCH`` fails here against TensorRT 11 as it
would on the device. Behind the names it follows TensorRT where leukedge depends
on it:

* the ONNX parser applies onnx-tensorrt's Q/DQ rules (DequantizeLinear inputs are
  int8, zero points 0, per-channel only on the weight's output-channel axis);
* a DLA build (default device DLA) refuses a dynamic optimization profile, and
  ``can_run_on_DLA`` accepts the layer types DLA runs;
* ``IBuilderConfig`` starts with TF32 set, as on Ampere and newer;
* a ``Runtime`` has ``DLA_core`` (default 0), and the engine remembers the core it
  was deserialized on; engines run the ONNX graph with ONNX Runtime on the
  stand-in device memory, so parity measurements are real.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

DATA = Path(__file__).parent / "data"
VERSIONS = {"10.3": "10.3.0", "11.4": "11.4.0.106"}
SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
DATATYPES = {  # module-level aliases of DataType members, as the bindings define them
    "float32": "FLOAT",
    "float16": "HALF",
    "bfloat16": "BF16",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
    "uint8": "UINT8",
    "fp8": "FP8",
    "int4": "INT4",
    "fp4": "FP4",
    "e8m0": "E8M0",
}
DLA_LAYERS = {"Conv", "Relu", "MaxPool", "AveragePool", "BatchNormalization", "Add", "Mul"}
PLAN_MAGIC = b"PLAN"
CACHE_MAGIC = b"TCACHE"


def load_api(version: str) -> dict[str, Any]:
    return json.loads((DATA / f"tensorrt_api_{version}.json").read_text())


# ---------------------------------------------------------------- strictness


def _api_names(cls: type) -> set[str] | None:
    """Public names the real API gives ``cls`` (its own and its fake bases'), None if not fake."""
    names: set[str] = set()
    found = False
    for k in cls.__mro__:
        api = k.__dict__.get("_api")
        if api is not None:
            found = True
            names |= api
    return names if found else None


def _fake_class(cls: type) -> type | None:
    return next((k for k in cls.__mro__ if "_api" in k.__dict__), None)


def _allowed(cls: type, name: str) -> bool:
    if name.startswith("_"):
        return True
    fake = _fake_class(cls)
    if fake is None:
        return True
    for k in cls.__mro__:  # names a user subclass (a Python ILogger, say) defines itself
        if k is fake:
            break
        if name in k.__dict__:
            return True
    names = _api_names(cls) or set()
    if name in names:
        return True
    if cls is not fake:  # a user subclass's own instance attributes
        return not any(name in k.__dict__ for k in fake.__mro__)
    return False


class _StrictMeta(type):
    def __getattribute__(cls, name: str) -> Any:
        if not name.startswith("_") and not _allowed(cls, name):
            raise AttributeError(f"tensorrt has no attribute {cls.__name__}.{name}")
        return super().__getattribute__(name)


class Strict(metaclass=_StrictMeta):
    """Base of every stand-in class: attributes limited to the real API's names."""

    _api: ClassVar[set[str] | None] = None

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and not _allowed(type(self), name):
            raise AttributeError(
                f"tensorrt {type(self).__name__!r} object has no attribute {name!r}"
            )
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not _allowed(type(self), name):
            raise AttributeError(f"tensorrt {type(self).__name__!r} has no attribute {name!r}")
        object.__setattr__(self, name, value)


class StrictModule(types.ModuleType):
    """The module: only the real module-level names."""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            allowed = object.__getattribute__(self, "_names")
            if name not in allowed:
                raise AttributeError(f"module 'tensorrt' has no attribute {name!r}")
        return object.__getattribute__(self, name)


# ---------------------------------------------------------------- the fake's state


class FakeTensorRT:
    """One stand-in ``tensorrt`` of ``version`` and the knobs and records the tests use."""

    def __init__(self, version: str = "10.3", dla_cores: int = 0) -> None:
        self.version = version
        self.api = load_api(version)
        self.dla_cores = dla_cores
        self.parse_errors: list[str] = []
        self.build_raises = self.build_returns_none = False
        self.corrupt_cache = "none"  # "none" | "raises": what create_timing_cache does on garbage
        self.output_transform: Any = None  # applied to every engine output: an engine that drifts
        self.input_dtype = "float32"
        self.builders: list[Any] = []
        self.runtimes: list[Any] = []
        self.memory: dict[int, np.ndarray] = {}  # the stand-in CUDA binding's device memory
        self.next_ptr = 4096
        self.capturing: list[Any] | None = None  # a CUDA graph being captured
        self.plain_runs = 0
        self.graph_runs = 0
        self.module = self._make_module()

    # ------------------------------------------------------------ building the module

    def _make_module(self) -> StrictModule:
        api = self.api
        classes = {**api["classes"]}
        enums = dict(api["enums"])
        mod = StrictModule("tensorrt")
        names = set(api["module"]) | {"__version__"}
        object.__setattr__(mod, "_names", names)
        object.__setattr__(mod, "_fake", self)
        mod.__version__ = self.version_string
        made: dict[str, Any] = {}
        for name, values in enums.items():
            if "." in name:
                continue
            members = [v for v in values if v.isupper() or v[0].isupper()]
            made[name] = enum.IntEnum(name, {v: i for i, v in enumerate(members)})
        severity = enum.IntEnum("Severity", {k: SEVERITY[k] for k in enums["ILogger.Severity"]})
        made["_Severity"] = severity
        impl = self._implementations(made, severity)
        for name, cls in impl.items():
            members = set(classes.get(name, ()))
            if name not in classes and name not in names:
                raise AssertionError(f"the fake implements {name}, which tensorrt lacks")
            nested = {n.split(".", 1)[1] for n in enums if n.startswith(name + ".")}
            cls._api = members | nested
            made[name] = cls
        for name in names:
            if name in made:
                object.__setattr__(mod, name, made[name])
        for alias, member in DATATYPES.items():
            if alias in names:
                object.__setattr__(mod, alias, made["DataType"][member])
        object.__setattr__(mod, "nptype", _nptype(mod))
        object.__setattr__(mod, "volume", lambda it: int(np.prod(list(it), dtype=np.int64)))
        return mod

    @property
    def version_string(self) -> str:
        return VERSIONS[self.version]

    @property
    def trt(self) -> Any:
        return self.module

    def _implementations(self, enums: dict[str, Any], severity: Any) -> dict[str, type]:
        fake = self

        class ILogger(Strict):
            Severity = severity

            def __init__(self) -> None:
                pass

            def log(self, severity: Any, msg: str) -> None:  # overridden by Python loggers
                pass

        for member in severity:
            setattr(ILogger, member.name, member)

        class Logger(ILogger):
            def __init__(self, min_severity: Any = severity.WARNING) -> None:
                self.min_severity = min_severity
                self._messages: list[tuple[int, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(self.min_severity):
                    self._messages.append((int(severity), msg))

        class ParserError(Strict):
            def __init__(self, desc: str) -> None:
                self._desc = desc

            def desc(self) -> str:
                return self._desc

            def __str__(self) -> str:
                return self._desc

        class ITensor(Strict):
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self._name, self._shape = name, shape

            name = property(lambda self: self._name)
            shape = property(lambda self: self._shape)

        class ILayer(Strict):
            def __init__(self, name: str, op_type: str) -> None:
                self._name, self._type = name, op_type

            name = property(lambda self: self._name)
            type = property(lambda self: self._type)

        class INetworkDefinition(Strict):
            def __init__(self, flags: int) -> None:
                self._flags = flags
                self._inputs: list[ITensor] = []
                self._outputs: list[ITensor] = []
                self._layers: list[ILayer] = []
                self._onnx: str | None = None

            num_inputs = property(lambda self: len(self._inputs))
            num_outputs = property(lambda self: len(self._outputs))
            num_layers = property(lambda self: len(self._layers))

            def get_input(self, i: int) -> ITensor:
                return self._inputs[i]

            def get_output(self, i: int) -> ITensor:
                return self._outputs[i]

            def get_layer(self, i: int) -> ILayer:
                return self._layers[i]

        class OnnxParser(Strict):
            def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
                _check_logger(logger, ILogger)
                self._network, self._errors = network, []

            def parse_from_file(self, path: str) -> bool:
                if fake.parse_errors:
                    self._errors = [ParserError(e) for e in fake.parse_errors]
                    return False
                model = onnx.load(path)
                self._errors = [ParserError(e) for e in qdq_errors(model)]
                if self._errors:
                    return False
                graph = model.graph
                net = self._network
                init = {i.name for i in graph.initializer}
                net._inputs = [ITensor(v.name, _dims(v)) for v in graph.input if v.name not in init]
                net._outputs = [ITensor(v.name, _dims(v)) for v in graph.output]
                net._layers = [
                    ILayer(n.name or f"{n.op_type}_{i}", n.op_type)
                    for i, n in enumerate(graph.node)
                ]
                net._onnx = path
                return True

            num_errors = property(lambda self: len(self._errors))

            def get_error(self, i: int) -> ParserError:
                return self._errors[i]

        class IOptimizationProfile(Strict):
            def __init__(self) -> None:
                self._shapes: tuple | None = None

            def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
                self._shapes = (input, tuple(min), tuple(opt), tuple(max))

            def get_shape(self, input: str) -> list[tuple[int, ...]]:
                assert self._shapes is not None
                return list(self._shapes[1:])

        class IHostMemory(bytes, Strict):  # a buffer, as the real one is
            nbytes = property(lambda self: len(self))

        class ITimingCache(Strict):
            def __init__(self, data: bytes) -> None:
                self._data = bytes(data)

            def serialize(self) -> IHostMemory:
                return IHostMemory(CACHE_MAGIC + self._data.removeprefix(CACHE_MAGIC) + b"+t")

            def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
                self._data += input_cache._data.removeprefix(CACHE_MAGIC)
                return True

        class IBuilderConfig(Strict):
            def __init__(self) -> None:
                flag = enums["BuilderFlag"]
                self._flags: set = {flag.TF32}  # on by default on Ampere and newer
                self._pools: dict = {}
                self._profiles: list[IOptimizationProfile] = []
                self._cache: ITimingCache | None = None
                self.default_device_type = enums["DeviceType"].GPU
                self.DLA_core = -1
                self.profiling_verbosity = enums["ProfilingVerbosity"].LAYER_NAMES_ONLY
                self.builder_optimization_level = 3

            def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
                self._pools[pool] = pool_size

            def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
                self._profiles.append(profile)
                return len(self._profiles) - 1

            def set_flag(self, flag: Any) -> None:
                self._flags.add(flag)

            def clear_flag(self, flag: Any) -> None:
                self._flags.discard(flag)

            def get_flag(self, flag: Any) -> bool:
                return flag in self._flags

            def can_run_on_DLA(self, layer: ILayer) -> bool:
                return layer.type in DLA_LAYERS

            def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
                data = bytes(serialized_timing_cache)
                if data and not data.startswith(CACHE_MAGIC):
                    if fake.corrupt_cache == "raises":
                        raise RuntimeError("Failed to deserialize the timing cache")
                    return None
                return ITimingCache(data)

            def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
                self._cache = cache
                return True

            def get_timing_cache(self) -> ITimingCache | None:
                return self._cache

        class Builder(Strict):
            def __init__(self, logger: ILogger) -> None:
                _check_logger(logger, ILogger)
                self._logger = logger
                fake.builders.append(self)

            num_DLA_cores = property(lambda self: fake.dla_cores)

            def create_network(self, flags: int = 0) -> INetworkDefinition:
                self._network = INetworkDefinition(flags)
                return self._network

            def create_builder_config(self) -> IBuilderConfig:
                self._config = IBuilderConfig()
                return self._config

            def create_optimization_profile(self) -> IOptimizationProfile:
                return IOptimizationProfile()

            def build_serialized_network(
                self, network: INetworkDefinition, config: IBuilderConfig
            ) -> IHostMemory | None:
                log = self._logger.log
                log(severity.INFO, "building a fake engine")
                log(severity.VERBOSE, "tactic timings (verbose)")
                if fake.build_raises:
                    raise RuntimeError("builder crashed")
                if fake.build_returns_none:
                    log(severity.ERROR, "out of memory (fake)")
                    return None
                typed = enums["NetworkDefinitionCreationFlag"].STRONGLY_TYPED
                if not network._flags & (1 << int(typed)):
                    log(severity.ERROR, "leukedge builds strongly typed networks only")
                    return None
                name, pmin, popt, pmax = config._profiles[0]._shapes
                dla = config.default_device_type == enums["DeviceType"].DLA
                if dla and not pmin == popt == pmax:
                    log(severity.ERROR, "DLA requires static shapes: min = opt = max")
                    return None
                on_dla = [
                    layer.name for layer in network._layers if dla and config.can_run_on_DLA(layer)
                ]
                layers: list[dict[str, str]] = []
                for layer in network._layers:  # DLA subgraphs become one foreign node each
                    if layer.name not in on_dla:
                        layers.append({"Name": layer.name, "LayerType": layer.type})
                    elif layer.name == on_dla[0]:
                        layers.append({"Name": f"{{ForeignNode[{on_dla[0]}...{on_dla[-1]}]}}"})
                plan = {
                    "input": name,
                    "output": network._outputs[0].name,
                    "profile": [pmin, popt, pmax],
                    "onnx": network._onnx,
                    "tf32": enums["BuilderFlag"].TF32 in config._flags,
                    "dla_core": config.DLA_core if dla else None,
                    "layers": layers,
                }
                return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

        class EngineInspector(Strict):
            def __init__(self, engine: ICudaEngine) -> None:
                self._engine = engine

            def get_engine_information(self, format: Any) -> str:
                return json.dumps({"Layers": self._engine._plan["layers"]})

        class ICudaEngine(Strict):
            def __init__(self, plan: dict, dla_core: int) -> None:
                self._plan, self._dla_core = plan, dla_core
                self._names = [plan["input"], plan["output"]]

            num_io_tensors = property(lambda self: 2)

            def get_tensor_name(self, index: int) -> str:
                return self._names[index]

            def get_tensor_mode(self, name: str) -> Any:
                io = enums["TensorIOMode"]
                return io.INPUT if name == self._plan["input"] else io.OUTPUT

            def get_tensor_dtype(self, name: str) -> Any:
                dtype = fake.input_dtype if name == self._plan["input"] else "float32"
                return enums["DataType"].HALF if dtype == "float16" else enums["DataType"].FLOAT

            def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
                return [tuple(s) for s in self._plan["profile"]]

            def create_execution_context(self) -> IExecutionContext:
                return IExecutionContext(self)

            def create_engine_inspector(self) -> EngineInspector:
                return EngineInspector(self)

        class IExecutionContext(Strict):
            """Runs the engine's ONNX graph with ONNX Runtime on the stand-in device memory."""

            def __init__(self, engine: ICudaEngine) -> None:
                self._engine, self._addresses, self._shape = engine, {}, None
                self._session = _session(engine._plan["onnx"])

            def set_input_shape(self, name: str, shape: Any) -> bool:
                pmin, _, pmax = self._engine._plan["profile"]
                ok = all(lo <= s <= hi for lo, s, hi in zip(pmin, shape, pmax, strict=True))
                self._shape = tuple(shape) if ok else self._shape
                return ok

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                if name == self._engine._plan["input"]:
                    return self._shape
                return (self._shape[0], self._session.get_outputs()[0].shape[1])

            def set_tensor_address(self, name: str, memory: int) -> bool:
                self._addresses[name] = memory
                return True

            def execute_async_v3(self, stream_handle: int) -> bool:
                if fake.capturing is not None:
                    fake.capturing.append(self._run)
                    return True
                fake.plain_runs += 1
                self._run()
                return True

            def _run(self) -> None:
                plan = self._engine._plan
                n = int(np.prod(self._shape))
                x = fake.memory[self._addresses[plan["input"]]].view(fake.input_dtype)[:n]
                x = x.reshape(self._shape).astype(np.float32)
                feed = {self._session.get_inputs()[0].name: x}
                logits = self._session.run(None, feed)[0].astype(np.float32)
                if fake.output_transform is not None:
                    logits = np.ascontiguousarray(fake.output_transform(logits), np.float32)
                out = fake.memory[self._addresses[plan["output"]]].view(np.float32)
                out[: logits.size] = logits.ravel()

        class Runtime(Strict):
            def __init__(self, logger: ILogger) -> None:
                _check_logger(logger, ILogger)
                self.DLA_core = 0
                fake.runtimes.append(self)

            num_DLA_cores = property(lambda self: fake.dla_cores)

            def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
                data = bytes(serialized_engine)
                if not data.startswith(PLAN_MAGIC):
                    return None
                plan = json.loads(data[len(PLAN_MAGIC) :])
                return ICudaEngine(plan, self.DLA_core if plan["dla_core"] is not None else -1)

        return {
            "ILogger": ILogger,
            "Logger": Logger,
            "ParserError": ParserError,
            "ITensor": ITensor,
            "ILayer": ILayer,
            "INetworkDefinition": INetworkDefinition,
            "OnnxParser": OnnxParser,
            "IOptimizationProfile": IOptimizationProfile,
            "IHostMemory": IHostMemory,
            "ITimingCache": ITimingCache,
            "IBuilderConfig": IBuilderConfig,
            "Builder": Builder,
            "EngineInspector": EngineInspector,
            "ICudaEngine": ICudaEngine,
            "IExecutionContext": IExecutionContext,
            "Runtime": Runtime,
        }


def _check_logger(logger: Any, base: type) -> None:
    if not isinstance(logger, base):
        raise TypeError(f"incompatible function arguments: {type(logger).__name__} is no ILogger")


def _nptype(mod: Any) -> Any:
    """The bindings' ``nptype`` (in their ``__init__.py``), over this module's DataType."""
    mapping = {
        mod.float32: np.float32,
        mod.float16: np.float16,
        mod.int8: np.int8,
        mod.int32: np.int32,
        mod.int64: np.int64,
        mod.bool: np.bool_,
        mod.uint8: np.uint8,
    }

    def nptype(trt_type: Any) -> type:
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    return nptype


_SESSIONS: dict[str, Any] = {}


def _session(path: str) -> Any:
    import onnxruntime as ort

    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def _dims(value_info: Any) -> tuple[int, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1
        for d in value_info.type.tensor_type.shape.dim
    )


# ---------------------------------------------------------------- onnx-tensorrt's Q/DQ rules

_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}


def qdq_errors(model: onnx.ModelProto) -> list[str]:
    """What TensorRT's ONNX parser refuses in Q/DQ nodes (explicit quantization).

    DequantizeLinear inputs are INT8 (FP8/INT4 in later versions; never INT32: biases
    stay float), zero points are 0 (symmetric), and a per-channel scale is only
    accepted on the output-channel axis of the weight it dequantizes.
    """
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # Constant nodes hold initializers too
        if node.op_type == "Constant" and node.attribute:
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t)
    types_ = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    types_.update({v.name: v.type.tensor_type.elem_type for v in graph.input})
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    producers = {o: n for n in graph.node for o in n.output}
    errors = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zero is not None:
            zp = inits.get(zero)
            if zp is None:
                errors.append(f"{label}: the zero point must be a constant")
            else:
                if zp.dtype != np.int8:
                    errors.append(
                        f"{label}: zero point of type {zp.dtype} (TensorRT quantizes to INT8; "
                        "uint8/int32 are not supported)"
                    )
                if np.any(zp != 0):
                    errors.append(
                        f"{label}: TensorRT only supports symmetric quantization: the zero point "
                        "must be all zeros"
                    )
        if node.op_type == "DequantizeLinear":
            x = node.input[0]
            dtype = inits[x].dtype if x in inits else _quantized_type(x, producers, inits, types_)
            if dtype is not None and dtype != np.int8:
                errors.append(
                    f"{label}: input of type {dtype}; DequantizeLinear inputs must be INT8 "
                    "(an INT32 bias must stay float)"
                )
        scale = inits.get(node.input[1])
        if scale is not None and scale.size > 1:
            weight = node.input[0] in inits
            users = consumers.get(node.output[0], [])
            if not weight:
                errors.append(f"{label}: per-channel quantization of an activation")
            for user, slot in users:
                expected = _WEIGHT_AXIS.get(user.op_type)
                if user.op_type == "Gemm" and any(
                    a.name == "transB" and a.i for a in user.attribute
                ):
                    expected = 0
                if expected is None or slot != 1:
                    errors.append(f"{label}: per-channel scale feeding {user.op_type} input {slot}")
                elif axis != expected:
                    errors.append(
                        f"{label}: per-channel axis {axis}, but the output channels of "
                        f"{user.op_type}'s weight are on axis {expected}"
                    )
    return errors


def _quantized_type(
    name: str, producers: dict[str, onnx.NodeProto], inits: dict[str, np.ndarray], types_: dict
) -> Any:
    """The element type a QuantizeLinear produces (from its zero point), else what is known."""
    node = producers.get(name)
    if node is not None and node.op_type == "QuantizeLinear":
        if len(node.input) > 2 and node.input[2] in inits:
            return inits[node.input[2]].dtype
        return np.dtype(np.uint8)  # ONNX's default without a zero point
    elem = types_.get(name)
    return onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else None


# ---------------------------------------------------------------- a CUDA binding over numpy


class FakeCuda:
    """The CudaApi methods over numpy arrays standing in for device memory, graphs included."""

    library = "fake"

    def __init__(self, fake: FakeTensorRT, name: str = "NVIDIA Fake GPU", cc: str = "8.7"):
        self.fake, self.device, self.memory, self.name, self.cc = fake, 0, fake.memory, name, cc
        self.host: list[np.ndarray] = []
        self.closed = False
        self.graphs_alive = 0

    def device_info(self) -> Any:
        from leukedge.runtime.backends.cuda_mem import DeviceInfo

        return DeviceInfo(0, self.name, self.cc, 16000, "12.6", self.library)

    def malloc(self, nbytes: int) -> int:
        ptr = self.fake.next_ptr  # one address space for every binding of this fake
        self.fake.next_ptr += nbytes + 256
        self.memory[ptr] = np.zeros(nbytes, dtype=np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def host_empty(self, count: int, dtype: Any) -> np.ndarray:
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

    def stream_begin_capture(self, stream: object) -> None:
        self.fake.capturing = []

    def stream_end_capture(self, stream: object) -> list:
        graph, self.fake.capturing = self.fake.capturing, None
        return graph or []

    def graph_instantiate(self, graph: list) -> tuple:
        self.graphs_alive += 1
        return ("exec", graph)

    def graph_launch(self, graph_exec: tuple, stream: object) -> None:
        self.fake.graph_runs += 1
        for launch in graph_exec[1]:
            launch()

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        if graph_exec is not None:
            self.graphs_alive -= 1

    def close(self) -> None:
        self.closed = True
