"""Light and stain: reduce a frame, fit its background, and turn it into optical-density
stain maps (nuclear stain and cell density)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_LOG1P = np.log1p(np.arange(256, dtype=np.float32)).reshape(256, 1)
_LOG_LUT = np.repeat(_LOG1P.reshape(1, 256, 1), 3, axis=2)


def shrink(img: np.ndarray, scale: float) -> np.ndarray:
    """Downscale by ``scale`` (<= 1).

    Area averaging, except for strong reductions of large frames: there area
    averaging costs more than the rest of the finder together, and bilinear
    sampling is enough because the stain maps are smoothed afterwards.
    """
    if scale >= 0.999:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    fast = scale < 0.5 and h * w > 1_000_000
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if fast else cv2.INTER_AREA)


def background_grid(img: np.ndarray, tiles: tuple[int, int] = (6, 8)) -> np.ndarray:
    """Smooth per-channel log background of ``img`` on a coarse grid, float32 (gh, gw, 3).

    Each tile votes with the median colour of its brightest 30 %; a quadratic
    surface per channel is fitted to the votes, dropping tiles darker than the
    fit (tiles covered by cells). Dividing by it removes uneven illumination and
    the white balance of lamp and camera at once.
    """
    h, w = img.shape[:2]
    ty, tx = max(1, min(tiles[0], h // 4)), max(1, min(tiles[1], w // 4))
    k = 8
    thumb = cv2.resize(img, (tx * k, ty * k), interpolation=cv2.INTER_AREA)
    logs = cv2.LUT(thumb, _LOG_LUT).reshape(ty, k, tx, k, 3).transpose(0, 2, 1, 3, 4)
    logs = logs.reshape(ty * tx, k * k, 3)
    n_top = int(0.3 * k * k)
    order = np.argsort(logs.mean(axis=2), axis=1)[:, -n_top:]
    top = np.sort(np.take_along_axis(logs, order[:, :, None], axis=1), axis=1)
    votes = top[:, n_top // 2, :]  # per-channel median of the brightest 30 %
    if ty * tx < 8:
        return votes.max(axis=0).reshape(1, 1, 3).astype(np.float32)
    A, basis = _quadratic_bases(ty, tx)
    keep = np.ones(len(A), dtype=bool)
    coef = np.zeros((6, 3))
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(A[keep], votes[keep], rcond=None)
        res = (votes - A @ coef).mean(axis=1)
        spread = _median(np.abs(res[keep])) + 1e-3
        new_keep = res > -2.5 * spread
        if new_keep.sum() < 6 or (new_keep == keep).all():
            break
        keep = new_keep
    return (basis @ coef).astype(np.float32)


def _median(values: np.ndarray) -> float:
    """:func:`numpy.median` of a short, non-empty 1-D float array without NaN."""
    s = np.sort(values)
    m = s.size // 2
    return float(s[m]) if s.size % 2 else float((s[m - 1] + s[m]) / 2)


@lru_cache(maxsize=16)
def _quadratic_bases(ty: int, tx: int, g: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic terms (1, x, y, x^2, xy, y^2) at tile centres and at g x g grid nodes, read-only.

    Coordinates run from -0.5 to 0.5 across the image; the first array has one
    row per tile of the ty x tx grid, the second one entry per grid node.
    """
    yy, xx = np.meshgrid(
        (np.arange(ty) + 0.5) / ty - 0.5, (np.arange(tx) + 0.5) / tx - 0.5, indexing="ij"
    )
    X, Y = xx.ravel(), yy.ravel()
    A = np.stack([np.ones_like(X), X, Y, X * X, X * Y, Y * Y], axis=1)
    gy, gx = np.meshgrid(
        (np.arange(g) + 0.5) / g - 0.5, (np.arange(g) + 0.5) / g - 0.5, indexing="ij"
    )
    basis = np.stack([np.ones_like(gx), gx, gy, gx * gx, gx * gy, gy * gy], axis=-1)
    A.flags.writeable = False
    basis.flags.writeable = False
    return A, basis


@dataclass
class StainMaps:
    """Per-pixel stain measures of a working image (float32, same size)."""

    nuclear: np.ndarray  # OD_red - OD_blue: nuclei/platelets > 0, red cells < 0
    density: np.ndarray  # mean OD: any cell material > 0


def stain_maps(img: np.ndarray, bg: np.ndarray | None = None) -> StainMaps:
    """Optical densities relative to the background, reduced to two stain measures.

    ``bg`` is a :func:`background_grid` (of this image or of another size of the
    same frame: it covers the frame whatever its resolution); fitted here when None.
    """
    h, w = img.shape[:2]
    if bg is None:
        bg = background_grid(img)
    nuclear = cv2.resize(
        np.ascontiguousarray(bg[..., 2] - bg[..., 0]), (w, h), interpolation=cv2.INTER_LINEAR
    )
    density = cv2.resize(
        np.ascontiguousarray(bg.mean(axis=2)), (w, h), interpolation=cv2.INTER_LINEAR
    )
    b, g, r = (cv2.LUT(c, _LOG1P) for c in cv2.split(img))
    total = np.add(b, g, out=g)
    total += r
    total *= np.float32(1.0 / 3.0)
    np.subtract(density, total, out=density)
    np.subtract(nuclear, np.subtract(r, b, out=r), out=nuclear)
    return StainMaps(nuclear=nuclear, density=density)
