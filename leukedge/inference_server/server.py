"""``leukedge serve``: a run's Classifier on a real Triton Inference Server, started from Python.

PyTriton's wheel bundles the ``tritonserver`` binary and its Python backend, so a
machine without the full server (no container, no GPU) serves the model with
Triton's dynamic batcher and its HTTP/gRPC protocols. The model takes the
preprocessed float32 batch and answers ``logits`` (and ``features`` where the
model has them), exactly what the ``triton://`` backend sends and reads.

Two traps are handled here rather than left to the user:

- PyTriton's Python-backend stub links ``libpython3.X.so.1.0``. The loader finds the
  system's copy first; under an interpreter with its own libpython of another patch
  release (pyenv's 3.11.7 beside Debian's 3.11.2) the model fails to load
  (``'_thread.RLock' object has no attribute '_recursion_count'``). The server is
  started with the running interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH``.
- PyTriton 0.7 requires numpy < 2; with numpy 2 its server answers empty tensors.
  Such an environment is refused with what to do.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.inference_server.repository import default_model_name, preferred_batch_sizes
from leukedge.runtime.backends.base import BackendUnavailable
from leukedge.runtime.classifier import Classifier
from leukedge.spec import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME
from leukedge.validate import UsageError

INSTALL_HINT = "pip install 'leukedge[triton]' (in its own environment: PyTriton 0.7 needs numpy<2)"
STUB_ERRORS = ("_recursion_count", "Stub process", "stub", "libpython")


class ServeError(RuntimeError):
    """The server could not start; the message says why and what to do."""

    exit_code = 1


@dataclass(frozen=True)
class ServeOptions:
    """Where the server listens and how it batches."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    queue_delay_us: int = 500
    instances: int = 1
    name: str | None = None

    def __post_init__(self) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if any(not 1 <= p <= 65535 for p in ports) or len(set(ports)) != 3:
            raise UsageError(
                f"--http-port, --grpc-port and --metrics-port must be three different ports "
                f"in [1, 65535], got {ports}"
            )
        if not 1 <= self.max_batch <= 4096:
            raise UsageError(f"--max-batch must be in [1, 4096], got {self.max_batch}")


def pytriton_problem() -> str | None:
    """Why PyTriton cannot serve from this environment, or None."""
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return f"PyTriton is not installed: {INSTALL_HINT}"
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        return (
            f"PyTriton 0.7 requires numpy < 2 (numpy {np.__version__} is installed; with it "
            f"the server answers empty tensors): {INSTALL_HINT}"
        )
    return None


