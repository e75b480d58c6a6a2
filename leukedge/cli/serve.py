"""`leukedge serve`: a run's classifier on a Triton Inference Server started from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from leukedge.cli import params
from leukedge.cli.common import app, console, friendly_errors


@app.command()
@friendly_errors
def serve(
    run: Path = typer.Argument(
        ..., exists=True, help="Run dir (or export folder, .onnx) whose classifier to serve."
    ),
    backend: str = typer.Option(
        "auto",
        callback=params.backend(),
        help="The backend the server runs: auto | ort | trt | ort-fp32, ort-int8, trt-fp16...",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N", callback=params.device()),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0: every interface; mind who can reach it)."
    ),
    http_port: int = typer.Option(8000, "--http-port", min=1, max=65535),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=1, max=65535),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=1, max=65535),
    max_batch: int = typer.Option(
        32, "--max-batch", min=1, max=4096, help="Largest batch Triton's dynamic batcher forms."
    ),
    queue_delay_us: int = typer.Option(
        500,
        "--queue-delay-us",
        min=0,
        max=10_000_000,
        help="How long the batcher waits for more requests (microseconds).",
    ),
    instances: int = typer.Option(
        1, min=1, max=16, help="Model instances (each its own backend) serving in parallel."
    ),
    name: str | None = typer.Option(None, help="Model name (default leukedge-<arch>)."),
) -> None:
    """Serve a run's classifier on a real Triton Inference Server (PyTriton), until Ctrl-C.

    The model takes preprocessed float32 batches and answers logits (and features): run
    the microscope side with `leukedge run RUN --backend triton://HOST:GRPC_PORT/NAME`.
    Needs the [triton] extra (PyTriton's wheel bundles tritonserver; CPU is enough).
    Example: leukedge serve runs/r50 --backend ort-fp32 --grpc-port 8001
    """
    from leukedge.inference_server.server import ServeOptions, pytriton_problem
    from leukedge.inference_server.server import serve as serve_run
    from leukedge.runtime.backends.base import BackendUnavailable

    options = ServeOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        queue_delay_us=queue_delay_us,
        instances=instances,
        name=name,
    )

    def ready(info: dict[str, Any]) -> None:
        console.print(
            f"serving [bold]{escape(info['model'])}[/] ({escape(info['backend'])}, outputs "
            f"{', '.join(info['outputs'])}) on http://{escape(info['http'])} and "
            f"grpc {escape(info['grpc'])}; dynamic batching up to {info['max_batch']} "
            f"(preferred {info['preferred_batch_sizes']}, queue delay {info['queue_delay_us']} us)"
        )
        console.print(
            f"classify against it: leukedge run {escape(str(run))} --backend "
            f"{escape(info['url'])} --source ...   (Ctrl-C stops the server)",
            soft_wrap=True,
        )

    problem = pytriton_problem()
    if problem:
        raise BackendUnavailable(problem)
    console.print("starting Triton Inference Server (a few seconds)")
    serve_run(run, backend, device, options, on_ready=ready)
    console.print("server stopped")
