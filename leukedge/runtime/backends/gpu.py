"""Which NVIDIA GPU and TensorRT are here: the one probe the builder, runtime and bench share.

A CUDA binding (cuda-python or pycuda) is asked first, for the exact compute
capability of the device that will run the engine; ``nvidia-smi`` (through
:func:`leukedge.machine.nvidia_gpus`, the same query bench reports use) is the
fallback. Nothing here imports TensorRT until :func:`require_target` is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from leukedge.machine import nvidia_gpus
from leukedge.runtime.backends.cuda_mem import CudaUnavailable
from leukedge.runtime.backends.cuda_mem import device_info as cuda_device_info
from leukedge.runtime.backends.engine_plan import (
    TENSORRT_INSTALL_HINT,
    TensorRTUnavailable,
    sm_tag,
)
from leukedge.runtime.backends.trt import import_tensorrt


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "major.minor"
    driver: str | None  # "CUDA 12.4" from a CUDA binding, or the driver release from nvidia-smi
    total_memory_mb: int | None
    source: str  # "cuda-python" | "pycuda" | "nvidia-smi"

    @property
    def sm(self) -> str:
        return sm_tag(self.compute_capability)


def _probe_gpu(device: int = 0) -> tuple[GpuInfo | None, str]:
    """The GPU through a CUDA binding, else nvidia-smi; with why neither worked."""
    try:
        info = cuda_device_info(device)
        driver = f"CUDA {info.cuda_driver_version}" if info.cuda_driver_version else None
        gpu = GpuInfo(
            info.name, info.compute_capability, driver, info.total_memory_mb, info.library
        )
        return gpu, ""
    except CudaUnavailable as e:
        binding_reason = str(e)
    smi, smi_reason = _nvidia_smi(device)
    return (smi, "") if smi else (None, f"{binding_reason}; nvidia-smi: {smi_reason}")


def _nvidia_smi(device: int) -> tuple[GpuInfo | None, str]:
    gpus = nvidia_gpus()
    if not gpus:
        return None, "not found or no GPU listed"
    match = [g for g in gpus if g.get("index") == str(device)]
    if not match:
        return None, f"no GPU with index {device} (have {len(gpus)})"
    g = match[0]
    if not g.get("compute_cap"):
        return None, "this nvidia-smi does not report the compute capability"
    memory = g.get("memory_mb")
    return (
        GpuInfo(
            g["name"],
            g["compute_cap"],
            g.get("driver"),
            int(memory) if memory else None,
            "nvidia-smi",
        ),
        "",
    )


def gpu_info(device: int = 0) -> GpuInfo | None:
    """Name, compute capability and driver of GPU ``device``, or None without one."""
    return _probe_gpu(device)[0]


def trt_available(device: int = 0) -> tuple[bool, str]:
    """(True, "TensorRT 10.3.0 on Orin (sm87)") or (False, why and how to install)."""
    try:
        trt, gpu = require_target(device)
    except TensorRTUnavailable as e:
        return False, str(e)
    return True, f"TensorRT {trt.__version__} on {gpu.name} ({gpu.sm})"


def require_target(device: int = 0) -> tuple[ModuleType, GpuInfo]:
    """TensorRT and the GPU to build for, or :class:`TensorRTUnavailable` before any work."""
    trt = import_tensorrt()
    gpu, why = _probe_gpu(device)
    if gpu is None:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is installed but no NVIDIA GPU could be found ({why}). "
            f"{TENSORRT_INSTALL_HINT}"
        )
    return trt, gpu
