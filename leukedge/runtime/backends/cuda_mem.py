"""The few CUDA calls the TensorRT backend needs, over cuda-python or pycuda.

JetPack, pip wheels and older installs differ in which CUDA binding is present:
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6) or
pycuda. Both are wrapped behind one small set of methods, so the backend is
written once. Device pointers are plain ``int`` everywhere; host buffers are
page-locked numpy arrays (needed for truly asynchronous copies).

Nothing here is imported at module load: the runtime imports on machines
without CUDA, and :func:`open_cuda` says what is missing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from leukedge.runtime.backends.base import BackendError, BackendUnavailable

CUDA_INSTALL_HINT = (
    "install cuda-python matching the CUDA major version of the NVIDIA driver "
    "(pip install 'cuda-python>=12,<13' for a CUDA 12 driver, 'cuda-python>=13' for CUDA 13; "
    "`nvidia-smi` shows the driver's CUDA version) or pycuda"
)


_GRAPH_HINT = "pip install 'cuda-python>=12,<13' (CUDA 12 driver) or run without cuda_graph"


class CudaUnavailable(BackendUnavailable):
    """No usable CUDA binding or device; the message lists what each binding said."""


class CudaError(BackendError):
    """A CUDA call that failed while the backend was running."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "major.minor"
    total_memory_mb: int
    cuda_driver_version: str | None  # the CUDA version the driver supports, e.g. "12.4"
    library: str


class CudaApi(Protocol):
    """What the TensorRT backend asks of a CUDA binding."""

    library: str
    device: int

    def device_info(self) -> DeviceInfo: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def host_empty(self, count: int, dtype: Any) -> np.ndarray: ...
    def host_free(self, array: np.ndarray) -> None: ...
    def stream_create(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def stream_synchronize(self, stream: Any) -> None: ...
    def stream_destroy(self, stream: Any) -> None: ...
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def event_create(self) -> Any: ...
    def event_record(self, event: Any, stream: Any) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...
    def event_destroy(self, event: Any) -> None: ...
    def stream_begin_capture(self, stream: Any) -> None: ...
    def stream_end_capture(self, stream: Any) -> Any: ...
    def graph_instantiate(self, graph: Any) -> Any: ...
    def graph_launch(self, graph_exec: Any, stream: Any) -> None: ...
    def graph_destroy(self, graph: Any, graph_exec: Any) -> None: ...
    def close(self) -> None: ...


def _version_text(v: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor (12040 -> "12.4")."""
    return f"{v // 1000}.{(v % 1000) // 10}"


class CudaPythonApi:
    """cuda-python's runtime module: every call returns ``(cudaError_t, *results)``."""

    library = "cuda-python"

    def __init__(self, rt: Any, device: int = 0) -> None:
        self.rt = rt
        self.device = device
        self._call("cudaSetDevice", device)

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        err, values = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name} failed: {self._describe(err)}")
        return values[0] if len(values) == 1 else values

    def _describe(self, err: Any) -> str:
        try:
            text = self.rt.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
            return f"{getattr(err, 'name', err)} ({text})"
        except Exception:  # the error string is a courtesy; never hide the original error
            return str(err)

    def device_info(self) -> DeviceInfo:
        prop = self._call("cudaGetDeviceProperties", self.device)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else prop.name
        driver = self._call("cudaDriverGetVersion")
        return DeviceInfo(
            index=self.device,
            name=name.rstrip("\x00").strip(),
            compute_capability=f"{prop.major}.{prop.minor}",
            total_memory_mb=int(prop.totalGlobalMem) >> 20,
            cuda_driver_version=_version_text(int(driver)),
            library=self.library,
        )

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def host_empty(self, count: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, count * dtype.itemsize)
        ptr = int(self._call("cudaMallocHost", nbytes))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype, count=count)

    def host_free(self, array: np.ndarray) -> None:
        self._call("cudaFreeHost", array.ctypes.data)

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def event_create(self) -> Any:
        return self._call("cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", start, end))

    def event_destroy(self, event: Any) -> None:
        self._call("cudaEventDestroy", event)

    # CUDA graphs: one captured launch replaces the engine's many kernel launches.
    def stream_begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def stream_end_capture(self, stream: Any) -> Any:
        return self._call("cudaStreamEndCapture", stream)

    def graph_instantiate(self, graph: Any) -> Any:
        return self._call("cudaGraphInstantiate", graph, 0)

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        if graph_exec is not None:
            self._call("cudaGraphExecDestroy", graph_exec)
        if graph is not None:
            self._call("cudaGraphDestroy", graph)

    def close(self) -> None:
        """cuda-python works on the primary context of the device: nothing to release."""


