"""benchmarks/gpu_check.py without a GPU: its plan, commands, readers and clean refusal.

The check itself needs an NVIDIA GPU; here its pure parts are tested, the leukedge
commands it runs are checked against the CLI's own options, and a run without a
GPU must stop at once with a clear message.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CPU_REPORT = REPO / "benchmarks" / "results" / "cpu-amd-epyc-2c" / "allidb2-cnn" / "report.json"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_plans(gc) -> None:
    quick, full = gc.make_plan(True), gc.make_plan(False)
    assert quick.models == ("cnn",) and quick.budget_s <= 180 and quick.size == 64
    assert full.models == ("cnn", "resnet50", "vit-hybrid") and full.budget_s <= 480
    assert full.size % 32 == 0
    assert gc.make_plan(False, "resnet50", 96, 100).models == ("resnet50",)
    with pytest.raises(ValueError, match="unknown model"):
        gc.make_plan(False, "vgg")
    with pytest.raises(ValueError, match="multiple of 32"):
        gc.make_plan(False, size=100)


def test_clock_skips_what_no_longer_fits(gc, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(gc.time, "monotonic", lambda: now[0])
    clock = gc.Clock(100, reserve_s=5)
    assert clock.allow("train", 20) == pytest.approx(95)
    now[0] += 80
    with pytest.raises(gc.Skip, match="time budget: 15 s left of 100 s, bench needs ~20 s"):
        clock.allow("bench", 20)


def _options(command: list[str]) -> set[str]:
    from leukedge.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return {w.strip("│ ,") for w in result.output.split() if w.strip("│ ,").startswith("--")}


def test_commands_use_options_the_cli_has(gc, tmp_path: Path) -> None:
    plan = gc.make_plan(True)
    run = tmp_path / "runs" / "cnn"
    commands = {
        ("data", "synth"): gc.synth_cmd(plan, tmp_path / "synth"),
        ("train",): gc.train_cmd(plan, "cnn", tmp_path / "synth" / "cells", run),
        ("export",): gc.export_cmd(run),
        ("build-engine",): gc.build_cmd(run),
        ("bench",): gc.bench_cmd(plan, run, tmp_path / "out"),
    }
    for sub, cmd in commands.items():
        assert cmd[:3] == [sys.executable, "-m", "leukedge"] and tuple(cmd[3 : 3 + len(sub)]) == sub
        used = {a for a in cmd if a.startswith("--")}
        missing = used - _options(list(sub))
        assert not missing, f"leukedge {' '.join(sub)} has no {missing}"
    train = commands[("train",)]
    assert train[train.index("--device") + 1] == "cuda"
    bench = commands[("bench",)]
    backends = bench[bench.index("--backends") + 1].split(",")
    assert "torch" in backends and bench[bench.index("--torch-device") + 1] == "cuda"
    assert {"ort-fp32-cuda", "ort-fp16-cuda", "ort-int8-cuda"} <= set(backends)
    assert {"trt-fp16", "trt-int8", "trt-fp32"} <= set(backends)
    from leukedge.artifacts import parse_backend

    for name in backends:
        parse_backend(name)  # every name is one leukedge knows


def test_it_has_no_exporter_or_quantizer_of_its_own() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not {m for m in imported if "quantization" in m or m.startswith("leukedge.export")}
    text = SCRIPT.read_text()
    assert "quantize_static" not in text and "torch.onnx" not in text


def test_bench_summary_reads_a_real_report(gc) -> None:
    summary = gc.bench_summary(json.loads(CPU_REPORT.read_text()))
    assert summary["reference"] == "torch"
    torch_row = summary["rows"]["torch"]
    assert torch_row["agreement"] == 1.0 and torch_row["batch1_host_p50_ms"] > 0
    assert torch_row["best_images_per_s"] > 0
    assert any(name.startswith("trt") for name in summary["skipped"])


def test_engine_summaries_read_the_sidecars(gc, tmp_path: Path) -> None:
    folder = tmp_path / "engines" / "10.3.0_orin_sm87"
    folder.mkdir(parents=True)
    side = {
        "build_seconds": 12.5,
        "engine_bytes": 3 << 20,
        "build_flags": {"tf32": False},
        "parity": {
            "measured": True,
            "agreement": 0.998,
            "max_abs_diff": 0.02,
            "verdict": {"status": "fail"},
        },
        "warnings": [],
    }
    (folder / "model.fp16.engine.json").write_text(json.dumps(side))
    (folder / "model.int8.engine.json").write_text(
        json.dumps({"parity": {"measured": False, "reason": "no validation images"}})
    )
    got = gc.engine_summaries(tmp_path)
    assert got["model.fp16"]["parity_vs_ort"] == {
        "agreement": 0.998,
        "max_abs_diff": 0.02,
        "budget": "fail",
    }
    assert got["model.fp16"]["engine_mib"] == 3.0 and got["model.fp16"]["tf32"] is False
    assert got["model.int8"]["parity_note"] == "no validation images"


def test_percentiles(gc) -> None:
    p = gc.percentiles([1.0, 2.0, 3.0, 4.0])
    assert p["p50_ms"] == 2.5 and p["n"] == 4


def test_without_a_gpu_it_stops_at_once(gc, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(gc, "gpu_present", lambda: (False, "nvidia-smi lists no GPU"))
    assert gc.main(["--quick", "--out", str(tmp_path)]) == gc.NO_GPU_EXIT
    assert "no CUDA GPU: nvidia-smi lists no GPU" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no report of a check that did not run


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_the_script_fails_cleanly_and_fast_here() -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
    assert time.perf_counter() - t0 < 30
