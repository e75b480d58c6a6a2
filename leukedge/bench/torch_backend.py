"""The PyTorch original behind the :class:`~leukedge.runtime.backends.base.Backend` interface.

The bench measures every compiled artifact against the model it came from, so
PyTorch must be a backend like the others: same batches, same timing code. It
runs fp32 in eval mode under ``torch.inference_mode``. On a GPU, TF32 is
switched off (a reference must be fp32, not ~fp19), ``synchronize`` waits for
the device and a pair of CUDA events times the forward pass alone
(``last_device_ms``, as :class:`~leukedge.runtime.backends.trt.TrtBackend` does).

Torch is imported only when a backend is created: the bench runs on a Jetson
that has just the runtime, and falls back to ``ort-fp32`` as the reference there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukedge.runtime.backends.base import BackendUnavailable, check_batch
from leukedge.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn


def torch_unavailable_reason() -> str | None:
    """Why PyTorch cannot be the reference here (None when it can be imported)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch is not installed (a runtime-only install, e.g. on a Jetson)"
    except Exception as e:  # a broken install is reported, not raised
        return f"PyTorch fails to import: {type(e).__name__}: {e}"
    return None


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda:0`` when a CUDA device is usable, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"torch on {device}: this PyTorch build sees no CUDA device")
        return device if ":" in device else "cuda:0"
    if device != "cpu":
        raise ValueError(f"torch device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


class TorchBackend:
    """A PyTorch module in eval mode, fp32, on CPU or one CUDA device."""

    precision = "fp32"
    max_batch: int | None = None

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        device: str = "auto",
        threads: int | None = None,
        name: str = "torch",
    ) -> None:
        import torch

        self._torch = torch
        self.spec = spec
        self.name = name
        self.device = resolve_device(device)
        self.last_device_ms: float | None = None
        if threads:
            torch.set_num_threads(threads)
        self._cuda = self.device.startswith("cuda")
        self._events: tuple[Any, Any] | None = None
        if self._cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self._events = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
        self.model: Any = model.to(self.device).float().eval()

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str = "auto", threads: int | None = None
    ) -> TorchBackend:
        """The run's best checkpoint (``load_run_model``) as a backend."""
        from leukedge.rundir import RunDir

        run = RunDir(run_dir)
        from leukedge.train.models import load_run_model

        return cls(load_run_model(run), run.spec(), device=device, threads=threads)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(check_batch(batch, self.spec, self.max_batch))
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            if self._events is None:
                return self.model(x).float().numpy()
            start, end = self._events
            start.record()
            out = self.model(x)
            end.record()
            logits = out.float().cpu().numpy()  # waits for the forward pass
            end.synchronize()
            self.last_device_ms = float(start.elapsed_time(end))
            return logits

    def synchronize(self) -> None:
        if self._cuda:
            self._torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.model = None
        if self._cuda:
            self._torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"TorchBackend({self.name}, device={self.device})"