class PyCudaApi:
    """pycuda's driver module; its objects own their memory, so they are kept by pointer."""

    library = "pycuda"

    def __init__(self, drv: Any, device: int = 0) -> None:
        self.drv = drv
        self.device = device
        drv.init()
        self._dev = drv.Device(device)
        # The primary context is the one TensorRT (CUDA runtime API) uses, so both share memory.
        self._ctx = self._dev.retain_primary_context()
        self._ctx.push()
        self._allocs: dict[int, Any] = {}

    def device_info(self) -> DeviceInfo:
        major, minor = self._dev.compute_capability()
        return DeviceInfo(
            index=self.device,
            name=str(self._dev.name()).strip(),
            compute_capability=f"{major}.{minor}",
            total_memory_mb=int(self._dev.total_memory()) >> 20,
            cuda_driver_version=_version_text(int(self.drv.get_driver_version())),
            library=self.library,
        )

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def host_empty(self, count: int, dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(count, np.dtype(dtype))

    def host_free(self, array: np.ndarray) -> None:
        free = getattr(array.base, "free", None)  # pycuda's HostAllocation, not an ndarray
        if free is not None:
            free()

    def stream_create(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        """pycuda destroys a stream when the object goes away."""

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def event_create(self) -> Any:
        return self.drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.time_till(end))

    def event_destroy(self, event: Any) -> None:
        """pycuda destroys an event when the object goes away."""

    def stream_begin_capture(self, stream: Any) -> None:
        raise CudaError("CUDA graph capture is implemented over cuda-python only; " + _GRAPH_HINT)

    def stream_end_capture(self, stream: Any) -> Any:
        raise CudaError("CUDA graph capture is implemented over cuda-python only; " + _GRAPH_HINT)

    def graph_instantiate(self, graph: Any) -> Any:
        raise CudaError("CUDA graph capture is implemented over cuda-python only; " + _GRAPH_HINT)

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise CudaError("CUDA graph capture is implemented over cuda-python only; " + _GRAPH_HINT)

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        """Nothing was captured."""

    def close(self) -> None:
        for alloc in self._allocs.values():
            alloc.free()
        self._allocs.clear()
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None


def _import_cuda_python_runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python before 12.6
    return runtime


def _open_cuda_python(device: int) -> CudaApi:
    return CudaPythonApi(_import_cuda_python_runtime(), device)


def _open_pycuda(device: int) -> CudaApi:
    import pycuda.driver as drv

    return PyCudaApi(drv, device)


OPENERS = {"cuda-python": _open_cuda_python, "pycuda": _open_pycuda}


def open_cuda(device: int = 0, prefer: str | None = None) -> CudaApi:
    """The first CUDA binding that works on ``device`` (cuda-python, then pycuda)."""
    order = list(OPENERS)
    if prefer:
        if prefer not in OPENERS:
            raise ValueError(f"unknown CUDA binding {prefer!r}; use one of {order}")
        order = [prefer] + [n for n in order if n != prefer]
    failures = []
    for name in order:
        try:
            return OPENERS[name](device)
        except ImportError as e:
            failures.append(f"{name}: not installed ({e.name or e})")
        except Exception as e:  # no driver, no device, driver too old for the binding
            failures.append(f"{name}: {type(e).__name__}: {e}")
    raise CudaUnavailable(
        f"no usable CUDA binding for device {device} ({'; '.join(failures)}); {CUDA_INSTALL_HINT}"
    )


def device_info(device: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of ``device`` through whichever binding works."""
    api = open_cuda(device)
    try:
        return api.device_info()
    finally:
        api.close()
