"""Safe file writes: atomic, never through a planted link, with the mode the umask asks for.

Every artifact leukedge writes (checkpoints, ONNX files, engines, reports, run
outputs) goes to a temp file created beside it by ``mkstemp`` (``O_EXCL``, a name
no one can predict, never a link followed) and is renamed over the final name
only when complete. A crash or Ctrl-C never leaves a half-written file under the
final name, and a link planted at the final name is replaced, not written
through. ``mkstemp`` makes files 0600; published files get ``0o666 & ~umask``
like any other program's. A killed writer leaves a temp file whose name says it
is leukedge's and which process made it; :func:`sweep_stale_temps` removes those
of dead processes. A full disk raises :class:`DiskFullError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".leukedge.tmp"
# .<name>.<pid>-<mkstemp's 8 random characters>.leukedge.tmp[.<ext>]
TEMP_PATTERN = re.compile(r"^\..*\.(\d+)-[a-z0-9_]{8}\.leukedge\.tmp(\.[A-Za-z0-9]{1,8})?$")
TEMP_NAME_BYTES = 64  # of the final name kept in the temp name: long names stay under NAME_MAX
DISK_FULL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None
)
NEARLY_FULL_BYTES = 1 << 20


class OutputError(Exception):
    """A folder or file leukedge refuses to write: not its own, in use, or a link elsewhere."""

    exit_code = 2  # the command names an output that cannot be used: a usage error


class DiskFullError(OSError):
    """The disk (or the user's quota) is full; the message names the file that did not fit."""

    def __init__(self, path: str | Path, cause: BaseException | None = None) -> None:
        code = getattr(cause, "errno", None)
        quota = code is not None and code == getattr(errno, "EDQUOT", None)
        what = "the disk quota is exceeded" if quota else "the disk is full"
        super().__init__(
            code if code in DISK_FULL_ERRNOS else errno.ENOSPC,
            f"{what}: could not write {path}; free some space (or write to another disk) "
            "and run again",
        )
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or an exceeded quota."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False


def as_disk_full(exc: BaseException, path: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``path`` when ``exc`` comes from a full disk, else None.

    Libraries that write in C++ report a full disk without its errno (torch.save
    to a path: "unexpected pos"); a failed write into a folder with (nearly) no
    space left counts as a full disk too.
    """
    if isinstance(exc, DiskFullError):
        return exc
    if is_disk_full(exc):
        return DiskFullError(path, exc)
    if isinstance(exc, Exception) and not isinstance(exc, OutputError):
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free < NEARLY_FULL_BYTES:
                return DiskFullError(path, exc)
    return None


# --------------------------------------------------------------------------- file mode


def _read_umask() -> int:
    """The process umask without changing it (Linux /proc), else by setting it back at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


# --------------------------------------------------------------------------- temp files


def temp_prefix(name: str) -> str:
    """``.<name>.<pid>-``: the final name (cut to fit NAME_MAX) and the writing process."""
    short = name.encode("utf-8")[:TEMP_NAME_BYTES].decode("utf-8", "ignore")
    return f".{short}.{os.getpid()}-"


class TempFile:
    """A new, empty file beside ``dest``; :meth:`publish` renames it over ``dest``.

    ``ext`` ends the temp name, for writers that choose a format by extension
    (OpenCV's video writer).
    """

    def __init__(self, dest: str | Path, ext: str = "") -> None:
        self.dest = Path(dest)
        try:
            self.fd, name = tempfile.mkstemp(
                dir=self.dest.parent, prefix=temp_prefix(self.dest.name), suffix=TEMP_SUFFIX + ext
            )
        except OSError as e:
            full = as_disk_full(e, self.dest)
            if full is None:
                raise
            raise full from e
        self.path = Path(name)
        st = os.fstat(self.fd)
        self._id = (st.st_dev, st.st_ino)

    def write(self, data: bytes) -> None:
        """All of ``data`` at the end of the file (the file's own descriptor: no name lookup)."""
        write_all(self.fd, data)

    def publish(self, fsync: bool = True) -> Path:
        """Give the file its mode and final name; refuse if the temp name was swapped for a link."""
        st = os.lstat(self.path)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != self._id:
            raise OutputError(
                f"{self.path} was replaced by something else while leukedge wrote it; "
                f"{self.dest} was not written (is another program changing this folder?)"
            )
        if hasattr(os, "fchmod"):
            os.fchmod(self.fd, FILE_MODE)
        else:  # pragma: no cover (Windows)
            os.chmod(self.path, FILE_MODE)
        if fsync:
            os.fsync(self.fd)
        os.replace(self.path, self.dest)
        self.close()
        if fsync:
            _fsync_dir(self.dest.parent)
        return self.dest

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a full disk can make one write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    """Make a rename survive power loss (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _temp_for(path: str | Path, fsync: bool, ext: str = "") -> Iterator[TempFile]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = TempFile(path, ext)
    try:
        yield tmp
        tmp.publish(fsync)
    except BaseException as e:
        full = as_disk_full(e, path)
        tmp.discard()
        if full is not None and full is not e:
            raise full from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only on success.

    For writers that want a file name (ONNX, ONNX Runtime's quantizer, matplotlib).
    """
    with _temp_for(path, fsync) as tmp:
        yield tmp.path


@contextlib.contextmanager
def atomic_file(path: str | Path, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Yield a binary file to write ``path`` through; it appears only when complete.

    Writes go to the temp file's own descriptor, so errors keep their errno
    (``torch.save`` to a file object reports a full disk; to a path it does not).
    """
    with _temp_for(path, fsync) as tmp, os.fdopen(tmp.fd, "wb", closefd=False) as f:
        yield f


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    with _temp_for(path, fsync) as tmp:
        tmp.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj, indent=2) + "\n")


NEW_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def open_fresh(path: str | Path, encoding: str = "utf-8") -> IO[str]:
    """A new text file at ``path`` for writing as things happen (a log).

    What was there is replaced; a link there is removed, never written through.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return os.fdopen(os.open(path, NEW_FILE_FLAGS, 0o666), "w", encoding=encoding)


# --------------------------------------------------------------------------- stale temps


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files killed leukedge writers left in ``folder`` (not in sub-folders).

    Only names of leukedge's own pattern whose writing process no longer runs on
    this machine; a link with such a name is removed, never followed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = TEMP_PATTERN.match(entry.name)
        if m is None or entry.is_dir(follow_symlinks=False) or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


# --------------------------------------------------------------------------- JSON and hashes


def json_text(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always writes valid JSON: NaN and infinities become null.

    Python writes ``NaN`` tokens by default, which no strict JSON reader accepts; a
    value that may legitimately be undefined (an AUROC of one class) is null instead.
    """
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def json_safe(obj: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` with numpy values and paths made plain and every non-finite float made None.

    ``fallback`` turns any other object into something JSON holds (default: TypeError).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v, fallback) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, fallback) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return json_safe(obj.tolist(), fallback)
    if hasattr(obj, "item"):
        return json_safe(obj.item(), fallback)
    if isinstance(obj, (set, frozenset)):
        return [json_safe(v, fallback) for v in sorted(obj, key=str)]
    if fallback is not None:
        return json_safe(fallback(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
