"""ONNX Runtime backend: any ``.onnx`` leukedge exported, on CPU, CUDA or TensorRT EP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.artifacts import precision_of_file
from leukedge.runtime.backends.base import BackendError, check_batch
from leukedge.spec import ONNX_METADATA_KEY, ModelSpec, SpecError

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def spec_from_onnx(path: str | Path) -> ModelSpec:
    """The ModelSpec embedded in an ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelSpec.from_json(prop.value)
    raise SpecError(
        f"{path} has no '{ONNX_METADATA_KEY}' metadata: it was not exported by leukedge "
        "(export it with `leukedge export RUN_DIR`)"
    )


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtBackend:
    """One ``onnxruntime.InferenceSession`` behind the :class:`Backend` interface."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        spec: ModelSpec | None = None,
        spinning: bool = True,
    ) -> None:
        """``spinning=False`` stops idle worker threads from spinning after each run.

        ONNX Runtime's workers spin by default; in an interleaved measurement they
        would steal the cores of the backend timed next (on a 2-core CPU PyTorch
        measured ~20x slower beside spinning threads).
        """
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"no ONNX model at {self.path}")
        self.spec = spec or spec_from_onnx(self.path)
        self.precision = precision_of_file(self.path)
        wanted = PROVIDER_ALIASES.get(device, [device])
        have = set(ort.get_available_providers())
        providers = [p for p in wanted if p in have]
        if not providers or providers[0] != wanted[0]:
            raise BackendError(
                f"ONNX Runtime here has no {wanted[0]} (available: {sorted(have)}); "
                "use --device cpu or install onnxruntime-gpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is None:
            threads = int(os.environ.get("LEUKEDGE_ORT_THREADS", "0"))
        options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(str(self.path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda:0"
        self.name = f"ort-{self.precision}" + ("" if self.device == "cpu" else f"-{device}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = check_batch(batch, self.spec, self.max_batch)
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(logits, dtype=np.float32)

    def synchronize(self) -> None:
        """ONNX Runtime's ``run`` returns host arrays: nothing is left queued."""

    def close(self) -> None:
        self.session = None

    def __repr__(self) -> str:
        return f"OrtBackend({str(self.path)!r}, provider={self.provider})"
