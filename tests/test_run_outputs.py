"""`leukedge run` outputs lose nothing and write nowhere else: names, locks, full disks, links, kills.

A tiny ONNX model built here (no torch), real files and real processes; a full
disk is injected by making ``os.write`` raise ENOSPC for files of the run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
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
from stub_finders import TwoCells

from leukedge.io import OutputError
from leukedge.runtime.cells import Cell
from leukedge.runtime.classifier import Classifier, EmptyCropError
from leukedge.runtime.outfolder import LOCK_FILE, FolderLock, new_run_folder
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import Frame, open_source
from leukedge.spec import ONNX_METADATA_KEY, ModelSpec

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def tiny_onnx(path: Path) -> Path:
    """Mean colour -> two logits: a real ONNX classifier with the spec embedded, in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = ModelSpec(arch="cnn", input_size=SIZE, crop_style="context")
    w = numpy_helper.from_array(np.array([[1, -1, 0.5], [-1, 1, -0.5]], np.float32), "W")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "B")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["logits"], transB=1),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], [w, b]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, spec.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.fp32.onnx")


@pytest.fixture(scope="module")
def clf(model_path: Path) -> Iterator[Classifier]:
    c = Classifier.load(model_path, backend="ort", device="cpu")
    yield c
    c.close()


def frames(n: int) -> Iterator[Frame]:
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Frame(i, f"f{i:03d}.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def write_images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in names:
        img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(Path(name).suffix or ".png", img)
        assert ok
        (folder / name).write_bytes(buf.tobytes())
    return folder


def run(clf: Classifier, source: Any, out: Path, **kw: Any) -> dict[str, Any]:
    return run_pipeline(clf, source, out, finder=TwoCells(), **kw)


def cells_lines(out: Path) -> list[dict[str, Any]]:
    text = (out / "cells.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("jpg", {"frame.jpg": "frame.jpg", "frame.png": "frame.png.jpg", "a b.png": "a_b.png.jpg"}),
        ("png", {"frame.jpg": "frame.jpg.png", "frame.png": "frame.png", "a b.png": "a_b.png"}),
    ],
)
def test_every_input_keeps_its_own_annotated_file(
    clf: Classifier, tmp_path: Path, fmt: str, expected: dict[str, str]
) -> None:
    names = ["frame.jpg", "frame.png", "a b.png", "a_b.png", "фото.png", "снимок.png", "X.PNG"]
    names += ["x.png", "X.JPG", "x.jpg"]
    src = write_images(tmp_path / "in", names)
    out = tmp_path / "out"
    s = run(clf, str(src), out, frame_format=fmt)
    assert s["frames"]["processed"] == len(names)
    files = s["outputs"]["annotated_files"]
    assert set(files) == set(names)
    assert len({f.casefold() for f in files.values()}) == len(names)  # also on macOS/Windows
    on_disk = sorted(p.name for p in (out / "annotated").iterdir())
    assert sorted(f.split("/", 1)[1] for f in files.values()) == on_disk
    for name, file in expected.items():
        assert files[name] == f"annotated/{file}"
    magic = b"\xff\xd8\xff" if fmt == "jpg" else b"\x89PNG"
    assert all((out / f).read_bytes().startswith(magic) for f in files.values())
    for r in cells_lines(out):
        assert r["annotated"] == files[r["name"]]
    assert s["outputs"]["annotated_frames"] == len(names)
    assert s["outputs"]["annotated_format"] == fmt and s["outputs"]["annotated_dropped"] == 0


def test_file_names_of_250_characters_are_annotated(clf: Classifier, tmp_path: Path) -> None:
    long_a, long_b = "a" * 240 + "_1.png", "a" * 240 + "_2.png"
    src = write_images(tmp_path / "in", [long_a, long_b])
    s = run(clf, str(src), tmp_path / "out")
    assert s["status"] == "completed" and s["frames"]["processed"] == 2
    files = s["outputs"]["annotated_files"]
    assert len(set(files.values())) == 2
    assert all(len(f.split("/", 1)[1]) < 200 for f in files.values())
    assert len(list((tmp_path / "out" / "annotated").iterdir())) == 2


