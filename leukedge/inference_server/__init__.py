"""Serving leukedge models from Triton Inference Server.

:mod:`~leukedge.inference_server.repository` writes a standard Triton model repository from a
run (the ONNX files and the TensorRT engines, each with its ``config.pbtxt``);
:mod:`~leukedge.inference_server.server` serves a run's :class:`~leukedge.runtime.Classifier`
from Python through PyTriton where the full server is not installed. The client
side, ``triton://HOST:PORT/MODEL``, is a runtime backend
(:mod:`leukedge.runtime.backends.triton`).
"""
