"""Triton Inference Server: the model repository, the triton:// backend, `leukedge serve`.

The repository's configs are parsed with Triton's own protobuf schema (tritonclient ships
model_config.proto). The end-to-end test starts a real Triton server through PyTriton;
it is skipped, with the reason, where PyTriton cannot be installed or its server cannot
start (PyTriton 0.7 needs numpy < 2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_run_outputs import TwoCells, frames, tiny_onnx

from leukedge.artifacts import parse_backend, parse_triton_url
from leukedge.runtime.backends.base import BackendError
from leukedge.runtime.backends.triton import BackendLost, batch_counts
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.pipeline import run_pipeline
from leukedge.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- names


def test_triton_urls_parse_and_bad_ones_say_the_form() -> None:
    t = parse_triton_url("triton://127.0.0.1:8001/leukedge-cnn")
    assert (t.protocol, t.host, t.port, t.model, t.version) == (
        "grpc",
        "127.0.0.1",
        8001,
        "leukedge-cnn",
        "",
    )
    h = parse_triton_url("triton+http://lab-server/Leukedge.R50/3")
    assert (h.protocol, h.port, h.model, h.version) == ("http", 8000, "Leukedge.R50", "3")
    assert h.url == "triton+http://lab-server:8000/Leukedge.R50/3"
    b = parse_backend("triton://[::1]:9001/m")
    assert (b.family, b.name, b.precision) == ("triton", "triton://[::1]:9001/m", None)
    for bad in (
        "triton://host:8001",
        "triton://host:99999/m",
        "triton://:8001/m",
        "triton://host/m/v1",
        "triton://host/m?x=1",
        "triton+ftp://host/m",
        "triton://host/a b",
    ):
        with pytest.raises(ValueError, match=r"triton|version"):
            parse_backend(bad)


def test_bench_accepts_a_triton_url_and_keeps_its_case() -> None:
    from leukedge.bench.backends import BenchError, parse_backends

    names = parse_backends("ORT-FP32,triton://127.0.0.1:8001/Leukedge-CNN")
    assert names == ["ort-fp32", "triton://127.0.0.1:8001/Leukedge-CNN"]
    with pytest.raises(BenchError):
        parse_backends("triton://127.0.0.1:8001")


def test_statistics_give_the_batches_the_server_formed() -> None:
    stats = {
        "model_stats": [
            {
                "batch_stats": [
                    {"batch_size": "8", "compute_infer": {"count": "3"}},
                    {"batch_size": 1, "compute_infer": {"count": 5}},
                    {"batch_size": 2, "compute_infer": {}},
                ]
            }
        ]
    }
    assert batch_counts(stats) == {1: 5, 8: 3}


# ---------------------------------------------------------------- the model repository


def _parse_config(path: Path):  # type: ignore[no-untyped-def]
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed"
    )
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tiny_run(root: Path) -> Path:
    """A run dir whose three exports are a tiny graph answering logits and features (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = ModelSpec(arch="cnn", input_size=32, crop_style="context")
    w = numpy_helper.from_array(np.array([[1, -1, 0.5], [-1, 1, -0.5]], np.float32), "W")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "W", "B"], ["logits"], transB=1),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
    f = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y, f], [w, b]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "leukedge.spec", spec.to_json()
    (root / "export").mkdir(parents=True)
    for precision in ("fp32", "fp16", "int8"):
        model.doc_string = precision  # three files that differ, as the real ones do
        onnx.save(model, str(root / "export" / f"model.{precision}.onnx"))
    spec.save(root / "spec.json")
    return root


@pytest.fixture()
def repo_run(tmp_path: Path) -> Path:
    return tiny_run(tmp_path / "run")