def test_a_second_run_replaces_only_what_the_first_wrote(clf: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(clf, frames(3), out)
    mine = out / "annotated" / "notes.jpg"
    mine.write_bytes(b"the user's own file")
    run(clf, frames(2), out)
    assert mine.read_bytes() == b"the user's own file"
    assert set(os.listdir(out / "annotated")) == {"notes.jpg", "f000.png.jpg", "f001.png.jpg"}
    assert len(cells_lines(out)) == 4


def test_an_output_folder_of_other_files_is_refused(clf: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "own summary"}')
    with pytest.raises(OutputError, match="not a leukedge summary"):
        run(clf, frames(1), out)
    assert (out / "summary.json").read_text() == '{"my": "own summary"}'
    (out / "summary.json").unlink()
    (out / "cells.jsonl").write_text("my notes\n")
    with pytest.raises(OutputError, match="no leukedge run wrote"):
        run(clf, frames(1), out)
    assert (out / "cells.jsonl").read_text() == "my notes\n"


# --------------------------------------------------------------------------- links


def test_a_link_planted_at_a_temp_name_is_not_written_through(
    clf: Classifier, tmp_path: Path
) -> None:
    src = write_images(tmp_path / "in", ["frame.png"])
    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep me")
    for name in (".frame.png.tmp", ".frame.png.png.tmp", ".frame.png.tmp.png"):
        (out / "annotated" / name).symlink_to(outside)
    s = run(clf, str(src), out)
    assert s["status"] == "completed" and outside.read_bytes() == b"keep me"
    assert not (out / "annotated" / "frame.png").is_symlink()


def test_links_planted_at_outputs_during_a_run_are_replaced(
    clf: Classifier, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")

    def plant(s: dict[str, Any]) -> None:
        if s["frames"] == 2:
            (out / "summary.json").unlink()
            (out / "summary.json").symlink_to(outside)

    s = run(clf, frames(4), out, summary_every=1, progress=plant)
    assert s["status"] == "completed" and outside.read_text() == "keep me"
    assert not (out / "summary.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_an_annotated_folder_that_is_a_link_is_refused(clf: Classifier, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "annotated").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="is a link"):
        run(clf, frames(1), out)
    assert list(elsewhere.iterdir()) == []


def test_an_out_folder_that_is_a_link_is_followed(clf: Classifier, tmp_path: Path) -> None:
    disk = tmp_path / "bigdisk"
    disk.mkdir()
    (tmp_path / "out").symlink_to(disk)
    s = run(clf, frames(2), tmp_path / "out")
    assert s["status"] == "completed" and (disk / "summary.json").is_file()


# --------------------------------------------------------------------------- folders and locks


def test_default_folders_are_new_and_unique(tmp_path: Path) -> None:
    made = [new_run_folder(tmp_path / "leukedge-run") for _ in range(20)]  # all in one second
    assert len(set(made)) == 20 and all(p.is_dir() for p in made)


def test_a_folder_in_use_is_refused_until_its_run_ends(clf: Classifier, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            OutputError, match=f"in use by another leukedge run .process {holder.pid}"
        ):
            run(clf, frames(1), out)
        assert not (out / "summary.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait()
    s = run(clf, frames(1), out)
    assert s["status"] == "completed" and (out / LOCK_FILE).exists()
    with FolderLock(out):  # released at the end of the run
        pass


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from leukedge.runtime.outfolder import FolderLock
    lock = FolderLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_cli_default_out_is_a_new_folder_per_run(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    src = write_images(tmp_path / "in", ["a.png"])
    monkeypatch.chdir(tmp_path)
    args = ["run", str(model_path), "--source", str(src), "--backend", "ort-fp32", "--json"]
    for _ in range(2):
        assert CliRunner().invoke(app, args).exit_code == 0
    made = list((tmp_path / "leukedge-run").iterdir())
    assert len(made) == 2 and all((p / "summary.json").is_file() for p in made)


# --------------------------------------------------------------------------- full disk


class FullDisk:
    """``os.write`` that fills the disk: writes to ``folder`` fail with ENOSPC after ``after`` writes.

    The first failing write is short (what fits is written), as real writes are.
    ``frees`` says whether the space comes back after the first failure (a big
    frame that did not fit, small files that do).
    """

    def __init__(self, folder: Path, after: int, frees: bool) -> None:
        self.folder, self.after, self.frees = str(folder.resolve()), after, frees
        self.calls, self.failed = 0, 0
        self.real = os.write

    def __call__(self, fd: int, data: Any) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(self.folder):
            return self.real(fd, data)
        self.calls += 1
        if self.calls <= self.after or (self.frees and self.failed >= 2):
            return self.real(fd, data)
        self.failed += 1
        if self.failed == 1 and len(data) > 1:
            return self.real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


@needs_proc
def test_full_disk_mid_run_ends_failed_and_keeps_what_fit(
    clf: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(os, "write", FullDisk(out, after=12, frees=True))
    s = run(clf, frames(30), out, summary_every=1)
    monkeypatch.undo()
    assert s["status"] == "failed" and "disk is full" in s["message"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == "failed" and "disk is full" in on_disk["message"]
    lines = cells_lines(out)  # whole lines only: the half-written frame was taken back
    assert len(lines) == on_disk["cells"]["total"] and 0 < len(lines) < 60
    assert temps(out) == []
    for f in on_disk["outputs"]["annotated_files"].values():
        if (out / f).exists():
            assert cv2.imread(str(out / f)) is not None


@needs_proc
def test_disk_full_to_the_end_is_one_clear_error(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    src = write_images(tmp_path / "in", [f"f{i}.png" for i in range(6)])
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(os, "write", FullDisk(out, after=4, frees=False))
    args = ["run", str(model_path), "--source", str(src), "--out", str(out), "--backend", "ort"]
    r = CliRunner().invoke(app, [*args, "--json"])
    monkeypatch.undo()
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)
    errors = [line for line in r.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "disk is full" in errors[0]
    assert temps(out) == []
    json.loads((out / "summary.json").read_text())  # an older summary, complete
    cells_lines(out)


def test_stale_temps_of_a_killed_run_are_swept_at_start(clf: Classifier, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    stale = [
        out / f".summary.json.{dead.pid}-abcdefgh.leukedge.tmp",
        out / "annotated" / f".f000.png.{dead.pid}-abcdefgh.leukedge.tmp",
    ]
    mine = out / "annotated" / ".my.tmp"
    for p in [*stale, mine]:
        p.write_text("x")
    run(clf, frames(1), out)
    assert not any(p.exists() for p in stale) and mine.exists()


# --------------------------------------------------------------------------- odd inputs


def test_a_glob_through_a_link_loop_finds_each_image_once(tmp_path: Path) -> None:
    root = write_images(tmp_path / "data", ["a.png"])
    write_images(root / "sub", ["b.png"])
    (root / "sub" / "up").symlink_to(root)  # a loop
    (root / "sub" / "again").symlink_to(root / "sub")  # and another
    t0 = time.perf_counter()
    src = open_source(str(root / "**" / "*.png"))
    assert time.perf_counter() - t0 < 5
    assert sorted(Path(n).name for n in src.names) == ["a.png", "b.png"]  # type: ignore[attr-defined]


def test_empty_crops_are_a_clear_error_or_a_skipped_frame(clf: Classifier, tmp_path: Path) -> None:
    with pytest.raises(EmptyCropError, match="crop 1 has no pixels"):
        clf.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)])
    assert clf.predict([]).shape == (0, 2)

    class EmptyCrop(TwoCells):
        def find(self, frame: np.ndarray) -> list[Cell]:
            cells = super().find(frame)
            if frame[0, 0, 0] == 7:
                cells[0].crop = np.zeros((0, 0, 3), np.uint8)
            return cells

    imgs = [np.full((32, 32, 3), 7 if i == 1 else 0, np.uint8) for i in range(3)]
    s = run_pipeline(
        clf, [Frame(i, f"f{i}", im) for i, im in enumerate(imgs)], tmp_path, finder=EmptyCrop()
    )
    assert s["status"] == "completed"
    assert s["frames"] == {"read": 3, "processed": 2, "skipped": 1}
    assert "no pixels" in s["skipped_frames"][0]["reason"]


# --------------------------------------------------------------------------- demo folder


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    from leukedge.demo import MARKER, claim_folder, run_demo

    out = tmp_path / "work"
    mine = out / "runs" / "cnn" / "checkpoint.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"weeks of training")
    with pytest.raises(OutputError, match="pick a new or empty folder"):
        run_demo(out)
    assert mine.read_bytes() == b"weeks of training"
    assert sorted(p.name for p in out.iterdir()) == ["runs"]

    fresh = tmp_path / "fresh"
    claim_folder(fresh)  # new: made and marked
    assert (fresh / MARKER).is_file()
    (fresh / "runs").mkdir()
    claim_folder(fresh)  # an earlier demo's: accepted
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty)
    assert (empty / MARKER).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        claim_folder(tmp_path / "file")


@pytest.mark.slow
def test_cli_demo_refusal_is_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    (tmp_path / "runs" / "cnn").mkdir(parents=True)
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "pick a new or empty folder" in r.output


# --------------------------------------------------------------------------- kill -9


_KILL_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_run_outputs import TwoCells
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.pipeline import run_pipeline
    from leukedge.runtime.sources import Frame

    def frames():
        rng = np.random.default_rng(0)
        i = 0
        while True:
            yield Frame(i, f"f{i:05d}.png", rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
            i += 1

    clf = Classifier.load(sys.argv[1], backend="ort", device="cpu")
    out = Path(sys.argv[2])
    first = [True]

    def progress(s):
        if first[0]:
            print("running", flush=True)
            first[0] = False

    run_pipeline(clf, frames(), out, finder=TwoCells(), summary_every=1, progress=progress)
    """
)


@pytest.mark.slow
@needs_proc
def test_killed_runs_leave_only_complete_files(model_path: Path, tmp_path: Path) -> None:
    """SIGKILL at random moments while summary.json, cells.jsonl and PNGs are written."""
    rng = random.Random(0)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-c",
        _KILL_WRITER,
        str(model_path),
        str(out),
        str(Path(__file__).parent),
    ]
    for _ in range(5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "running"
        lines = cells_lines(out)
        assert len(lines) >= summary["cells"]["total"]
        for p in (out / "annotated").iterdir():
            if ".tmp" in p.name:
                continue  # a killed write: swept by the next run
            assert cv2.imread(str(p)) is not None, p.name
    # the next run in the folder sweeps what the killed ones left
    clf = Classifier.load(model_path, backend="ort", device="cpu")
    s = run(clf, frames(1), out)
    assert s["status"] == "completed" and temps(out) == []


def test_cli_run_says_when_the_cell_size_is_a_guess(model_path: Path, tmp_path: Path) -> None:
    """Noise frames hold no red cells: the size is a guess, said on stderr and in summary.json;
    the finder's stain option is recorded."""
    from typer.testing import CliRunner

    from leukedge.cli import app

    src = write_images(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    args = ["run", str(model_path), "--source", str(src), "--backend", "ort-fp32", "--json"]
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--finder-stain", "fixed"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    scale = summary["finder"]["scale"]
    assert summary["finder"]["stain"] == "fixed"
    assert scale["frames"] == 2 and scale["guessed"] == 2
    assert "--um-per-px" in scale["warning"] and "--cell-diameter-px" in scale["warning"]
    assert "warning:" in r.output and "--um-per-px" in r.output
    given = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "given"), "--cell-diameter-px", "12"]
    )
    assert given.exit_code == 0 and "--um-per-px" not in given.output
    default = json.loads((tmp_path / "given" / "summary.json").read_text())
    assert default["finder"]["stain"] == "adaptive"  # the default
    bad = CliRunner().invoke(app, [*args, "--finder-stain", "auto"])
    assert bad.exit_code == 2 and "--finder-stain" in bad.output
