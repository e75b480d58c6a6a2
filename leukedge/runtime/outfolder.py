"""The output folder of a run: new and unique by default, locked while written, and
cleared of a previous run's files only (never of anything leukedge did not write).

``--out`` may be a link (to a bigger disk, say): it is followed, as users expect.
The folders leukedge makes inside it (``annotated/``) must be real folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from leukedge.io import OutputError, sweep_stale_temps
from leukedge.runtime.gallery import REPORT_FILE, TRACKS_FILE, remove_report
from leukedge.runtime.outputs import (
    ANNOTATED_DIR,
    ANNOTATED_VIDEO,
    ANNOTATED_VIDEO_FALLBACK,
    CELLS_FILE,
    SUMMARY_FILE,
)

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no lock)
    fcntl = None  # type: ignore[assignment]

DEFAULT_PARENT = Path("leukedge-run")
LOCK_FILE = ".leukedge.lock"
CELL_KEYS = {"frame", "name", "cell", "box", "class", "probs"}


def new_run_folder(parent: Path = DEFAULT_PARENT) -> Path:
    """``parent/<date-time>-<4 hex>``, made here (``mkdir`` fails if it exists: never shared)."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(64):
        path = parent / f"{stamp}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise OutputError(f"could not make a new folder in {parent}; give --out")


class FolderLock:
    """An exclusive lock on ``folder/.leukedge.lock`` while a run writes ``folder``.

    ``flock``: the kernel drops it when the process ends, however it ends, so a
    crashed run never blocks the next one. The file stays (removing it would
    race with a run taking it). Without ``fcntl`` (Windows) or on a file system
    that cannot lock, the run goes on unlocked.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd = -1

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as e:
            raise OutputError(
                f"cannot lock {self.path} ({e.strerror}); choose another --out"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise OutputError(
                f"{self.path.parent} is in use by another leukedge run{who}; wait for it to "
                "end or choose another --out"
            ) from None
        except OSError:  # a file system without locks (some network and FUSE mounts): run unlocked
            os.close(fd)
            return
        with contextlib.suppress(OSError):  # who holds it: for the message of a refused run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def prepare(out_dir: Path) -> None:
    """Make ``out_dir`` (a link to a folder is fine) and sweep temp files of killed runs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def sweep(out_dir: Path) -> None:
    """Temp files killed runs left here (only leukedge's, only of dead processes)."""
    sweep_stale_temps(out_dir)
    if not (out_dir / ANNOTATED_DIR).is_symlink():
        sweep_stale_temps(out_dir / ANNOTATED_DIR)


def clear_previous(out_dir: Path) -> None:
    """Remove the files an earlier run wrote here, so outputs of two runs never mix.

    Only what an earlier leukedge run claims: its summary.json, cells.jsonl, the
    annotated video it names, the annotated PNGs it lists and its report.html,
    tracks.jsonl and cell pictures. Files of those names
    that are not leukedge's make the run refuse the folder.
    """
    summary = _previous_summary(out_dir)
    cells = out_dir / CELLS_FILE
    if summary is None:
        strangers = [
            n
            for n in (ANNOTATED_VIDEO, ANNOTATED_VIDEO_FALLBACK, REPORT_FILE, TRACKS_FILE)
            if os.path.lexists(out_dir / n)
        ]
        if os.path.lexists(cells) and not _is_cells_file(cells):
            strangers.append(CELLS_FILE)
        if strangers:
            raise OutputError(
                f"{out_dir} holds {', '.join(strangers)} that no leukedge run wrote; "
                "choose an empty or new folder for --out"
            )
        _remove(cells)
        return
    outputs = summary.get("outputs") or {}
    video = outputs.get("annotated")
    names = [CELLS_FILE]
    if video in (ANNOTATED_VIDEO, ANNOTATED_VIDEO_FALLBACK):
        names.append(video)
    for name in names:
        _remove(out_dir / name)
    files = outputs.get("annotated_files") or {}
    folder = out_dir / ANNOTATED_DIR
    if isinstance(files, dict) and folder.is_dir() and not folder.is_symlink():
        for rel in files.values():
            p = out_dir / str(rel)
            if isinstance(rel, str) and p.parent == folder:  # nothing outside annotated/
                _remove(p)
    remove_report(out_dir, outputs)
    _remove(out_dir / SUMMARY_FILE)


def _previous_summary(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / SUMMARY_FILE
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(path.read_text()) if not path.is_symlink() else None
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and {"status", "outputs", "cells", "frames"} <= set(data):
        return data
    raise OutputError(f"{path} is not a leukedge summary; choose an empty or new folder for --out")


def _is_cells_file(path: Path) -> bool:
    """An empty cells.jsonl or one whose first line is a cell record (a run killed early)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
        record = json.loads(first) if first else {}
        return not first or (isinstance(record, dict) and set(record) >= CELL_KEYS)
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