def test_repository_configs_parse_with_tritons_schema(repo_run: Path, tmp_path: Path) -> None:
    from leukedge.inference_server.repository import MARKER, RepoOptions, write_repository

    out = tmp_path / "repo"
    result = write_repository(repo_run, out, RepoOptions(max_batch=16, queue_delay_us=250))
    spec = ModelSpec.load(repo_run / "spec.json")
    names = [m["name"] for m in result.models]
    assert names == [f"leukedge-{spec.arch}-onnx-{p}" for p in ("fp32", "fp16", "int8")]
    for name in names:
        config = _parse_config(out / name / "config.pbtxt")
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert [(i.name, list(i.dims)) for i in config.input] == [
            ("input", [3, spec.input_size, spec.input_size])
        ]
        assert [o.name for o in config.output] == ["logits", "features"]
        assert list(config.output[0].dims) == [spec.num_classes]
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        assert config.instance_group[0].count == 1
        assert ModelSpec.from_json(config.parameters["leukedge.spec"].string_value) == spec
        precision = config.parameters["leukedge.precision"].string_value
        copied = out / name / "1" / "model.onnx"
        assert copied.read_bytes() == (repo_run / "export" / f"model.{precision}.onnx").read_bytes()
    assert json.loads((out / MARKER).read_text())["models"][0]["name"] == names[0]
    readme = (out / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and f"/{names[0]}" in readme


def test_an_older_logits_only_export_gets_one_output(tmp_path: Path) -> None:
    from leukedge.inference_server.repository import write_repository

    run = tmp_path / "run"
    onnx = tiny_onnx(run / "export" / "model.fp32.onnx")
    spec_json = [p.value for p in __import__("onnx").load(str(onnx)).metadata_props][0]
    (run / "spec.json").write_text(spec_json)
    write_repository(run, tmp_path / "repo")
    config = _parse_config(tmp_path / "repo" / "leukedge-cnn-onnx-fp32" / "config.pbtxt")
    assert [o.name for o in config.output] == ["logits"]
    assert list(config.input[0].dims) == [3, 32, 32]


def test_engines_go_under_tensorrt_plan(repo_run: Path, tmp_path: Path) -> None:
    """An engine with its sidecar under RUN/engines/<target>/ becomes a tensorrt_plan model."""
    from leukedge.inference_server.repository import write_repository
    from leukedge.runtime.backends.engine_plan import (
        BuildFlags,
        EngineSidecar,
        ProfileShapes,
        sidecar_path_for,
    )

    run = repo_run
    spec = ModelSpec.load(run / "spec.json")
    s = spec.input_size
    for folder, static in (("10.3.0_orin_sm87", False), ("10.3.0_orin_sm87_dla", True)):
        target = run / "engines" / folder
        target.mkdir(parents=True)
        engine = target / "model.fp16.engine"
        engine.write_bytes(b"plan bytes")
        low = 4 if static else 1
        EngineSidecar(
            spec=spec,
            precision="fp16",
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            onnx_path=str(run / "export" / "model.fp16.onnx"),
            onnx_sha256="0" * 64,
            engine_file=engine.name,
            engine_sha256="0" * 64,
            engine_bytes=10,
            build_flags=BuildFlags(max_batch=8),
            profile=ProfileShapes("input", (low, 3, s, s), (4, 3, s, s), (8, 3, s, s)),
            build_seconds=1.0,
            built_at="2026-01-01T00:00:00+00:00",
            leukedge_version="0.1.0",
        ).save(sidecar_path_for(engine))
    result = write_repository(run, tmp_path / "repo")
    plans = [m for m in result.models if m["platform"] == "tensorrt_plan"]
    name = f"leukedge-{spec.arch}-trt-fp16-10.3.0_orin_sm87"
    assert [m["name"] for m in plans] == [name]
    assert any("batch 4..8" in n for n in result.notes)  # a static-batch engine is left out
    config = _parse_config(tmp_path / "repo" / name / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.parameters["leukedge.tensorrt_version"].string_value == "10.3.0"
    assert (tmp_path / "repo" / name / "1" / "model.plan").read_bytes() == b"plan bytes"


def test_a_folder_leukedge_did_not_write_is_never_replaced(repo_run: Path, tmp_path: Path) -> None:
    from leukedge.inference_server.repository import RepositoryError, write_repository

    foreign = tmp_path / "models"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(RepositoryError, match="did not write"):
        write_repository(repo_run, foreign)
    assert (foreign / "precious.txt").read_text() == "keep"
    ours = tmp_path / "ours"
    write_repository(repo_run, ours)
    (ours / "leukedge-cnn-onnx-fp32" / "stale").write_text("x")
    write_repository(repo_run, ours)  # an earlier repository of leukedge's is replaced whole
    assert not (ours / "leukedge-cnn-onnx-fp32" / "stale").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_export_cli_writes_the_repository_of_an_exported_run(
    repo_run: Path, tmp_path: Path
) -> None:
    (repo_run / "export" / "export.json").write_text("{}")  # exported: not exported again
    out = tmp_path / "repo"
    r = subprocess.run(
        [sys.executable, "-m", "leukedge", "export", str(repo_run), "--triton-repo", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "leukedge-cnn-onnx-int8" / "config.pbtxt").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "leukedge", "export", str(repo_run), "--triton-repo", str(REPO)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert bad.returncode == 2 and "did not write" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- the client without a server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["triton", "triton+http"])
def test_no_server_is_a_clear_error(scheme: str, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from leukedge.runtime.backends.triton import TritonBackend

    url = f"{scheme}://127.0.0.1:{_free_port()}/leukedge-cnn"
    with pytest.raises(BackendError, match="did not answer|cannot reach"):
        TritonBackend(url, retries=1, retry_wait_s=0.01, timeout_s=2)


class Vanishing:
    """A backend that answers ``answers`` batches, then is gone (a server that went away)."""

    def __init__(self, inner: object, answers: int) -> None:
        self.inner, self.left = inner, answers
        for key in ("name", "spec", "precision", "device", "max_batch"):
            setattr(self, key, getattr(inner, key))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.left <= 0:
            raise BackendLost("triton://127.0.0.1:1/m did not answer after 3 tries")
        self.left -= 1
        return self.inner.infer(batch)  # type: ignore[attr-defined]

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_backend_gone_mid_run_ends_it_cleanly_with_everything_written(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "model.fp32.onnx")
    local = Classifier.load(model, backend="ort", device="cpu")
    clf = Classifier(Vanishing(local.backend, answers=2), batch_size=2)  # type: ignore[arg-type]
    s = run_pipeline(clf, frames(6), tmp_path / "out", finder=TwoCells(), batch=2, annotate=False)
    assert s["status"] == "backend_error" and "did not answer" in s["message"]
    lines = (tmp_path / "out" / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the two frames classified before the server went away
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["status"] == "backend_error"
    local.close()


# ---------------------------------------------------------------- a real server (PyTriton)


def _pytriton_reason() -> str | None:
    from leukedge.inference_server.server import pytriton_problem

    return pytriton_problem()


def _start_serve(run: Path, log: Path) -> tuple[subprocess.Popen, list[int]]:
    """`leukedge serve RUN --backend ort-fp32` in its own process on free ports, once ready."""
    reason = _pytriton_reason()
    if reason:
        pytest.skip(reason)
    ports = [_free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "leukedge", "serve", str(run), "--backend", "ort-fp32"]
    cmd += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    cmd += ["--metrics-port", str(ports[2]), "--max-batch", "16"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEUKEDGE_ORT_THREADS": "1"}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while "serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.skip(f"the PyTriton server did not start: {log.read_text()[-600:]}")
        time.sleep(0.5)
    return proc, ports


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """`leukedge serve` of the exported run (ort-fp32), for the module.

    Skips before the run is trained where PyTriton cannot serve from this environment.
    """
    reason = _pytriton_reason()
    if reason:
        pytest.skip(reason)
    exported_run = request.getfixturevalue("exported_run")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, ports = _start_serve(exported_run, log)
    try:
        yield {"grpc": ports[1], "http": ports[0], "proc": proc, "log": log, "run": exported_run}
    finally:
        _stop(proc)


@pytest.mark.slow
def test_served_model_answers_like_local_ort_on_the_parity_set(served: dict) -> None:
    from leukedge.runtime.parityset import load_parity_set

    exported_run = served["run"]
    ps = load_parity_set(exported_run)
    crops = [ps.crop(i) for i in range(len(ps))]
    local = Classifier.load(exported_run, backend="ort-fp32", device="cpu")
    for url in (
        f"triton://127.0.0.1:{served['grpc']}/leukedge-cnn",
        f"triton+http://127.0.0.1:{served['http']}/leukedge-cnn",
    ):
        remote = Classifier.load(exported_run, backend=url, batch=16)
        x = remote.preprocess(crops)
        z_remote, f_remote = remote.infer_outputs(x)
        z_local, f_local = local.infer_outputs(x)
        assert remote.backend.name == url
        assert (z_remote.argmax(1) == z_local.argmax(1)).mean() == 1.0
        np.testing.assert_allclose(z_remote, z_local, atol=1e-4)
        assert f_remote is not None and f_local is not None
        np.testing.assert_allclose(f_remote, f_local, atol=1e-4)
        remote.close()
    local.close()


@pytest.mark.slow
def test_run_and_bench_against_the_server(served: dict, synth_data: Path, tmp_path: Path) -> None:
    exported_run = served["run"]
    url = f"triton://127.0.0.1:{served['grpc']}/leukedge-cnn"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    frames_dir = synth_data / "frames"
    outs = {}
    for backend in (url, "ort-fp32"):
        out = tmp_path / backend.replace("/", "_").replace(":", "_")
        r = subprocess.run(
            [sys.executable, "-m", "leukedge", "run", str(exported_run), "--source"]
            + [str(frames_dir), "--backend", backend, "--out", str(out), "--json"]
            + ["--no-annotate"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        outs[backend] = [
            json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()
        ]
    assert outs[url] and [c["class"] for c in outs[url]] == [c["class"] for c in outs["ort-fp32"]]
    r = subprocess.run(
        [sys.executable, "-m", "leukedge", "bench", str(exported_run), "--split", "parity"]
        + ["--backends", f"ort-fp32,{url}", "--batch-sizes", "1,8", "--iters", "5"]
        + ["--warmup", "1", "--out", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    row = report["backends"][url]
    assert row["parity"]["agreement"] == 1.0 and row["parity"]["max_abs_diff"] < 1e-4
    assert row["device"] == f"grpc://127.0.0.1:{served['grpc']}"


# ---------------------------------------------------------------- serve's own checks


def test_the_server_gets_this_interpreters_libpython_first() -> None:
    import sysconfig

    from leukedge.inference_server.server import libpython_env

    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    env = libpython_env({"LD_LIBRARY_PATH": f"/usr/lib:{libdir}", "PATH": "/bin"})
    if libdir and ".so" in soname and (Path(libdir) / soname).exists():
        assert env["LD_LIBRARY_PATH"] == f"{libdir}:/usr/lib"
    else:  # a static interpreter: nothing to put first
        assert env["LD_LIBRARY_PATH"] == f"/usr/lib:{libdir}"
    assert env["PATH"] == "/bin"


def test_a_stub_that_cannot_start_is_said_in_one_line(tmp_path: Path) -> None:
    from leukedge.inference_server.server import _why_not_started

    error = RuntimeError(
        "load failed for model 'leukedge-cnn': Traceback (most recent call last):\n"
        "    if self._lock._recursion_count() > 1:\n"
        "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'\n"
    )
    message = _why_not_started(error, tmp_path / "absent.log")
    assert "stub could not start" in message and "AttributeError" in message
    assert "\n" not in message
    other = _why_not_started(RuntimeError("boom"), tmp_path / "absent.log")
    assert other.startswith("the Triton server did not start (boom)")


def test_serve_refuses_an_environment_pytriton_cannot_serve_from(tmp_path: Path) -> None:
    from leukedge.inference_server.server import pytriton_problem

    problem = pytriton_problem()
    try:
        import pytriton  # noqa: F401
    except ImportError:
        assert problem is not None and "not installed" in problem
        return
    assert (problem is None) == (int(np.__version__.split(".")[0]) < 2)


@pytest.mark.slow
def test_a_server_that_goes_away_is_retried_then_lost(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from leukedge.runtime.backends.triton import TritonBackend

    reason = _pytriton_reason()
    if reason:
        pytest.skip(reason)
    exported_run = request.getfixturevalue("exported_run")
    proc, ports = _start_serve(exported_run, tmp_path / "serve.log")
    try:
        spec = ModelSpec.load(exported_run / "spec.json")
        url = f"triton://127.0.0.1:{ports[1]}/leukedge-cnn"
        backend = TritonBackend(url, spec=spec, retries=2, retry_wait_s=0.05)
        x = np.zeros((3, *backend.spec.input_shape), dtype=np.float32)
        assert backend.infer(x).shape == (3, backend.spec.num_classes)
    finally:
        _stop(proc)
    with pytest.raises(BackendLost, match="after 3 tries"):
        backend.infer(x)
    assert backend.retried == 2
    backend.close()
