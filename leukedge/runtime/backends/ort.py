"""ONNX Runtime backend: any ``.onnx`` leukedge exported, on CPU, CUDA or TensorRT EP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.artifacts import precision_of_file
from leukedge.runtime.backends.base import BackendError, check_batch
from leukedge.spec import FEATURES_NAME, ONNX_METADATA_KEY, ModelSpec, SpecError

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def spec_from_onnx(path: str | Path) -> ModelSpec:
    """The ModelSpec embedded in an ONNX file's ``metadata_props``."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as e:
        raise BackendError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # protobuf DecodeError and friends: a truncated or foreign file
        raise BackendError(
            f"{path} is not a readable ONNX model (truncated or corrupt: {type(e).__name__}); "
            "export it again with `leukedge export RUN_DIR`"
        ) from None
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            try:
                return ModelSpec.from_json(prop.value)
            except SpecError as e:
                raise SpecError(f"{path}: the embedded leukedge spec is unusable: {e}") from None
    raise SpecError(
        f"{path} has no '{ONNX_METADATA_KEY}' metadata: it was not exported by leukedge "
        "(export it with `leukedge export RUN_DIR`)"
    )


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def check_graph_against_spec(path: Path, session: Any, spec: ModelSpec) -> None:
    """Refuse a graph whose input or output shape contradicts its spec.

    A spec with the wrong class count would name classes the model does not
    output; a wrong input size would feed it images it was not made for.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise BackendError(
            f"{path} has {len(inputs)} inputs and {len(outputs)} outputs: a leukedge "
            "classifier has one image input and one logits output"
        )
    shape_in = list(inputs[0].shape)
    expected = list(spec.input_shape)
    fixed = [(i, d) for i, d in enumerate(shape_in[1:]) if isinstance(d, int) and d > 0]
    if len(shape_in) != 4 or any(d != expected[i] for i, d in fixed):
        raise BackendError(
            f"{path} takes input {shape_in} but its spec says (N, {', '.join(map(str, expected))}); "
            "the spec does not belong to this graph: export the run again"
        )
    shape_out = list(outputs[0].shape)
    last = shape_out[-1] if shape_out else None
    wrong_classes = isinstance(last, int) and last > 0 and last != spec.num_classes
    if shape_out and (len(shape_out) != 2 or wrong_classes):
        raise BackendError(
            f"{path} outputs {shape_out} but its spec names {spec.num_classes} classes "
            f"{spec.classes}; the spec does not belong to this graph: export the run again"
        )


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
        try:
            self.session: Any = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, NotImplemented: the file cannot run
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise BackendError(
                f"ONNX Runtime cannot load {self.path} ({first}); export it again with "
                "`leukedge export RUN_DIR`"
            ) from None
        self.provider = self.session.get_providers()[0]
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda:0"
        self.name = f"ort-{self.precision}" + ("" if self.device == "cpu" else f"-{device}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.features_name: str | None = FEATURES_NAME if FEATURES_NAME in names else None
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        check_graph_against_spec(self.path, self.session, self.spec)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = check_batch(batch, self.spec, self.max_batch)
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(logits, dtype=np.float32)

    def infer_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and penultimate features from one run (features None for older files)."""
        if self.features_name is None:
            return self.infer(batch), None
        x = check_batch(batch, self.spec, self.max_batch)
        logits, feats = self.session.run(
            [self.output_name, self.features_name], {self.input_name: x}
        )
        return np.asarray(logits, dtype=np.float32), np.asarray(feats, dtype=np.float32)

    def synchronize(self) -> None:
        """ONNX Runtime's ``run`` returns host arrays: nothing is left queued."""

    def close(self) -> None:
        self.session = None

    def __repr__(self) -> str:
        return f"OrtBackend({str(self.path)!r}, provider={self.provider})"
