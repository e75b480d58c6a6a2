"""Compile a trained run for the edge: ONNX (FP32, FP16, INT8 Q/DQ) and TensorRT engines.

``export_run`` is loaded on first use so that importing a submodule (the TensorRT
engine planner on a Jetson, say) does not pull in the exporter's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "export_run"]


def __getattr__(name: str) -> Any:
    if name == "export_run":
        from leukedge.export.pipeline import export_run

        return export_run
    if name == "ExportError":
        from leukedge.export.onnx_export import ExportError

        return ExportError
    raise AttributeError(f"module 'leukedge.export' has no attribute {name!r}")
