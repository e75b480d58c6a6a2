"""leukedge bench: statistics, parity, budgets, report schema, plots, CLI, end to end."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from leukedge.bench import (
    BenchError,
    Budgets,
    ReportError,
    register_backend,
    run_bench,
    unregister_backend,
    validate_report,
)
from leukedge.bench.backends import (
    BenchContext,
    default_backends,
    int8_kernels_saturate,
    open_backend,
    parse_backends,
)
from leukedge.bench.latency import measure_batch, speedup, summarize_ms, throughput
from leukedge.bench.markdown import to_markdown
from leukedge.bench.parity import backend_parity, metrics_of
from leukedge.bench.plots import latency_png, parity_png
from leukedge.bench.schema import finite_or_none
from leukedge.budgets import judge
from leukedge.cli import app
from leukedge.data.arrays import ImageSet
from leukedge.runtime.backends.timing import Samples, StopRule, batch_of, interleave, rotated
from leukedge.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = {"warmup": 1, "iters": 3, "min_time_s": 0.0, "max_time_s": 1.0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def report(exported_run: Path) -> dict[str, Any]:
    """The default backends (torch, ort-*, trt-*) at batch sizes 1 and 4."""
    return run_bench(exported_run, batch_sizes=(1, 4), **FAST)


# --------------------------------------------------------------------------- statistics


def test_summary_statistics_on_known_timings() -> None:
    s = summarize_ms([float(v) for v in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["mean"] == pytest.approx(50.5) and s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert summarize_ms([])["n"] == 0 and summarize_ms([])["p50"] is None
    assert throughput(8, 4.0) == pytest.approx(2000.0)
    assert throughput(8, None) is None
    assert speedup(10.0, 2.0) == pytest.approx(5.0) and speedup(None, 2.0) is None


def test_stop_rule_needs_iterations_and_time_and_caps_both() -> None:
    rule = StopRule(min_iters=5, min_time_s=1.0, max_time_s=3.0, max_iters=50)
    assert rule.stop_reason(4, 2.0) is None  # enough time, too few samples
    assert rule.stop_reason(5, 0.5) is None  # enough samples, too little time
    assert rule.stop_reason(5, 1.0) == "enough"
    assert rule.stop_reason(2, 3.0) == "max_time"  # a slow backend stops before min_iters
    assert rule.stop_reason(50, 0.01) == "max_iters"
    with pytest.raises(ValueError):
        StopRule(min_iters=0)
    with pytest.raises(ValueError):
        StopRule(min_time_s=2.0, max_time_s=1.0)


def test_interleave_round_robin_with_rotation_and_adaptive_stop() -> None:
    order: list[str] = []

    def call(name: str, ms: float) -> Any:
        def run() -> tuple[float, float | None]:
            order.append(name)
            return ms, (ms / 2 if name == "gpu" else None)

        return run

    # fast: 125 ms per call -> 8 calls reach min_time 1 s; slow: 1 s per call -> max_time 2.5 s.
    rule = StopRule(min_iters=5, min_time_s=1.0, max_time_s=2.5)
    samples = interleave({"fast": call("fast", 125.0), "gpu": call("gpu", 1000.0)}, rule)
    assert len(samples["fast"].host_ms) == 8 and samples["fast"].stopped == "enough"
    assert len(samples["gpu"].host_ms) == 3 and samples["gpu"].stopped == "max_time"
    assert samples["gpu"].device_ms == [500.0] * 3 and samples["fast"].device_ms == []
    assert order[:6] == ["fast", "gpu", "gpu", "fast", "fast", "gpu"]  # rotating first
    assert order[6:] == ["fast"] * 5  # the slow one is done; the fast one goes on alone
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"] and rotated([], 3) == []


class FakeBackend:
    """Takes ``ms`` per call on a fake clock; reports device time like TensorRT."""

    precision = "fp32"
    device = "cuda:0"

    def __init__(self, clock: list[float], ms: float, max_batch: int | None = None) -> None:
        self.clock, self.ms, self.max_batch = clock, ms, max_batch
        self.name = f"fake{ms}"
        self.spec = ModelSpec(arch="cnn", input_size=8)
        self.last_device_ms: float | None = None
        self.calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock[0] += self.ms * len(batch) / 1000.0
        self.last_device_ms = 0.8 * self.ms * len(batch)
        return np.zeros((len(batch), 2), dtype=np.float32)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_measure_batch_times_synchronised_calls_on_a_known_clock() -> None:
    clock = [0.0]
    backends = {"a": FakeBackend(clock, 2.0), "b": FakeBackend(clock, 4.0, max_batch=2)}
    images = np.zeros((3, 3, 8, 8), dtype=np.float32)
    rule = StopRule(min_iters=10, min_time_s=0.0, max_time_s=100.0)
    out = measure_batch(backends, images, 4, warmup=2, rule=rule, clock=lambda: clock[0])
    a = out["a"]
    assert a["host_ms"]["n"] == 10 and a["stopped"] == "enough" and a["warmup"] == 2
    assert a["host_ms"]["p50"] == pytest.approx(8.0) and a["host_ms"]["p99"] == pytest.approx(8.0)
    assert a["device_ms"]["p50"] == pytest.approx(6.4)  # CUDA-event time beside host time
    assert a["ms_per_image"] == pytest.approx(2.0)
    assert a["images_per_s"] == pytest.approx(500.0)
    assert backends["a"].calls == 12  # warm-up calls are not timed
    assert out["b"] == {"batch": 4, "skipped": "batch 4 exceeds its maximum 2"}
    assert batch_of(images, 4).shape == (4, 3, 8, 8)  # fewer images than the batch: repeated
    assert Samples(host_ms=[500.0, 250.0]).measured_s == pytest.approx(0.75)


# --------------------------------------------------------------------------- parity and budgets


def image_set(n: int, seed: int = 0) -> tuple[ImageSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    logits = rng.standard_normal((n, 2)).astype(np.float32)
    logits[np.arange(n), labels] += 2.0  # mostly right
    images = ImageSet(
        x=np.zeros((n, 3, 8, 8), dtype=np.float32),
        labels=labels.astype(np.int64),
        paths=[f"/data/img{i}.png" for i in range(n)],
        subjects=[f"S{i % 4}" for i in range(n)],
    )
    return images, logits


def test_a_backend_compared_with_itself_is_exact() -> None:
    spec = ModelSpec(arch="cnn", input_size=8)
    images, z = image_set(50)
    ref_metrics = metrics_of(z, images.labels, spec)
    row = backend_parity(z, z.copy(), images, spec, ref_metrics)
    p = row["parity"]
    assert p["agreement"] == 1.0 and p["disagreements"] == 0
    assert p["max_abs_diff"] == 0.0 and p["mean_abs_diff"] == 0.0 and p["p99_abs_diff"] == 0.0
    assert p["cosine_min"] == pytest.approx(1.0) and p["accuracy_delta"] == 0.0
    assert all(v == 0.0 for v in row["delta"].values())
    assert row["disagreements"] == []
    assert judge("fp32", p, Budgets())["status"] == "pass"


def test_disagreements_are_listed_with_both_answers() -> None:
    spec = ModelSpec(arch="cnn", input_size=8)
    images, z = image_set(20)
    flipped = z.copy()
    flipped[3] = flipped[3][::-1]
    row = backend_parity(z, flipped, images, spec, metrics_of(z, images.labels, spec))
    (d,) = row["disagreements"]
    assert d["index"] == 3 and d["path"] == "/data/img3.png" and d["subject"] == "S3"
    assert d["reference"]["class"] != d["backend"]["class"]
    assert 0.5 <= d["reference"]["prob"] <= 1.0 and "prob_all" in d["backend"]
    assert row["parity"]["agreement"] == pytest.approx(0.95)
    lo, hi = row["parity"]["agreement_ci95"]
    assert lo < 0.95 < hi


def test_budgets_per_precision_with_reasons_and_overrides() -> None:
    base = {"all_finite": True, "agreement": 0.995, "max_abs_diff": 2e-3, "accuracy_delta": -0.02}
    fp32 = judge("fp32", base, Budgets())
    assert fp32["status"] == "fail"
    assert any("agreement" in r for r in fp32["reasons"])
    assert any("max |Δlogit|" in r for r in fp32["reasons"])
    assert judge("fp16", base, Budgets())["status"] == "fail"  # 0.995 < 0.999
    int8 = judge("int8", base, Budgets())
    assert int8["status"] == "fail" and int8["reasons"] == ["accuracy drop 0.02 > 0.01"]
    loose = Budgets.with_overrides({"int8_max_accuracy_drop": 0.05, "fp16_min_agreement": None})
    assert judge("int8", base, loose)["status"] == "pass"
    assert loose.fp16_min_agreement == Budgets().fp16_min_agreement
    assert judge("int8", {**base, "all_finite": False}, loose)["status"] == "fail"
    assert judge(None, base, Budgets())["status"] == "none"
    with pytest.raises(ValueError, match="unknown budget"):
        Budgets.with_overrides({"fp8_min_agreement": 0.9})


def test_backend_names_and_int8_cpu_detection() -> None:
    assert parse_backends("ort-fp32, torch,ort-fp32") == ["ort-fp32", "torch"]
    assert {"torch", "ort-int8", "trt-fp16"} <= set(default_backends())
    with pytest.raises(BenchError, match="unknown backend"):
        parse_backends("ort-fp64")
    x86 = {"machine": "x86_64", "cpu_flags": ["avx2"]}
    assert int8_kernels_saturate(x86)
    assert not int8_kernels_saturate({**x86, "cpu_flags": ["avx2", "avx512_vnni"]})
    assert not int8_kernels_saturate({"machine": "aarch64", "cpu_flags": ["asimddp"]})


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_run_bench_end_to_end(report: dict[str, Any], exported_run: Path) -> None:
    validate_report(report)
    rows = report["backends"]
    assert report["reference"]["backend"] == "torch" and list(rows)[0] == "torch"
    assert {"torch", "ort-fp32", "ort-fp16", "ort-int8"} <= set(rows)
    for name in ("torch", "ort-fp32", "ort-fp16", "ort-int8"):
        row = rows[name]
        assert row["kind"] == "measured" and row["parity"]["n"] == report["data"]["images"] > 0
        for batch in ("1", "4"):
            entry = row["latency"][batch]
            assert entry["host_ms"]["n"] >= FAST["iters"] or entry["stopped"] == "max_time"
            assert entry["images_per_s"] > 0
            assert row["speedup"][batch]["p50"] > 0
    ref = rows["torch"]
    assert ref["is_reference"] and ref["budget"]["status"] == "reference"
    assert ref["parity"]["agreement"] == 1.0 and ref["parity"]["max_abs_diff"] == 0.0
    assert ref["speedup"]["1"]["p50"] == pytest.approx(1.0)
    fp32 = rows["ort-fp32"]
    assert fp32["budget"]["status"] == "pass" and fp32["parity"]["max_abs_diff"] < 1e-3
    assert rows["ort-fp16"]["parity"]["agreement"] >= 0.95
    assert rows["ort-fp16"]["precision"] == "fp16" and rows["ort-int8"]["precision"] == "int8"
    if int8_kernels_saturate(report["machine"]):  # this CPU: the exact Q/DQ row is beside it
        exact = rows["qdq-int8-exact"]
        assert exact["kind"] == "parity-only" and exact["latency"] == {}
        assert any("VNNI" in n for n in report["notes"])
    assert report["preprocess"]["n"] > 0 and report["preprocess"]["decode_ms"]["p50"] > 0
    out = exported_run / "bench"
    assert json.loads((out / "report.json").read_text()) == report
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_unavailable_backends_are_skipped_with_a_reason(report: dict[str, Any]) -> None:
    skipped = {s["name"]: s for s in report["skipped"]}
    for name in ("trt-fp32", "trt-fp16", "trt-int8"):
        assert name not in report["backends"]
        assert skipped[name]["stage"] == "open" and "TensorRT" in skipped[name]["reason"]
    md = (Path(report["run"]["path"]) / "bench" / "report.md").read_text()
    assert "## Skipped backends" in md and "trt-fp32, trt-fp16, trt-int8" in md


@pytest.mark.slow
def test_not_exported_precision_is_skipped(exported_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bench"))
    (run / "export" / "model.fp16.onnx").unlink()
    r = run_bench(run, backends="ort-fp32,ort-fp16", batch_sizes=(2,), limit=8, **FAST)
    assert set(r["backends"]) == {"torch", "ort-fp32"}
    assert any("torch added" in n for n in r["notes"])
    (skip,) = r["skipped"]
    assert skip["name"] == "ort-fp16" and "not exported" in skip["reason"]
    assert "leukedge export" in skip["reason"]


@pytest.mark.slow
def test_report_markdown_reads_at_a_glance(report: dict[str, Any]) -> None:
    md = to_markdown(report)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| backend | device | accuracy"))
    assert "Δacc" in header and "agreement" in header and "speed-up b1" in header
    assert "img/s b4" in header and "budget" in header
    rows = [line for line in lines if line.startswith("| ort-fp32 |")]
    assert rows and "✅" in rows[0]
    assert md.index("## Machine") < md.index("## Disagreements") < md.index("## Skipped")
    assert "AMD" in md or "CPU:" in md


@pytest.mark.slow
def test_validate_report_finds_schema_problems(report: dict[str, Any]) -> None:
    validate_report(json.loads(json.dumps(report)))
    broken = copy.deepcopy(report)
    del broken["backends"]["ort-fp32"]["parity"]
    broken["version"] = 99
    broken["backends"]["ort-fp16"]["latency"]["1"]["stopped"] = "bored"
    with pytest.raises(ReportError) as e:
        validate_report(broken)
    text = str(e.value)
    assert "ort-fp32.parity: missing" in text and "version" in text and "bored" in text
    two_refs = copy.deepcopy(report)
    two_refs["backends"]["ort-fp32"]["is_reference"] = True
    with pytest.raises(ReportError, match="reference rows"):
        validate_report(two_refs)
    nan = copy.deepcopy(report)
    nan["backends"]["torch"]["parity"]["max_abs_diff"] = float("nan")
    with pytest.raises(ReportError, match="NaN"):
        validate_report(nan)
    assert finite_or_none({"a": [float("inf"), np.float32(1.5)]}) == {"a": [None, 1.5]}
    with pytest.raises(ReportError):
        validate_report([])


@pytest.mark.slow
def test_plots_are_valid_pngs(report: dict[str, Any]) -> None:
    out = Path(report["run"]["path"]) / "bench"
    for name in ("latency.png", "parity.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    no_latency = copy.deepcopy(report)
    for row in no_latency["backends"].values():
        row["latency"], row["speedup"] = {}, {}
    assert latency_png(no_latency).startswith(PNG_SIGNATURE)
    assert parity_png(no_latency).startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- CLI and budgets


class NoisyBackend:
    """Another backend's logits plus seeded noise: a compiled model gone wrong."""

    def __init__(self, inner: Any, scale: float, precision: str = "fp16") -> None:
        self.inner = inner
        self.name = "noisy-fp16"
        self.spec = inner.spec
        self.precision = precision
        self.device = inner.device
        self.max_batch = inner.max_batch
        self.scale = scale
        self.rng = np.random.default_rng(0)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        z = self.inner.infer(batch)
        return z + self.rng.normal(0.0, self.scale, z.shape).astype(np.float32)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def noisy_backend() -> Any:
    def opener(ctx: BenchContext) -> NoisyBackend:
        return NoisyBackend(open_backend("ort-fp32", ctx), scale=25.0)

    register_backend("noisy-fp16", opener)
    yield "noisy-fp16"
    unregister_backend("noisy-fp16")


