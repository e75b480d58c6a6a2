"""The microscope runtime: classifier loading and backend choice, sources, the pipeline, the CLI.

Fast and offline: a small CNN run exported to ONNX by ``conftest``'s ``make_run``
(torch only in the test code) and the synthetic frames of ``synth_data``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import MakeRun
from stub_finders import TwoCells

from leukedge.runtime.backends.base import BackendError
from leukedge.runtime.cells import Cell
from leukedge.runtime.classifier import (
    Candidate,
    Classifier,
    choose_fastest,
    measure_backend,
    resolve_candidates,
)
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import (
    Frame,
    SourceError,
    gstreamer_available,
    open_source,
    parse_csi,
)
from leukedge.runtime.stats import StageStats, blast_ratio, percentiles
from leukedge.spec import ModelSpec

SIZE = 48
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(make_run: MakeRun, drawn_data: Path) -> Path:
    """A small CNN (32 px, a few SGD steps on drawn cells) exported to fp32 and int8 ONNX."""
    return make_run(drawn_data, model="cnn", img_size=32, steps=20, export=("fp32", "int8"))


@pytest.fixture(scope="module")
def tiny_onnx(tiny_run: Path) -> Path:
    return tiny_run / "export" / "model.fp32.onnx"


@pytest.fixture(scope="module")
def clf(tiny_onnx: Path) -> Iterator[Classifier]:
    c = Classifier.load(tiny_onnx, backend="ort", device="cpu")
    yield c
    c.close()


def frames_of(synth_data: Path) -> list[Path]:
    return sorted((synth_data / "frames").glob("*.png"))


def cells_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines() if line]


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def assert_consistent(out: Path, summary: dict[str, Any]) -> None:
    """cells.jsonl, summary.json and the returned summary agree with each other."""
    lines = cells_lines(out)
    on_disk = read_summary(out)
    assert on_disk["cells"]["total"] == summary["cells"]["total"] == len(lines)
    assert sum(summary["cells"]["by_class"].values()) == len(lines)
    assert summary["all_count"] == sum(r["class"] == "all" for r in lines)
    f = summary["frames"]
    assert f["read"] == f["processed"] + f["skipped"]
    for r in lines:
        assert set(r) >= {"frame", "name", "box", "centroid", "class", "probs", "touches_edge"}
        assert abs(sum(r["probs"].values()) - 1.0) < 1e-3


def synthetic_frames(n: int, fail_at: int | None = None, exc: BaseException | None = None):
    """Frames from a generator that raises ``exc`` before frame ``fail_at``."""
    rng = np.random.default_rng(0)
    for i in range(n):
        if fail_at is not None and i == fail_at:
            raise exc  # type: ignore[misc]
        yield Frame(i, f"f{i:03d}", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), None, 0.0)


# --------------------------------------------------------------------------- no torch


def test_runtime_imports_and_runs_without_torch(
    tiny_onnx: Path, synth_data: Path, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        f"""
        import sys, json
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import leukedge.runtime
        assert "onnxruntime" not in sys.modules, "import leukedge.runtime must stay light"
        from leukedge.runtime import Classifier, CellFinder, Cell, open_source, run_pipeline
        import leukedge.runtime.groundtruth, leukedge.cli
        clf = Classifier.load({str(tiny_onnx)!r})
        frame = __import__("cv2").imread({str(frames_of(synth_data)[0])!r})
        cells = CellFinder.from_spec(clf.spec, cell_diameter_px=60).find(frame)
        probs = clf.predict([c.crop for c in cells])
        assert probs.shape == (len(cells), 2)
        s = run_pipeline(clf, {str(synth_data / "frames")!r}, {str(tmp_path / "out")!r}, max_frames=2)
        assert s["frames"]["processed"] == 2
        assert sys.modules["torch"] is None
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# --------------------------------------------------------------------------- sources


def test_image_file_folder_and_glob_sources(synth_data: Path, tmp_path: Path) -> None:
    paths = frames_of(synth_data)
    one = list(open_source(str(paths[0])))
    assert len(one) == 1 and one[0].ok and one[0].name == paths[0].name

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in (10, 2, 1):  # natural order: 1, 2, 10
        shutil.copy(paths[0], folder / f"img_{k}.png")
    (folder / "notes.txt").write_text("not an image")
    src = open_source(str(folder))
    assert src.total == 3
    assert [f.name for f in src] == ["img_1.png", "img_2.png", "img_10.png"]
    assert src.end_reason == "all images read"

    glob_src = open_source(str(folder / "img_1*.png"))
    assert [f.name for f in glob_src] == ["img_1.png", "img_10.png"]
    assert [f.index for f in open_source(str(folder), max_frames=2)] == [0, 1]


