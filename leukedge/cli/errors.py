"""Every failure of a command as one line that says what is wrong and what to do.

Exit codes: 2 when the command line itself is wrong (a value that can never work,
a path that is not what the command needs: :class:`leukedge.validate.UsageError`
and the errors that set ``exit_code = 2``), 1 when a valid command failed (a
corrupt file, a full disk, a model that cannot run). Errors are told apart by
their attributes and module, never by importing their classes: the error path
must not pay for importing torch.
"""

from __future__ import annotations

import errno
import os
from typing import Any

USAGE = 2
FAILURE = 1

_OS_HINTS = {
    errno.EACCES: "check the permissions, or choose another folder",
    errno.EPERM: "check the permissions, or choose another folder",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is where a file should be",
    errno.ENAMETOOLONG: "use a shorter path",
}


def debug_enabled(flag: bool = False) -> bool:
    """Tracebacks are shown with ``--debug`` or ``LEUKEDGE_DEBUG=1``."""
    return flag or os.environ.get("LEUKEDGE_DEBUG", "").strip().lower() in ("1", "true", "yes")


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for any exception a command raised."""
    code = getattr(e, "exit_code", None)
    if isinstance(e, MemoryError):
        return FAILURE, (
            "out of memory: use a smaller --batch/--batch-size or --img-size, or close other "
            "programs"
        )
    if isinstance(e, OSError) and not _is_leukedge(e):
        from leukedge.io import DiskFullError, is_disk_full

        if is_disk_full(e):
            return FAILURE, str(DiskFullError(e.filename or "a file", e))
        return (code if isinstance(code, int) else _os_code(e)), _os_message(e)
    name = type(e).__name__
    text = " ".join(str(e).split()) if str(e).strip() else name
    if _is_leukedge(e) or isinstance(code, int):
        return (code if isinstance(code, int) else FAILURE), text
    module = type(e).__module__ or ""
    if module.startswith("cv2") or name == "error" and "OpenCV" in text:
        return FAILURE, f"OpenCV failed: {_first_line(e)}"
    if name == "DecodeError" and "protobuf" in module:
        return FAILURE, f"a model file is not a valid ONNX/protobuf file ({text})"
    if isinstance(e, UnicodeDecodeError):
        return FAILURE, f"a file is not UTF-8 text ({text})"
    if isinstance(e, (ValueError, RuntimeError, LookupError, TypeError)):
        return FAILURE, f"{name}: {text} (rerun with --debug for the traceback)"
    return FAILURE, (
        f"unexpected {name}: {text} (rerun with --debug for the traceback, and please report it)"
    )


def _is_leukedge(e: BaseException) -> bool:
    """leukedge's own errors carry messages written for users."""
    return any((t.__module__ or "").startswith("leukedge.") for t in type(e).__mro__)


def _os_code(e: OSError) -> int:
    return (
        USAGE
        if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError))
        else FAILURE
    )


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    where = f" {e.filename}" if e.filename else ""
    hint = _OS_HINTS.get(e.errno or 0)
    return f"cannot use{where}: {what}" + (f" ({hint})" if hint else "")


def _first_line(e: Any) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # OpenCV: "OpenCV(4.x) file.cpp:79: error: (-215:Assertion failed) what in function 'f'"
    return lines[-1][:300] if lines else type(e).__name__
