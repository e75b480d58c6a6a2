"""TensorRT backend: a leukedge ``.engine`` behind the :class:`Backend` interface.

TensorRT >= 10 I/O by tensor name: buffers are bound once with
``set_tensor_address``, each batch sets its input shape within the engine's
optimization profile and runs with ``execute_async_v3`` on one CUDA stream.
Host buffers are page-locked and sized for the profile's maximum batch, device
buffers are allocated once, and a pair of CUDA events times the engine alone
(``last_device_ms``). An engine built for a DLA core is deserialized on that core
(``IRuntime.DLA_core`` is set from the sidecar first; TensorRT defaults to core 0).

``cuda_graph=True`` captures the engine's launches into a CUDA graph and replays
it: for a fixed shape (batch 1 next to the microscope) one graph launch replaces
many kernel launches and cuts CPU-side latency. The graph is captured on the first
batch, and again whenever the batch size changes (buffers never move, so a
captured graph stays valid); where capture fails the backend runs as usual and
says why in ``cuda_graph_error``. Needs cuda-python.

No torch, and neither TensorRT nor a CUDA binding is imported until a backend
is created, so ``import leukedge.runtime.backends.trt`` works everywhere.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from leukedge.artifacts import engines_root
from leukedge.runtime.backends.base import BackendError, check_batch
from leukedge.runtime.backends.cuda_mem import CudaApi, open_cuda
from leukedge.runtime.backends.engine_plan import (
    DLA_NOTE,
    TENSORRT_INSTALL_HINT,
    EngineMismatch,
    EngineSidecar,
    TensorRTUnavailable,
    check_engine_compatible,
    engine_file_name,
    load_sidecar_for,
    rebuild_command,
    target_folder_name,
)
from leukedge.spec import FEATURES_NAME

MIN_TENSORRT_MAJOR = 10


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` saying how to install it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError when libnvinfer cannot be loaded
        raise TensorRTUnavailable(
            f"TensorRT is not installed for this Python ({sys.executable}): "
            f"{type(e).__name__}: {e}. {TENSORRT_INSTALL_HINT}"
        ) from e
    version = str(getattr(trt, "__version__", "0"))
    if _major(version) < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {version} is too old: leukedge needs TensorRT {MIN_TENSORRT_MAJOR} or "
            "newer (name-based I/O with execute_async_v3, strongly typed networks). "
            f"{TENSORRT_INSTALL_HINT}"
        )
    return trt


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def find_engine(
    root: str | Path, precision: str, device: int = 0, dla_core: int | None = None
) -> Path:
    """The engine of ``precision`` built for this machine under a run dir or engines folder."""
    trt = import_tensorrt()
    cuda = open_cuda(device)
    try:
        info = cuda.device_info()
    finally:
        cuda.close()
    root = Path(root)
    engines = engines_root(root)
    folder = target_folder_name(trt.__version__, info.name, info.compute_capability)
    path = engines / folder / engine_file_name(precision, dla_core)
    if not path.is_file():
        dla = "" if dla_core is None else f" --dla-core {dla_core}"
        raise BackendError(
            f"no {precision} engine for TensorRT {trt.__version__} on {info.name} at {path}; "
            f"build it on this machine: leukedge build-engine {root} --precision {precision}{dla}"
        )
    return path


class TrtBackend:
    """One deserialized TensorRT engine, its execution context, buffers and stream."""

    def __init__(
        self,
        engine_path: str | Path,
        device: int = 0,
        cuda: CudaApi | None = None,
        cuda_graph: bool = False,
    ) -> None:
        """``cuda`` is an open :class:`CudaApi` to share; by default the backend opens its own.

        ``cuda_graph``: replay a captured CUDA graph instead of launching the engine
        (lower latency at a fixed batch size; see the module docstring).
        """
        self.path = Path(engine_path)
        self._closed = False
        self._cuda: CudaApi | None = None
        self._device_ptrs: dict[str, int] = {}
        self._host: list[np.ndarray] = []
        self._stream: Any = None
        self._events: list[Any] = []
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None
        self.last_device_ms: float | None = None
        self.cuda_graph = cuda_graph
        self.cuda_graph_error: str | None = None
        self._graph: tuple[Any, Any, tuple[int, ...]] | None = None  # graph, exec, input shape
        self.min_batch: int = 1
        self.max_batch: int | None = None
        self._owns_cuda = cuda is None
        if not self.path.is_file():
            raise BackendError(
                f"no TensorRT engine at {self.path} "
                "(build one with `leukedge build-engine runs/NAME`)"
            )
        trt = import_tensorrt()
        self.sidecar: EngineSidecar = load_sidecar_for(self.path)
        self.spec = self.sidecar.spec
        self.precision = self.sidecar.precision
        dla = self.sidecar.build_flags.dla_core
        self.name = f"trt-{self.precision}" + ("" if dla is None else f"-dla{dla}")
        self.device = f"cuda:{device}"
        self._cuda = cuda or open_cuda(device)
        try:
            self._load(trt)
            self._allocate(trt)
        except BaseException:
            self.close()
            raise

    @property
    def _api(self) -> CudaApi:
        """The open CUDA binding; a closed backend says so instead of failing on None."""
        if self._cuda is None:
            raise BackendError(f"{self.path.name}: the TensorRT backend is closed")
        return self._cuda

    # ------------------------------------------------------------ setup

    def _load(self, trt: ModuleType) -> None:
        info = self._api.device_info()
        check_engine_compatible(
            self.sidecar, trt.__version__, info.name, info.compute_capability, self.path
        )
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sidecar.engine_sha256:
            raise EngineMismatch(
                f"{self.path} is not the engine its sidecar describes (sha256 differs): it was "
                f"replaced or damaged. Rebuild it: {rebuild_command(self.sidecar)}"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        dla = self.sidecar.build_flags.dla_core
        if dla is not None:  # before deserializing: the runtime would put it on core 0
            cores = int(self._runtime.num_DLA_cores)
            if dla >= cores:
                raise EngineMismatch(
                    f"{self.path} was built for DLA core {dla} but this device has {cores} DLA "
                    f"core(s) ({DLA_NOTE}). Rebuild it: {rebuild_command(self.sidecar)}"
                )
            self._runtime.DLA_core = int(dla)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialize {self.path} (the TensorRT "
                f"log above says why). Rebuild it: {rebuild_command(self.sidecar)}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(
                f"TensorRT could not create an execution context for {self.path} "
                "(not enough free GPU memory?)"
            )

    def _allocate(self, trt: ModuleType) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendError(
                f"{self.path} has inputs {inputs} and outputs {outputs}: a leukedge classifier "
                "engine has one input and at least one output"
            )
        self.input_name = inputs[0]
        wanted = self.sidecar.output_name
        self.output_name = wanted if wanted in outputs else outputs[0]
        self.features_name: str | None = FEATURES_NAME if FEATURES_NAME in outputs else None
        pmin, _, pmax = (_dims(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        expected = tuple(self.spec.input_shape)
        if pmax[1:] != expected:
            raise BackendError(
                f"{self.path} takes input {pmax[1:]} per image but its spec says {expected}"
            )
        self.min_batch, self.max_batch = pmin[0], pmax[0]
        if not self._context.set_input_shape(self.input_name, pmax):
            raise BackendError(f"engine refused its own maximum input shape {pmax}")
        for name in names:
            shape = pmax if name == self.input_name else _dims(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            count = math.prod(shape)
            ptr = self._api.malloc(max(1, count * dtype.itemsize))
            self._device_ptrs[name] = ptr
            if not self._context.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused the device buffer of tensor {name!r}")
            if name == self.input_name:
                self._h_in = self._host_buffer(count, dtype)
            elif name == self.output_name:
                self._h_out = self._host_buffer(count, dtype)
            elif name == self.features_name:
                self._h_features = self._host_buffer(count, dtype)
        self._stream = self._api.stream_create()
        self._events = [self._api.event_create(), self._api.event_create()]

    def _host_buffer(self, count: int, dtype: np.dtype) -> np.ndarray:
        array = self._api.host_empty(count, dtype)
        self._host.append(array)
        return array

    # ------------------------------------------------------------ Backend protocol

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S) -> float32 logits (N, C); waits for the result."""
        return self._run(batch, with_features=False)[0]

    def infer_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and penultimate features of one execution (features None for older engines)."""
        return self._run(batch, with_features=self.features_name is not None)

    def _run(self, batch: np.ndarray, with_features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self._closed:
            raise BackendError(f"{self.name} backend is closed")
        x = check_batch(batch, self.spec, self.max_batch)
        if x.shape[0] < self.min_batch:
            raise BackendError(f"batch {x.shape[0]} is below the engine's minimum {self.min_batch}")
        cuda, stream = self._api, self._stream
        host_in = self._h_in[: x.size].reshape(x.shape)
        np.copyto(host_in, x, casting="same_kind")  # fp32, or fp16 if the engine takes fp16
        graph = self._graph_for(x.shape) if self.cuda_graph else None
        if graph is None and not self._context.set_input_shape(self.input_name, x.shape):
            raise BackendError(f"engine refused input shape {x.shape}")
        cuda.memcpy_htod_async(self._device_ptrs[self.input_name], host_in, stream)
        start, end = self._events
        cuda.event_record(start, stream)
        if graph is not None:
            cuda.graph_launch(graph, stream)
        elif not self._context.execute_async_v3(cuda.stream_handle(stream)):
            raise BackendError("TensorRT execute_async_v3 failed (the TensorRT log says why)")
        cuda.event_record(end, stream)
        host_out = self._fetch(self.output_name, self._h_out)
        features = None
        if with_features and self.features_name is not None:
            features = self._fetch(self.features_name, self._h_features)
        cuda.stream_synchronize(stream)
        self.last_device_ms = cuda.event_elapsed_ms(start, end)
        logits = host_out.astype(np.float32, copy=True)
        return logits, None if features is None else features.astype(np.float32, copy=True)

    def _fetch(self, name: str, host: np.ndarray) -> np.ndarray:
        """Queue the copy of output ``name`` into (a view of) its host buffer."""
        shape = _dims(self._context.get_tensor_shape(name))
        view = host[: math.prod(shape)].reshape(shape)
        self._api.memcpy_dtoh_async(view, self._device_ptrs[name], self._stream)
        return view

    def _graph_for(self, shape: tuple[int, ...]) -> Any:
        """The executable CUDA graph for ``shape``, captured now if needed; None to run plainly."""
        if self._graph is not None and self._graph[2] == tuple(shape):
            return self._graph[1]
        self._drop_graph()
        cuda, stream = self._api, self._stream
        if not self._context.set_input_shape(self.input_name, shape):
            raise BackendError(f"engine refused input shape {shape}")
        handle = cuda.stream_handle(stream)
        # One plain run first: TensorRT finishes shape-dependent setup outside the capture.
        if not self._context.execute_async_v3(handle):
            raise BackendError("TensorRT execute_async_v3 failed (the TensorRT log says why)")
        cuda.stream_synchronize(stream)
        graph = None
        try:
            cuda.stream_begin_capture(stream)
            try:
                ok = self._context.execute_async_v3(handle)
            finally:
                graph = cuda.stream_end_capture(stream)
            if not ok:
                raise BackendError("execute_async_v3 failed while capturing")
            self._graph = (graph, cuda.graph_instantiate(graph), tuple(shape))
            return self._graph[1]
        except Exception as e:  # not capturable here: run without a graph, and say why
            if graph is not None:
                cuda.graph_destroy(graph, None)
            self.cuda_graph = False
            self.cuda_graph_error = f"{type(e).__name__}: {e}"
            return None

    def _drop_graph(self) -> None:
        if self._graph is not None and self._cuda is not None:
            graph, graph_exec, _ = self._graph
            self._cuda.graph_destroy(graph, graph_exec)
        self._graph = None

    def synchronize(self) -> None:
        if not self._closed and self._stream is not None:
            self._api.stream_synchronize(self._stream)

    def close(self) -> None:
        """Release context, engine, buffers, events and stream; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._drop_graph()
        self._context = None  # the context goes before the engine that made it
        self._engine = None
        self._runtime = None
        cuda = self._cuda
        if cuda is None:
            return
        for ptr in self._device_ptrs.values():
            cuda.free(ptr)
        for array in self._host:
            cuda.host_free(array)
        for event in self._events:
            cuda.event_destroy(event)
        if self._stream is not None:
            cuda.stream_destroy(self._stream)
        self._device_ptrs, self._host, self._events, self._stream = {}, [], [], None
        if self._owns_cuda:
            cuda.close()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrtBackend({str(self.path)!r}, {self.name}, max_batch={self.max_batch})"
