"""Checks of values that come from users and from data files, in one place.

Every number a user gives and every path a data file names passes through here
before anything is read, allocated or written: a bad value ends in one clear
message (:class:`UsageError`, exit code 2 on the command line), never in a NaN
result, an allocation the kernel kills, or a file read from outside a dataset.
The limits below are the largest inputs leukedge accepts; each message names its limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# Model input side (spec.input_size, --img-size): timm backbones use 224-512.
MAX_INPUT_SIZE = 2048
# White-cell diameter in frame pixels (--cell-diameter-px, or implied by --um-per-px).
MIN_CELL_DIAMETER_PX = 4.0
MAX_CELL_DIAMETER_PX = 2000.0
# How the cell finder tells nuclei from red cells (--finder-stain): OD_red - OD_blue read
# through the frame's own red-cell stain (leukedge.runtime.cells.stain; the default), or as is.
FINDER_STAINS = ("adaptive", "fixed")
# Microns per camera pixel: 0.01 (beyond any light microscope) to 20 (a 4x lens on a big sensor).
MIN_UM_PER_PX = 0.01
MAX_UM_PER_PX = 20.0
# Side of one square cell crop before it is resized to the model input (48 MB of BGR pixels).
MAX_CROP_SIDE = 4096
# One batch of preprocessed float32 inputs (images x 3 x S x S x 4 bytes).
MAX_BATCH_BYTES = 2 << 30
MAX_BATCH = 4096


class UsageError(ValueError):
    """A value given by the user that can never work; the command line exits with 2."""

    exit_code = 2


class UnsafePathError(ValueError):
    """A path named by a data file that leads outside the folder it must stay in."""


def finite(value: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float within [lo, hi] (either bound optional), or UsageError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and v < lo:
        raise UsageError(f"{name} must be >= {lo:g}, got {v:g}")
    if hi is not None and v > hi:
        raise UsageError(f"{name} must be <= {hi:g}, got {v:g}")
    return v


def positive(value: Any, name: str, hi: float | None = None) -> float:
    """A finite number > 0 (and <= hi)."""
    v = finite(value, name, hi=hi)
    if v <= 0:
        raise UsageError(f"{name} must be > 0, got {v:g}")
    return v


def integer(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int within [lo, hi]; bools and fractional numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{name} must be a whole number, got {value!r}")
    if lo is not None and value < lo:
        raise UsageError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise UsageError(f"{name} must be <= {hi}, got {value}")
    return value


def choice(value: Any, name: str, options: tuple[str, ...] | list[str]) -> str:
    """``value`` (case and surrounding spaces ignored) if it is one of ``options``."""
    text = str(value).strip().lower()
    if text not in options:
        raise UsageError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return text


DEVICES_HELP = "auto | cpu | cuda | cuda:N"


def device_name(value: Any, name: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased), or UsageError."""
    d = str(value).strip().lower()
    if d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise UsageError(f"{name} must be {DEVICES_HELP}, got {value!r}")


def batch_memory(batch: int, input_size: int, what: str = "--batch") -> None:
    """Refuse a batch whose float32 input tensor alone would pass :data:`MAX_BATCH_BYTES`."""
    need = int(batch) * 3 * int(input_size) ** 2 * 4
    if need > MAX_BATCH_BYTES:
        largest = max(1, MAX_BATCH_BYTES // (3 * int(input_size) ** 2 * 4))
        raise UsageError(
            f"{what} {batch} at input size {input_size} needs {need / 2**30:.1f} GiB for one "
            f"batch of inputs (limit {MAX_BATCH_BYTES / 2**30:.0f} GiB): use {what} {largest} "
            "or less"
        )


def inside_root(root: str | Path, name: str, what: str = "path", follow_links: bool = True) -> Path:
    """``root / name``, refusing names that lead outside ``root`` once resolved.

    For every path a data file names (CSV rows, split.json, sidecars): an absolute
    name, a ``..`` step or a symlink that escapes ``root`` raises
    :class:`UnsafePathError`, so a crafted file cannot make leukedge read elsewhere.
    ``follow_links=False`` checks the name only (for names that are matched, not opened).
    """
    text = str(name).strip()
    if not text:
        raise UnsafePathError(f"empty {what}")
    if "\0" in text:
        raise UnsafePathError(f"{what} {name!r} holds a NUL character")
    rel = Path(text.replace("\\", "/"))
    if rel.is_absolute() or os.path.isabs(text) or rel.drive:
        raise UnsafePathError(f"{what} {name!r} is absolute; it must be relative to {root}")
    if ".." in rel.parts:
        raise UnsafePathError(f"{what} {name!r} steps out of {root} with '..'")
    if not follow_links:
        return Path(root) / rel
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {name!r} leads outside {root} (to {target})")
    return Path(root) / rel
