"""Atomic writes: no partial file, no write through a link, the umask's mode, a full disk named.

Real files in tmp_path; a full disk is injected by making the write raise ENOSPC.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leukedge import io as lio
from leukedge.io import (
    DiskFullError,
    OutputError,
    atomic_file,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    open_fresh,
    sweep_stale_temps,
)

REPO = Path(__file__).resolve().parents[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_published_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    code = (
        "import sys; from leukedge.io import atomic_write_text, atomic_file\n"
        "atomic_write_text(sys.argv[1] + '/a.json', '{}')\n"
        "with atomic_file(sys.argv[1] + '/b.pt') as f: f.write(b'x')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        env=env,
        preexec_fn=lambda: os.umask(umask),  # noqa: PLW1509 (only sets the child's umask)
    )
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_file_names_near_name_max_are_written(tmp_path: Path) -> None:
    name = "x" * 250 + ".json"
    atomic_write_text(tmp_path / name, "{}")
    assert (tmp_path / name).read_text() == "{}" and leftovers(tmp_path) == []


def test_a_link_at_the_destination_is_replaced_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "summary.json").symlink_to(outside)
    atomic_write_json(folder / "summary.json", {"a": 1})
    assert outside.read_text() == "keep me"
    assert not (folder / "summary.json").is_symlink()
    assert (folder / "summary.json").read_text().startswith("{")


def test_a_log_opened_fresh_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    log = tmp_path / "build.log"
    log.symlink_to(outside)
    with open_fresh(log) as f:
        f.write("[INFO] building\n")
    assert outside.read_text() == "keep me" and not log.is_symlink()
    assert log.read_text() == "[INFO] building\n"


def test_a_temp_file_swapped_for_a_link_is_never_published(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    with pytest.raises(OutputError, match="was replaced"), atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.unlink()
        tmp.symlink_to(outside)
    assert not (tmp_path / "m.onnx").exists() and outside.read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_full_disk_in_a_writer_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old weights")
    with pytest.raises(DiskFullError) as info, atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise enospc()
    message = str(info.value)
    assert "disk is full" in message and str(target) in message and "\n" not in message
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old weights" and leftovers(tmp_path) == []


def test_full_disk_in_a_short_write_is_a_disk_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))  # what fits
        raise enospc()

    monkeypatch.setattr(lio.os, "write", write)
    with pytest.raises(DiskFullError):
        atomic_write_bytes(tmp_path / "engine.plan", b"0123456789")
    monkeypatch.undo()
    assert leftovers(tmp_path) == [] and not (tmp_path / "engine.plan").exists()


def test_full_disk_through_a_file_object(tmp_path: Path) -> None:
    """torch.save and savefig write through atomic_file: the errno reaches the caller."""
    with pytest.raises(DiskFullError), atomic_file(tmp_path / "last.pt") as f:
        f.write(b"abc")
        raise enospc()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_checkpoint_full_disk_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from leukedge.train.checkpoint import save_weights

    model = torch.nn.Linear(4, 2)
    path = tmp_path / "checkpoint.pt"
    save_weights(path, model)
    before = path.read_bytes()

    def full_save(obj: object, f: object, *a: object, **k: object) -> None:
        f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise enospc()

    monkeypatch.setattr(torch, "save", full_save)
    with pytest.raises(DiskFullError, match="disk is full"):
        save_weights(path, model)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_sweep_removes_only_stale_leukedge_temps(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        f".checkpoint.pt.{dead.pid}-abcd1234.leukedge.tmp",
        f".a.mp4.{dead.pid}-x_y1z2w3.leukedge.tmp.mp4",
    ]
    live = f".summary.json.{os.getpid()}-abcd1234.leukedge.tmp"
    users = [".notes.tmp", "run.tmp", f".x.{dead.pid}-abc.leukedge.tmp", "frame.png"]
    for name in [*stale, live, *users]:
        (tmp_path / name).write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    link = tmp_path / f".frame.png.{dead.pid}-zzzzzzzz.leukedge.tmp"
    link.symlink_to(outside)
    removed = sweep_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([*stale, link.name])
    assert outside.read_text() == "keep me"
    assert {p.name for p in tmp_path.iterdir()} == {live, *users, "outside.txt"}
    assert sweep_stale_temps(tmp_path / "missing") == []


# --------------------------------------------------------------------------- train and export


def _cli(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from leukedge.cli import app

    return CliRunner().invoke(app, args)


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line_and_exit_1(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")

    def full_save(obj: object, f: Any, *a: object, **k: object) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise enospc()

    monkeypatch.setattr(torch, "save", full_save)
    out = tmp_path / "run"
    args = ["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1"]
    r = _cli([*args, "--img-size", "32", "--batch-size", "32", "--workers", "0"])
    assert r.exit_code == 1, r.output
    assert "disk is full" in _one_error_line(r.output) and "checkpoint" in r.output
    assert not (out / "checkpoint.pt").exists() and leftovers(out) == []


@pytest.mark.slow
def test_export_on_a_full_disk_stops_at_once(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import onnx

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "bench", "engines"))
    real_save = onnx.save_model

    def full_for_fp16(proto: Any, f: Any, *a: Any, **k: Any) -> None:
        if "fp16" not in str(f):
            return real_save(proto, f, *a, **k)
        Path(f).write_bytes(b"half a model")
        raise enospc()

    monkeypatch.setattr(onnx, "save_model", full_for_fp16)
    r = _cli(["export", str(run), "--precision", "fp32,fp16,int8"])
    assert r.exit_code == 1, r.output
    assert "disk is full" in _one_error_line(r.output) and "model.fp16.onnx" in r.output
    names = sorted(p.name for p in (run / "export").iterdir())
    assert names == ["model.fp32.onnx"]  # no partial fp16, no temp, int8 not tried