@pytest.mark.slow
def test_perturbed_backend_fails_its_budget_and_the_cli_exit_code(
    exported_run: Path, tmp_path: Path, noisy_backend: str
) -> None:
    args = [
        "bench",
        str(exported_run),
        "--backends",
        f"ort-fp32,{noisy_backend}",
        "--batch-sizes",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--min-time",
        "0",
        "--max-time",
        "0.2",
        "--limit",
        "16",
        "--out",
        str(tmp_path / "b"),
    ]
    runner = CliRunner()
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert "noisy-fp16" in plain.output and "❌" in plain.output
    failing = runner.invoke(app, [*args, "--fail-on-budget"])
    assert failing.exit_code == 1, failing.output
    r = json.loads((tmp_path / "b" / "report.json").read_text())
    validate_report(r)
    row = r["backends"][noisy_backend]
    assert row["budget"]["status"] == "fail" and row["parity"]["agreement"] < 0.999
    assert any(c["name"] == "agreement" and not c["passed"] for c in row["budget"]["checks"])
    assert r["backends"]["ort-fp32"]["budget"]["status"] == "pass"
    assert r["summary"] == {**r["summary"], "budget_passed": False, "failed": [noisy_backend]}
    loose = runner.invoke(app, [*args, "--fail-on-budget", "--fp16-min-agreement", "0"])
    assert loose.exit_code == 0, loose.output


