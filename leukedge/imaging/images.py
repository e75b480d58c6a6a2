"""Reading microscope images that survive real files.

Real datasets hold grayscale, 16-bit, RGBA, BMP/PNG/JPEG/TIFF files and now and
then a truncated or corrupt one. Everything here ends as an 8-bit, 3-channel BGR
array (OpenCV's order) or an :class:`ImageReadError` that says which file and why,
so callers can list and skip bad files instead of crashing a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file that cannot be decoded into pixels."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _truncation_reason(data: bytes, suffix: str) -> str | None:
    """Cheap structural checks that catch truncated files OpenCV decodes silently."""
    if suffix in (".jpg", ".jpeg") or data[:2] == b"\xff\xd8":
        # A complete JPEG ends with the EOI marker (allow trailing padding bytes).
        if b"\xff\xd9" not in data[-64:]:
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-32:]:
            return "truncated PNG (no IEND chunk)"
    elif data[:2] == b"BM" and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        if declared and len(data) < declared:
            return f"truncated BMP ({len(data)} of {declared} bytes)"
    return None


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Convert any decoded image (gray, BGRA, 16-bit, float) to 8-bit BGR.

    16-bit images are scaled by the bit depth their values use (12-bit camera
    data stored in 16-bit containers stays visible instead of turning black).
    Alpha is composited over black, the background of masked cell images.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"unsupported image shape {img.shape}")
    img = _to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        return np.clip(img[:, :, :3].astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.floating):
        finite = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if float(finite.max(initial=0.0)) <= 1.0 + 1e-6 else 1.0
        return np.clip(finite * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        peak = int(img.max(initial=0))
        bits = 8
        for b in (8, 10, 12, 14, 16, 32):
            bits = b
            if peak < (1 << b):
                break
        if bits == 8:
            return np.clip(img, 0, 255).astype(np.uint8)
        return np.clip(img.astype(np.float64) * (255.0 / ((1 << bits) - 1)) + 0.5, 0, 255).astype(
            np.uint8
        )
    raise ValueError(f"unsupported pixel type {img.dtype}")


def decode_raw(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes as stored (any depth and channels), or raise.

    Truncated files are refused here: OpenCV decodes some of them silently.
    """
    if not data:
        raise ImageReadError(name, "empty file")
    reason = _truncation_reason(data, Path(name).suffix.lower())
    if reason:
        raise ImageReadError(name, reason)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:  # over CV_IO_MAX_IMAGE_PIXELS, or a decoder that gave up
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else "cv2.error"
        if "CV_IO_MAX_IMAGE_PIXELS" in detail:
            detail = "more pixels than OpenCV's limit CV_IO_MAX_IMAGE_PIXELS (2^30 by default)"
        raise ImageReadError(name, f"OpenCV refused it: {detail}") from None
    except MemoryError:
        raise ImageReadError(name, "too large to decode in the memory available") from None
    if img is None or img.size == 0:
        raise ImageReadError(name, "not a readable image (OpenCV could not decode it)")
    return img


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into 8-bit BGR, or raise :class:`ImageReadError`."""
    img = decode_raw(data, name)
    try:
        return to_bgr_uint8(img)
    except ValueError as e:
        raise ImageReadError(name, str(e)) from e


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit BGR; raise :class:`ImageReadError` on any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from e
    return decode_image(data, str(path))


def tiff_page_count(data: bytes) -> int:
    """Pages (IFDs) of a classic TIFF, at most 1000 counted; 1 for anything else.

    OpenCV's ``imdecode`` returns the first page only; callers say so when there are more.
    """
    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    offset, pages, seen = int.from_bytes(data[4:8], order), 0, set()
    while 8 <= offset <= len(data) - 2 and offset not in seen and pages < 1000:
        seen.add(offset)
        pages += 1
        entries = int.from_bytes(data[offset : offset + 2], order)
        nxt = offset + 2 + 12 * entries
        if nxt + 4 > len(data):
            break
        offset = int.from_bytes(data[nxt : nxt + 4], order)
    return max(1, pages)


def looks_grayscale(image: np.ndarray) -> bool:
    """Whether a BGR image has no colour (every sampled pixel has equal channels).

    The cell finder separates nuclei from cytoplasm by stain colour; a grayscale frame
    gives it nothing to work with. Sampled on a grid, so it costs nothing per frame.
    """
    img = np.asarray(image)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return True
    if img.ndim != 3 or img.shape[2] < 3 or img.size == 0:
        return False
    step = max(1, min(img.shape[:2]) // 64)
    s = img[::step, ::step, :3].astype(np.int16)
    return bool(
        np.abs(s[..., 0] - s[..., 1]).max() <= 2 and np.abs(s[..., 1] - s[..., 2]).max() <= 2
    )