def test_unreadable_images_become_error_frames(synth_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = frames_of(synth_data)[0]
    shutil.copy(good, folder / "a.png")
    (folder / "b.png").write_bytes(good.read_bytes()[:300])  # truncated
    (folder / "c.png").write_bytes(b"")
    frames = list(open_source(str(folder)))
    assert [f.ok for f in frames] == [True, False, False]
    assert "truncated" in frames[1].error and "empty" in frames[2].error


def test_missing_and_empty_sources_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "absent.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "*.jpg"))
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="neither an image"):
        open_source(str(tmp_path / "data.bin"))
    with pytest.raises(SourceError, match="camera:0"):
        open_source("camera:front")


def write_video(path: Path, n: int, size: tuple[int, int] = (96, 64), fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 20 * i % 255, np.uint8))
    writer.release()
    return path


def test_video_file_source_reads_to_the_end(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", 7)
    src = open_source(str(video))
    frames = list(src)
    src.close()
    assert len(frames) == 7 and all(f.ok for f in frames)
    assert frames[0].image.shape == (64, 96, 3) and frames[3].name == "clip#000003"
    assert src.end_reason == "end of video" and src.fps == pytest.approx(10.0)
    limited = open_source(str(video), max_frames=3)
    assert len(list(limited)) == 3 and limited.total == 3
    limited.close()


class FakeCapture:
    """A camera that delivers ``good`` frames and then fails every read."""

    def __init__(self, good: int, opened: bool = True) -> None:
        self.good, self.opened, self.reads, self.released = good, opened, 0, False

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.reads += 1
        if self.reads <= self.good:
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def test_camera_that_drops_out_retries_then_ends_cleanly() -> None:
    caps: list[FakeCapture] = []
    sleeps: list[float] = []

    def opener() -> FakeCapture:
        caps.append(FakeCapture(good=3 if not caps else 0))
        return caps[-1]

    src = open_source("camera:0", opener=opener, retries=3, backoff_s=0.1, sleep=sleeps.append)
    frames = list(src)
    assert len(frames) == 3 and frames[2].name == "camera#000002"
    assert src.live and src.read_failures == 4 and src.reconnects == 2
    assert sleeps == [0.1, 0.2, 0.4]  # exponential back-off between tries
    assert "stopped delivering frames" in src.end_reason
    assert all(c.released for c in caps[:-1])
    src.close()


def test_camera_recovers_after_a_dropout() -> None:
    caps: list[FakeCapture] = []

    def opener() -> FakeCapture:
        caps.append(FakeCapture(good=2))  # every reconnect gives two more frames
        return caps[-1]

    src = open_source(
        "camera:0", opener=opener, retries=2, backoff_s=0.0, sleep=lambda s: None, max_frames=5
    )
    assert len(list(src)) == 5 and src.reconnects >= 2
    assert "--max-frames 5" in src.end_reason


def test_camera_that_never_opens_is_an_error() -> None:
    with pytest.raises(SourceError, match="cannot open camera 3 after 3 tries"):
        open_source(
            "camera:3", opener=lambda: FakeCapture(0, opened=False), retries=2, sleep=lambda s: None
        )


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_csi_and_gst_sources_explain_missing_gstreamer() -> None:
    for text in ("csi:0", "gst:videotestsrc ! appsink"):
        with pytest.raises(SourceError) as e:
            open_source(text)
        msg = str(e.value)
        assert "GStreamer" in msg and "Jetson" in msg and "pip" in msg


def test_csi_and_stream_parsing() -> None:
    from leukedge.runtime.sources import _redact, csi_pipeline, gst_pipeline

    assert parse_csi("0") == (0, 1920, 1080, 30)
    assert parse_csi("1:1280x720@60") == (1, 1280, 720, 60)
    with pytest.raises(SourceError):
        parse_csi("front")
    pipe = csi_pipeline(0, 1280, 720, 60)
    assert (
        pipe.startswith("nvarguscamerasrc sensor-id=0 !") and "appsink drop=1 max-buffers=1" in pipe
    )
    assert gst_pipeline("videotestsrc").endswith("appsink drop=1 max-buffers=1")
    assert _redact("rtsp://user:secret@cam/stream") == "rtsp://user:***@cam/stream"


# --------------------------------------------------------------------------- statistics


def test_percentiles_and_stage_stats() -> None:
    assert percentiles(list(range(1, 101))) == pytest.approx(
        {"p50": 50.5, "p90": 90.1, "p99": 99.01}
    )
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    s = StageStats(capacity=100)
    for i in range(1000):
        s.add(i / 1000.0)
    out = s.summary()
    assert out["n"] == 1000 and len(s.sample) == 100  # bounded memory, exact count
    assert out["max_ms"] == pytest.approx(999.0) and out["mean_ms"] == pytest.approx(499.5)
    assert 300 < out["p50_ms"] < 700
    assert StageStats().summary()["p50_ms"] is None


def test_blast_ratio_with_wilson_interval() -> None:
    from leukedge.metrics import wilson_interval

    r = blast_ratio(3, 12)
    assert r["ratio"] == 0.25 and r["ci95"] == list(wilson_interval(3, 12))
    assert 0.08 < r["ci95"][0] < 0.25 < r["ci95"][1] < 0.55
    assert blast_ratio(0, 0)["ratio"] is None
    for n in (1, 5, 12, 37, 1000):  # the interval always holds the ratio, even at 0 and 1
        for k in (0, n):
            lo, hi = blast_ratio(k, n)["ci95"]
            assert lo <= k / n <= hi
    with pytest.raises(ValueError):
        blast_ratio(3, 2)


# --------------------------------------------------------------------------- classifier


class FakeBackend:
    """A backend that takes ``ms`` per image (by its clock, not by sleeping)."""

    def __init__(self, name: str, ms: float, fail: bool = False) -> None:
        self.name, self.ms, self.fail = name, ms, fail
        self.spec = ModelSpec(arch="fake", input_size=16)
        self.precision, self.device, self.max_batch = "fp32", "cpu", None
        self.closed = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("kernel missing")
        time.sleep(self.ms * len(batch) / 1000.0)
        return np.zeros((len(batch), 2), np.float32)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_auto_keeps_the_fastest_measured_candidate() -> None:
    made: dict[str, FakeBackend] = {}

    def candidate(name: str, ms: float, fail: bool = False) -> Candidate:
        def open_() -> FakeBackend:
            made[name] = FakeBackend(name, ms, fail)
            return made[name]

        return Candidate(name, f"{name}.onnx", open_)

    def cannot_open() -> FakeBackend:
        raise BackendError("engine built for another GPU")

    candidates = [
        candidate("ort-fp32", 0.8),
        candidate("ort-int8", 6.0),  # slower in INT8, as on CPUs without VNNI
        candidate("ort-broken", 0.1, fail=True),
        Candidate("trt-fp16", "x.engine", cannot_open),
    ]
    backend, sel = choose_fastest(
        candidates,
        batch=4,
        measure=lambda b, n: measure_backend(b, n, iterations=5, warmup_iterations=1),
    )
    assert backend is made["ort-fp32"] and not backend.closed
    assert made["ort-int8"].closed and made["ort-broken"].closed
    status = {c["name"]: c["status"] for c in sel.candidates}
    assert status == {
        "ort-fp32": "chosen",
        "ort-int8": "measured",
        "ort-broken": "failed",
        "trt-fp16": "failed",
    }
    assert sel.chosen == "ort-fp32" and "fastest of 2 measured at batch 4" in sel.reason
    timed = {c["name"]: c["ms_per_image"] for c in sel.candidates if "ms_per_image" in c}
    assert timed["ort-fp32"] < timed["ort-int8"]
    assert "another GPU" in next(c["error"] for c in sel.candidates if c["name"] == "trt-fp16")


def test_choice_follows_the_measurement_not_the_precision() -> None:
    fake = {"ort-fp32": 5.0, "ort-int8": 1.0}
    candidates = [Candidate(n, n, lambda n=n: FakeBackend(n, 0.0)) for n in fake]
    backend, sel = choose_fastest(
        candidates,
        batch=8,
        measure=lambda b, n: {
            "batch": n,
            "ms_per_batch": fake[b.name] * n,
            "ms_per_image": fake[b.name],
        },
    )
    assert backend.name == "ort-int8" and sel.batch == 8


def test_all_candidates_failing_is_one_clear_error() -> None:
    candidates = [Candidate(n, n, lambda n=n: FakeBackend(n, 0.0, fail=True)) for n in ("a", "b")]
    with pytest.raises(BackendError, match="no backend could run the model: a .*kernel missing"):
        choose_fastest(candidates, batch=2)


def test_measure_backend_times_warm_batches() -> None:
    ticks = iter(np.arange(0.0, 100.0, 0.5))
    b = FakeBackend("x", 0.0)
    clock = lambda: float(next(ticks))  # noqa: E731 (every reading is 0.5 s after the last)
    r = measure_backend(b, batch=4, iterations=3, warmup_iterations=1, budget_s=100, clock=clock)
    assert r["batch"] == 4 and r["iterations"] == 3 and r["ms_per_batch"] == pytest.approx(500.0)
    assert r["ms_per_image"] == pytest.approx(125.0)
    slow = measure_backend(b, batch=4, iterations=10, budget_s=1.0, clock=clock)
    assert slow["iterations"] == 2  # a slow model stops at the time budget, never below 2 runs


def test_classifier_load_run_dir_measures_each_export(tiny_run: Path) -> None:
    with Classifier.load(tiny_run, device="cpu", batch=4) as c:
        sel = c.selection
        measured = [x for x in sel.candidates if "ms_per_image" in x]
        assert {x["name"] for x in measured} == {"ort-fp32", "ort-int8"}
        assert (
            sel.chosen == min(measured, key=lambda x: x["ms_per_image"])["name"] == c.backend.name
        )
        assert any("TensorRT" in u for u in sel.unavailable)  # no TensorRT on this machine
    with Classifier.load(tiny_run, backend="ort-int8") as c:  # one named backend: no timing
        assert c.backend.name == "ort-int8" and c.selection.reason == "the only candidate"


def test_classifier_predict_api(clf: Classifier, synth_data: Path) -> None:
    from leukedge.runtime import CellFinder

    frame = cv2.imread(str(frames_of(synth_data)[0]))
    cells = CellFinder.from_spec(clf.spec, cell_diameter_px=60).find(frame)
    assert cells and all(c.crop is not None for c in cells)
    probs = clf.predict([c.crop for c in cells])
    assert probs.shape == (len(cells), 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    logits = clf.logits([c.crop for c in cells])
    np.testing.assert_allclose(np.argmax(logits, 1), np.argmax(probs, 1))
    assert clf.predict([]).shape == (0, 2)


def test_model_resolution_errors(tmp_path: Path, tiny_onnx: Path) -> None:
    run = tmp_path / "run"
    ModelSpec(arch="cnn", input_size=SIZE).save(run / "spec.json")
    with pytest.raises(BackendError, match=f"leukedge export {run}"):
        Classifier.load(run)
    with pytest.raises(BackendError, match="build-engine"):
        resolve_candidates(tiny_onnx, backend="trt")
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_candidates(tiny_onnx, backend="tensorflow")
    with pytest.raises(BackendError, match="no model at"):
        Classifier.load(tmp_path / "absent.onnx")
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(BackendError, match="ONNX Runtime runs the .onnx"):
        resolve_candidates(engine, backend="ort")


# --------------------------------------------------------------------------- pipeline


def test_pipeline_on_frames_writes_consistent_outputs(
    clf: Classifier, synth_data: Path, tmp_path: Path
) -> None:
    from leukedge.runtime import CellFinder

    out = tmp_path / "out"
    seen: list[tuple[int, int, dict]] = []

    def progress(s: dict[str, Any]) -> None:  # outputs are on disk while the run goes
        seen.append((s["cells"], len(cells_lines(out)), read_summary(out)))

    finder = CellFinder.from_spec(clf.spec, cell_diameter_px=60)
    s = run_pipeline(
        clf, str(synth_data / "frames"), out, finder=finder, summary_every=1, progress=progress
    )
    assert s["status"] == "completed" and s["frames"]["processed"] == len(frames_of(synth_data))
    assert s["cells"]["total"] > 0
    assert_consistent(out, s)
    assert all(cells == lines for cells, lines, _ in seen)  # flushed per frame
    assert seen[-1][2]["status"] == "running"  # periodic summary before the final one
    assert len(list((out / "annotated").glob("*.jpg"))) == s["frames"]["processed"]
    for stage in ("capture", "find", "preprocess", "infer", "end_to_end"):
        assert s["latency_ms"][stage]["n"] > 0 and s["latency_ms"][stage]["p50_ms"] >= 0
    assert s["throughput"]["frames_per_s"] > 0 and s["machine"]["cpu_cores"]
    lo, hi = s["blast_ratio"]["ci95"]
    assert lo <= s["blast_ratio"]["ratio"] <= hi


def test_pipeline_batches_cells_across_frames(clf: Classifier, tmp_path: Path) -> None:
    s = run_pipeline(
        clf,
        synthetic_frames(12),
        tmp_path,
        finder=TwoCells(),
        batch=8,
        max_wait_s=0.5,
        annotate=False,
    )
    assert s["frames"]["processed"] == 12 and s["cells"]["total"] == 24
    assert s["throughput"]["infer_batches"] < 12  # several frames per batch
    assert s["throughput"]["mean_cells_per_batch"] > 2
    assert_consistent(tmp_path, s)


def test_source_failing_mid_stream_ends_cleanly(clf: Classifier, tmp_path: Path) -> None:
    frames = synthetic_frames(10, fail_at=4, exc=OSError("camera unplugged"))
    s = run_pipeline(clf, frames, tmp_path, finder=TwoCells(), annotate=False)
    assert s["status"] == "source_error" and "camera unplugged" in s["message"]
    assert s["frames"]["processed"] == 4 and s["cells"]["total"] == 8
    assert_consistent(tmp_path, s)


def test_keyboard_interrupt_in_the_source_keeps_everything(clf: Classifier, tmp_path: Path) -> None:
    frames = synthetic_frames(10, fail_at=3, exc=KeyboardInterrupt())
    s = run_pipeline(clf, frames, tmp_path, finder=TwoCells())
    assert s["status"] == "interrupted" and s["frames"]["processed"] == 3
    assert_consistent(tmp_path, s)
    assert read_summary(tmp_path)["status"] == "interrupted"


def test_keyboard_interrupt_in_the_main_loop_keeps_everything(
    clf: Classifier, tmp_path: Path
) -> None:
    def ctrl_c_at_frame_5(s: dict[str, Any]) -> None:
        if s["frames"] == 5:
            raise KeyboardInterrupt

    s = run_pipeline(
        clf,
        synthetic_frames(50),
        tmp_path,
        finder=TwoCells(),
        progress=ctrl_c_at_frame_5,
        batch=1,
    )
    assert s["status"] == "interrupted" and s["frames"]["processed"] == 5
    assert_consistent(tmp_path, s)
    assert len(cells_lines(tmp_path)) == 10


def test_ctrl_c_signal_stops_the_run_gracefully(clf: Classifier, tmp_path: Path) -> None:
    import signal

    def ctrl_c_at_frame_3(s: dict[str, Any]) -> None:
        if s["frames"] == 3:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup/CI, the default otherwise
    s = run_pipeline(
        clf, synthetic_frames(50), tmp_path, finder=TwoCells(), progress=ctrl_c_at_frame_3
    )
    assert s["status"] == "interrupted" and 3 <= s["frames"]["processed"] < 50
    assert_consistent(tmp_path, s)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_pipeline_writes_annotated_video_for_video_sources(clf: Classifier, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", 6, size=(160, 120))
    out = tmp_path / "out"
    s = run_pipeline(clf, open_source(str(video)), out, finder=TwoCells())
    assert s["status"] == "completed" and s["source"]["end_reason"] == "end of video"
    assert s["outputs"]["annotated"] == "annotated.mp4"
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 6


def test_finder_failure_on_one_frame_is_skipped(clf: Classifier, tmp_path: Path) -> None:
    class Flaky(TwoCells):
        def find(self, frame: np.ndarray) -> list[Cell]:
            if frame[0, 0, 0] == 0:
                raise ValueError("odd frame")
            return super().find(frame)

    frames = [Frame(i, f"f{i}", np.full((32, 32, 3), i % 2 * 100, np.uint8)) for i in range(4)]
    s = run_pipeline(clf, frames, tmp_path, finder=Flaky(), annotate=False)
    assert s["frames"] == {"read": 4, "processed": 2, "skipped": 2}
    assert "cell finder failed: ValueError: odd frame" in s["skipped_frames"][0]["reason"]


# --------------------------------------------------------------------------- CLI


def _cli(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from leukedge.cli import app

    return CliRunner().invoke(app, args)


def test_cli_run_end_to_end_with_corrupt_frames(
    tiny_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(synth_data / "frames", frames)
    (frames / "frame_9998.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (frames / "frame_9999.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = ["run", str(tiny_run), "--source", str(frames), "--out", str(out)]
    result = _cli([*args, "--cell-diameter-px", "60", "--backend", "ort", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    n_good = len(frames_of(synth_data))
    assert s["frames"] == {"read": n_good + 2, "processed": n_good, "skipped": 2}
    assert {x["name"] for x in s["skipped_frames"]} == {"frame_9998.png", "frame_9999.jpg"}
    assert all(x["reason"] for x in s["skipped_frames"])
    assert s["backend"]["chosen"] in ("ort-fp32", "ort-int8") and s["backend"]["reason"]
    assert_consistent(out, s)
    assert len(list((out / "annotated").glob("*.jpg"))) == n_good

    table = _cli([*args, "--max-frames", "2"])  # rich tables; a second run replaces the outputs
    assert table.exit_code == 0, table.output
    assert "blast ratio" in table.output and "end_to_end" in table.output
    assert read_summary(out)["frames"]["read"] == 2
    assert len(list((out / "annotated").glob("*.jpg"))) == 2


def test_cli_run_clear_errors(tiny_run: Path, synth_data: Path, tmp_path: Path) -> None:
    from leukedge.runtime.display import gui_backend

    frames = str(synth_data / "frames")
    bare = tmp_path / "bare"
    ModelSpec(arch="cnn", input_size=SIZE).save(bare / "spec.json")
    r = _cli(["run", str(bare), "--source", frames, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "leukedge export" in r.output
    if not gui_backend():
        r = _cli(["run", str(tiny_run), "--source", frames, "--show", "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and "opencv-python" in r.output and "Jetson" in r.output
    if not gstreamer_available():
        r = _cli(["run", str(tiny_run), "--source", "csi:0", "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and "GStreamer" in r.output
    r = _cli(
        ["run", str(tiny_run), "--source", frames, "--cell-diameter-px", "60", "--um-per-px", "0.2"]
    )
    assert r.exit_code != 0


# --------------------------------------------------------------------------- ground truth


def test_score_frames_matches_boxes_and_classes() -> None:
    from leukedge.runtime.groundtruth import score_frames

    truth = [
        {
            "file": "a.png",
            "cells": [
                {"box": [0, 0, 10, 10], "class": "all"},
                {"box": [20, 20, 30, 30], "class": "hem"},
            ],
        }
    ]
    cells = {
        "a.png": [
            {"box": [0, 0, 10, 11], "class": "all"},
            {"box": [50, 50, 60, 60], "class": "hem"},
        ]
    }
    r = score_frames(cells, truth)
    assert r["detection"]["tp"] == 1 and r["detection"]["fp"] == 1 and r["detection"]["fn"] == 1
    assert r["detection"]["recall"] == 0.5 and r["classification"] == {
        "matched": 1,
        "correct": 1,
        "accuracy": 1.0,
    }


@pytest.mark.slow
def test_run_on_synthetic_frames_with_the_trained_run(
    tiny_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    from leukedge.runtime.groundtruth import run_on_synthetic_frames

    r = run_on_synthetic_frames(tiny_run, synth_data, tmp_path / "out")
    truth = sum(
        len(f["cells"])
        for f in json.loads((synth_data / "frames" / "annotations.json").read_text())["frames"]
    )
    d = r["detection"]
    assert d["truth_cells"] == truth and d["found_cells"] == r["summary"]["cells"]["total"] > 0
    assert 0 < d["recall"] <= 1 and 0 < d["precision"] <= 1
    acc = r["classification"]["accuracy"]
    assert acc is not None and 0 <= acc <= 1
    assert r["summary"]["backend"]["chosen"] in ("ort-fp32", "ort-int8")
    assert json.loads((tmp_path / "out" / "groundtruth.json").read_text())["detection"] == d
