"""A model on a Triton Inference Server behind the :class:`Backend` interface.

The cell finder and the one preprocessing function stay next to the microscope;
only the preprocessed float32 batch travels, as one request per batch, so every
server-side backend (ONNX Runtime, TensorRT, a Python model) sees exactly the
tensors a local backend would. ``tritonclient`` is imported when a backend is
opened, never at import time: the runtime runs without it.

A server that goes away mid-run is retried (``retries`` times, waiting
``retry_wait_s`` more each time); after that :class:`BackendLost` ends the run the
way a camera that drops out does: cleanly, with everything written so far.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from leukedge.artifacts import TritonTarget, parse_triton_url
from leukedge.runtime.backends.base import BackendError, BackendUnavailable, check_batch
from leukedge.spec import FEATURES_NAME, OUTPUT_NAME, ModelSpec, SpecError

SPEC_PARAMETER = "leukedge.spec"  # the ModelSpec JSON, in the model's config parameters
PRECISION_PARAMETER = "leukedge.precision"
INSTALL_HINT = "pip install 'tritonclient[grpc,http]' (or 'leukedge[triton]')"
# gRPC status codes and HTTP failures that say the request itself is wrong: retrying cannot help.
_NOT_RETRIED = ("INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "400", "404")


class BackendLost(BackendError):
    """The server stopped answering mid-run: the run ends cleanly, like a camera that drops out."""

    ends_run = True


def import_client(protocol: str) -> Any:
    """``tritonclient.grpc`` or ``tritonclient.http``, or why it is missing."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as e:
        raise BackendUnavailable(
            f"the Triton backend needs tritonclient ({e.name or e}): {INSTALL_HINT}"
        ) from None
    return client


def config_parameter(config: dict[str, Any], key: str) -> str | None:
    """A string parameter of a model config (gRPC and HTTP give the same JSON shape)."""
    value = (config.get("parameters") or {}).get(key) or {}
    text = value.get("string_value") if isinstance(value, dict) else None
    return str(text) if text else None


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