def libpython_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` with this interpreter's libpython folder first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if environ is None else environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not libdir or ".so" not in soname or not (Path(libdir) / soname).exists():
        return env  # a static interpreter: the stub takes the system's libpython
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if parts[:1] != [libdir]:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])
    return env


def stub_failure(log: Path) -> str | None:
    """The Python-backend stub's error from the server log, if that is why the model failed."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if any(key in line for key in STUB_ERRORS) and ("rror" in line or "fail" in line):
            return line.strip()[:400]
    return None


def infer_function(clf: Classifier) -> Callable[..., dict[str, np.ndarray]]:
    """The batched function Triton calls: the stacked requests in, logits (+ features) out."""

    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[INPUT_NAME], dtype=np.float32)
        logits, features = clf.infer_outputs(x)
        out = {OUTPUT_NAME: np.asarray(logits, dtype=np.float32)}
        if features is not None:
            out[FEATURES_NAME] = np.asarray(features, dtype=np.float32)
        return out

    return infer


def output_shapes(clf: Classifier) -> dict[str, tuple[int, ...]]:
    """Per-image shapes of the outputs, from one run of a blank image."""
    probe = np.zeros((1, *clf.spec.input_shape), dtype=np.float32)
    logits, features = clf.infer_outputs(probe)
    shapes = {OUTPUT_NAME: tuple(logits.shape[1:])}
    if features is not None:
        shapes[FEATURES_NAME] = tuple(features.shape[1:])
    return shapes


def serve(
    run: str | Path,
    backend: str = "auto",
    device: str = "auto",
    options: ServeOptions | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop_after_s: float | None = None,
) -> dict[str, Any]:
    """Serve ``run`` until Ctrl-C or SIGTERM (or ``stop_after_s``); returns what was served."""
    options = options or ServeOptions()
    problem = pytriton_problem()
    if problem:
        raise BackendUnavailable(problem)
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        Triton,
        TritonConfig,
        TritonSecurityConfig,
    )

    clfs = [
        Classifier.load(run, backend, device, batch=options.max_batch)
        for _ in range(options.instances)
    ]
    spec = clfs[0].spec
    name = options.name or default_model_name(spec)
    shapes = output_shapes(clfs[0])
    info = {
        "model": name,
        "backend": clfs[0].backend.name,
        "artifact": clfs[0].selection.artifact,
        "host": options.host,
        "http": f"{options.host}:{options.http_port}",
        "grpc": f"{options.host}:{options.grpc_port}",
        "max_batch": options.max_batch,
        "preferred_batch_sizes": preferred_batch_sizes(options.max_batch),
        "queue_delay_us": options.queue_delay_us,
        "instances": options.instances,
        "outputs": list(shapes),
        "url": f"triton://{options.host}:{options.grpc_port}/{name}",
    }
    os.environ.update(libpython_env())  # tritonserver and its stubs inherit it
    log_dir = Path(tempfile.mkdtemp(prefix="leukedge-serve-"))
    log = log_dir / "tritonserver.log"
    config = TritonConfig(
        http_address=options.host,
        http_port=options.http_port,
        grpc_address=options.host,
        grpc_port=options.grpc_port,
        metrics_address=options.host,
        metrics_port=options.metrics_port,
        allow_metrics=False,
        log_file=log,
    )
    model_config = ModelConfig(
        max_batch_size=options.max_batch,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=options.queue_delay_us,
            preferred_batch_size=preferred_batch_sizes(options.max_batch),
        ),
    )
    funcs = [batch(infer_function(c)) for c in clfs]
    # Statistics (request and batch counters) stay readable without PyTriton's token, so a
    # client can see the batches the server formed; repository, shared memory, trace and
    # logging stay behind it.
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    )
    previous = _on_sigterm(_raise_interrupt)
    try:
        with Triton(config=config, security_config=security) as triton:
            try:  # the server is up once the context is entered: bind loads the model
                triton.bind(
                    model_name=name,
                    infer_func=funcs if len(funcs) > 1 else funcs[0],
                    inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=spec.input_shape)],
                    outputs=[Tensor(name=k, dtype=np.float32, shape=v) for k, v in shapes.items()],
                    config=model_config,
                    strict=True,
                )
                triton.run()
            except Exception as e:
                raise ServeError(_why_not_started(e, log)) from None
            if on_ready is not None:
                on_ready(info)
            started = time.monotonic()
            while triton.is_alive():
                if stop_after_s is not None and time.monotonic() - started > stop_after_s:
                    break
                time.sleep(0.5)
            else:
                raise ServeError(
                    "the Triton server stopped by itself: " + (stub_failure(log) or f"see {log}")
                )
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            _on_sigterm(previous)
        for c in clfs:
            c.close()
    return info


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM where this thread may (the main thread); the old one."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _why_not_started(e: BaseException, log: Path) -> str:
    text = " ".join(str(e).split())
    stub = _stub_line(str(e)) or stub_failure(log)
    if stub:
        return (
            f"the Triton Python-backend stub could not start ({stub}); it links "
            f"libpython{sysconfig.get_python_version()}, and the one it found is not this "
            f"interpreter's ({sys.executable}, LIBDIR {sysconfig.get_config_var('LIBDIR')}): "
            "run leukedge from a Python whose shared libpython is installed (the system's "
            "python3, or pyenv built with --enable-shared)"
        )
    if "address" in text.lower() and "use" in text.lower():
        return (
            f"a port is already in use ({text[:300]}): choose others with --http-port/--grpc-port"
        )
    return f"the Triton server did not start ({text[:300] or type(e).__name__}); its log: {log}"


def _stub_line(text: str) -> str | None:
    """The line of an error that shows the stub ran against another libpython."""
    lines = [ln.strip() for ln in text.splitlines()]
    for line in [*(ln for ln in lines if "Error" in ln), *lines]:
        if "_recursion_count" in line or "libpython" in line:
            return line[:300]
    return None