@pytest.mark.slow
def test_cli_errors_are_clear(exported_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["bench", str(exported_run), "--backends", "ort-fp64"])
    assert r.exit_code == 2 and "unknown backend" in r.output
    r = runner.invoke(app, ["bench", str(exported_run), "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and "batch-sizes" in r.output
    r = runner.invoke(app, ["bench", str(exported_run), "--split", "holdout"])
    assert r.exit_code == 2 and "holdout" in r.output
    r = runner.invoke(app, ["bench", str(tmp_path)])
    assert r.exit_code == 2 and "spec.json" in r.output


@pytest.mark.slow
def test_without_torch_the_reference_is_ort_fp32(exported_run: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        from leukedge.bench import run_bench
        r = run_bench({str(exported_run)!r}, split="test", backends="torch,ort-fp32,ort-int8",
                      batch_sizes=(1,), limit=8, out={str(tmp_path / "b")!r},
                      warmup=0, iters=2, min_time_s=0.0, max_time_s=0.2)
        assert r["reference"]["backend"] == "ort-fp32", r["reference"]
        assert "PyTorch" in r["reference"]["reason"]
        assert [s["name"] for s in r["skipped"]] == ["torch"]
        assert r["backends"]["ort-fp32"]["is_reference"]
        assert any("not PyTorch" in n and "--split parity" in n for n in r["notes"])
        assert r["runtimes"]["torch"] is None
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