class TritonBackend:
    """Batches of preprocessed cells sent to one model of a Triton Inference Server.

    ``spec``: the ModelSpec of the local run (how crops are preprocessed). Where
    the server's model config states its own (parameter ``leukedge.spec``, written by
    ``leukedge export --triton-repo``), the two must agree; a server that states
    none is taken at the local spec's word, its input shape checked against it.
    """

    def __init__(
        self,
        target: TritonTarget | str,
        spec: ModelSpec | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        retry_wait_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target if isinstance(target, TritonTarget) else parse_triton_url(target)
        self.name = self.target.url
        self.device = f"{self.target.protocol}://{self.target.address}"
        self.path = self.target.url  # what the bench lists as the artifact
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.retry_wait_s = max(0.0, float(retry_wait_s))
        self._sleep = sleep
        self.requests = 0
        self.retried = 0
        self._module = import_client(self.target.protocol)
        self.client: Any = self._connect()
        self.config = self._model_config()
        self.input_name, dims, self.max_batch = self._input()
        outputs = [str(o.get("name")) for o in self.config.get("output") or []]
        if not outputs:
            raise BackendError(f"{self.name}: the model config lists no outputs")
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.features_name: str | None = FEATURES_NAME if FEATURES_NAME in outputs else None
        self.spec = self._agreed_spec(spec)
        if dims is not None and tuple(dims) != self.spec.input_shape:
            raise BackendError(
                f"{self.name} takes inputs {list(dims)} but the spec says "
                f"{list(self.spec.input_shape)}: the server runs another model"
            )
        # what the server states (a repository written by leukedge); "remote" where it does not
        self.precision: str = config_parameter(self.config, PRECISION_PARAMETER) or "remote"

    # ---------------------------------------------------------------- connecting

    def _connect(self) -> Any:
        module = self._module
        try:
            if self.target.protocol == "grpc":
                client = module.InferenceServerClient(url=self.target.address)
            else:
                client = module.InferenceServerClient(
                    url=self.target.address,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                )
        except Exception as e:
            raise BackendError(
                f"cannot reach Triton at {self.target.address}: {_first_line(e)}"
            ) from None
        return client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with retries; :class:`BackendLost` once the server has stopped answering."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as e:
                text = _first_line(e)
                status = str(getattr(e, "status", lambda: "")() or "")
                if any(code in status for code in _NOT_RETRIED):
                    raise BackendError(f"{self.name} refused the {what}: {text}") from None
                if attempt >= self.retries:
                    raise BackendLost(
                        f"{self.name} did not answer the {what} after {attempt + 1} tries "
                        f"({text}); is the server running?"
                    ) from None
                attempt += 1
                self.retried += 1
                self._sleep(self.retry_wait_s * attempt)

    def _model_config(self) -> dict[str, Any]:
        version = self.target.version
        model = self.target.model

        def ready() -> bool:
            return bool(self.client.is_model_ready(model, version))

        try:
            is_ready = self._call("readiness check", ready)
        except BackendLost as e:
            raise BackendError(str(e)) from None
        if not is_ready:
            raise BackendError(
                f"Triton at {self.target.address} has no ready model {model!r}"
                + (f" version {version}" if version else "")
                + " (its log says why; `curl HOST:HTTP_PORT/v2/repository/index` lists the models)"
            )
        if self.target.protocol == "grpc":
            raw = self._call(
                "config request", lambda: self.client.get_model_config(model, version, as_json=True)
            )
            raw = raw.get("config", raw)
        else:
            raw = self._call("config request", lambda: self.client.get_model_config(model, version))
        if not isinstance(raw, dict):
            raise BackendError(f"{self.name}: the server's model config is unreadable")
        return raw

    def _input(self) -> tuple[str, tuple[int, ...] | None, int | None]:
        """(input name, dims of one image or None when not fixed, largest batch or None)."""
        inputs = self.config.get("input") or []
        if len(inputs) != 1:
            raise BackendError(
                f"{self.name} has {len(inputs)} inputs: a leukedge classifier takes one image batch"
            )
        first = inputs[0]
        dims = [int(d) for d in first.get("dims") or []]
        max_batch = int(self.config.get("max_batch_size") or 0)
        if max_batch > 0:
            image = dims
            limit: int | None = max_batch
        else:  # no batching by Triton: the batch is the first dimension of the model itself
            image = dims[1:]
            limit = dims[0] if dims and dims[0] > 0 else None
        fixed = tuple(image) if image and all(d > 0 for d in image) else None
        if first.get("data_type") not in (None, "TYPE_FP32"):
            raise BackendError(
                f"{self.name} takes {first.get('data_type')} input: leukedge sends float32 tensors"
            )
        return str(first.get("name")), fixed, limit

    def _agreed_spec(self, local: ModelSpec | None) -> ModelSpec:
        text = config_parameter(self.config, SPEC_PARAMETER)
        server: ModelSpec | None = None
        if text:
            try:
                server = ModelSpec.from_json(text)
            except SpecError as e:
                raise BackendError(
                    f"{self.name}: its leukedge.spec parameter is unusable: {e}"
                ) from None
        if local is not None and server is not None and local != server:
            raise BackendError(
                f"{self.name} serves another model: its spec (config parameter {SPEC_PARAMETER}) "
                "differs from the local run's spec.json; serve this run, or run the run it serves"
            )
        spec = local or server
        if spec is None:
            raise BackendError(
                f"{self.name} does not state its ModelSpec: give the run dir it was made from "
                "(`leukedge run RUN --backend triton://...`) so cells are preprocessed alike"
            )
        return spec

    # ---------------------------------------------------------------- inference

    def _infer(self, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        module = self._module
        inp = module.InferInput(self.input_name, list(x.shape), "FP32")
        if self.target.protocol == "http":
            inp.set_data_from_numpy(x, binary_data=True)
            wanted = [module.InferRequestedOutput(n, binary_data=True) for n in outputs]
        else:
            inp.set_data_from_numpy(x)
            wanted = [module.InferRequestedOutput(n) for n in outputs]
        kwargs: dict[str, Any] = {"model_version": self.target.version, "outputs": wanted}
        if self.target.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s

        def request() -> Any:
            return self.client.infer(self.target.model, [inp], **kwargs)

        result = self._call("inference request", request)
        self.requests += 1
        out = {}
        for name in outputs:
            arr = result.as_numpy(name)
            if arr is None or len(arr) != len(x):
                raise BackendError(
                    f"{self.name} answered {0 if arr is None else len(arr)} rows of {name!r} "
                    f"for {len(x)} images"
                )
            out[name] = np.asarray(arr, dtype=np.float32)
        return out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = check_batch(batch, self.spec, self.max_batch)
        return self._infer(x, [self.output_name])[self.output_name]

    def infer_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and penultimate features in one request (None where the model has none)."""
        if self.features_name is None:
            return self.infer(batch), None
        x = check_batch(batch, self.spec, self.max_batch)
        out = self._infer(x, [self.output_name, self.features_name])
        return out[self.output_name], out[self.features_name]

    def batch_statistics(self) -> dict[int, int]:
        """How many batches of each size the server ran for this model (its statistics)."""
        if self.target.protocol == "grpc":
            stats = self.client.get_inference_statistics(
                self.target.model, self.target.version, as_json=True
            )
        else:
            stats = self.client.get_inference_statistics(self.target.model, self.target.version)
        return batch_counts(stats)

    def synchronize(self) -> None:
        """Each request returns host arrays: nothing is left queued."""

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a server already gone: nothing to close
                client.close()

    def __repr__(self) -> str:
        return f"TritonBackend({self.name!r})"


def batch_counts(stats: dict[str, Any]) -> dict[int, int]:
    """{batch size: batches executed} from Triton's statistics JSON (gRPC or HTTP form)."""
    counts: dict[int, int] = {}
    for model in stats.get("model_stats") or []:
        for entry in model.get("batch_stats") or []:
            size = int(entry.get("batch_size") or 0)
            done = int((entry.get("compute_infer") or {}).get("count") or 0)
            if size > 0 and done:
                counts[size] = counts.get(size, 0) + done
    return dict(sorted(counts.items()))
