"""The finder on frames nobody tuned it for: it never raises, its boxes stay in the frame,
and it says when its white-cell size is a guess."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leukedge.runtime.cells import (
    CellFinder,
    ScaleEstimate,
    draw_markers,
    inside_distance,
    judge_scale,
    nucleus_peaks,
)
from leukedge.runtime.cells.stain import (
    FIXED_MIX,
    REFERENCE_OD,
    REFERENCE_OD_TARGET,
    REFERENCE_RED,
    FrameStains,
    background_grid,
    frame_stains,
    stain_maps,
    strength_gain,
)
from leukedge.runtime.cells.types import Tuning
from leukedge.validate import (
    FINDER_STAINS,
    MAX_CELL_DIAMETER_PX,
    MIN_CELL_DIAMETER_PX,
    UsageError,
)

BACKGROUND = np.array([228, 226, 222], np.float32)
RED = np.array([165, 158, 222], np.float32)
CYTOPLASM = np.array([218, 186, 202], np.float32)
NUCLEUS = np.array([185, 75, 110], np.float32)
# red cells of the reference stain (OD 0.3 along REFERENCE_RED), as on BCCD and ALL-IDB1
RED_REF = np.array([190, 181, 204], np.float32)
RED_DARK = np.array([169, 156, 192], np.float32)  # the same stain, OD 0.5


def smear(
    h: int, w: int, seed: int, red_r: float, white_r: float, n_red: int, n_white: int
) -> np.ndarray:
    """Red and white cells as discs on a light background (BGR uint8), any size."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    for _ in range(n_red):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, max(1, int(red_r)), RED.tolist(), -1)
    for _ in range(n_white):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, max(1, int(white_r)), CYTOPLASM.tolist(), -1)
        cv2.circle(img, c, max(1, int(0.65 * white_r)), NUCLEUS.tolist(), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def cast(img: np.ndarray, mix: np.ndarray, strength: float, lamp: np.ndarray) -> np.ndarray:
    """A colour cast of stain and lamp: optical densities mixed by ``mix`` and scaled."""
    od = np.log1p(BACKGROUND) - np.log1p(img.astype(np.float32))
    od = cv2.transform(od, (mix * strength).astype(np.float32))
    out = np.expm1(np.log1p(BACKGROUND * lamp) - od)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@st.composite
def frames(draw: st.DrawFn) -> np.ndarray:
    # one side up to 4000 px; the other keeps the frame under 0.25 Mpx so that the test stays fast
    a = draw(st.integers(1, 4000))
    b = draw(st.integers(1, max(1, min(4000, 250_000 // a))))
    h, w = (a, b) if draw(st.booleans()) else (b, a)
    kind = draw(st.sampled_from(["smear", "uniform", "noise"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        img = np.empty((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
    elif kind == "noise":
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        side = min(h, w)
        red_r = draw(st.floats(1, 60)) * (side / 400 if draw(st.booleans()) else 1.0)
        white_r = red_r * draw(st.floats(0.8, 4.0))
        img = smear(
            h,
            w,
            seed,
            red_r,
            white_r,
            draw(st.integers(0, 60)),
            draw(st.integers(0, 6)),
        )
    if draw(st.booleans()):
        mix = np.eye(3) + rng.normal(0, 0.35, (3, 3))
        img = cast(img, mix, draw(st.floats(0.2, 3.0)), rng.uniform(0.4, 1.0, 3))
    sigma = draw(st.sampled_from([0.0, 0.0, 1.0, 4.0]))
    if sigma and min(h, w) > 2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = draw(st.sampled_from([0, 0, 8, 40]))
    if noise:
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    layout = draw(st.sampled_from(["bgr", "bgr", "gray", "bgra", "u16", "float"]))
    if layout == "gray":
        return img.mean(axis=2).astype(np.uint8)
    if layout == "bgra":
        alpha = np.full((h, w, 1), 255, np.uint8)
        return np.concatenate([img, alpha], axis=2)
    if layout == "u16":
        return img.astype(np.uint16) * 257
    if layout == "float":
        return img.astype(np.float32) / 255.0
    return img


def check_cells(frame: np.ndarray, finder: CellFinder) -> None:
    cells = finder.find(frame)
    h, w = frame.shape[:2]
    for c in cells:
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (c.box, frame.shape)
        assert c.mask.shape == (y1 - y0, x1 - x0) and c.mask.dtype == bool
        assert 0.0 <= c.score <= 1.0 and c.area > 0
    est = finder.last_scale
    if est is not None:
        assert est.cell_diameter_px > 0 and np.isfinite(est.cell_diameter_px)
        assert est.confident == (est.warning is None)
        if not est.confident:
            assert "--um-per-px" in est.warning and "--cell-diameter-px" in est.warning


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames(), st.sampled_from(FINDER_STAINS))
def test_find_never_raises_and_keeps_boxes_in_the_frame(frame: np.ndarray, stain: str) -> None:
    check_cells(frame, CellFinder(stain=stain))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.floats(MIN_CELL_DIAMETER_PX, MAX_CELL_DIAMETER_PX))
def test_given_sizes_never_raise(frame: np.ndarray, diameter: float) -> None:
    """A given white-cell size in the accepted range may be far off the frame (a cell larger
    than the frame)."""
    check_cells(frame, CellFinder(cell_diameter_px=diameter))


def test_white_cells_too_small_to_see_are_refused() -> None:
    with pytest.raises(UsageError, match="cell_diameter_px"):
        CellFinder(cell_diameter_px=MIN_CELL_DIAMETER_PX / 2)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    check_cells(noise, CellFinder(cell_diameter_px=MIN_CELL_DIAMETER_PX))


# --------------------------------------------------------------------------- degenerate masks


def test_full_mask_has_a_finite_depth() -> None:
    full = np.ones((23, 31), np.uint8)
    dist = inside_distance(full)
    assert np.isfinite(dist).all() and dist.max() == 31
    part = full.copy()
    part[0, 0] = 0
    assert inside_distance(part).max() < 40  # an outside pixel: real distances


def test_markers_of_a_nucleus_that_fills_the_working_image() -> None:
    """A mask with no background used to give a FLT_MAX radius that overflowed cv2.circle."""
    cores = np.ones((23, 23), np.uint8)
    pts, radii = nucleus_peaks(cores, 25.0, Tuning())
    assert len(pts) and np.isfinite(radii).all()
    markers = draw_markers(cores, pts, radii, [0] * len(pts))
    assert markers.max() == 1


@pytest.mark.parametrize(
    ("shape", "colour"),
    [((224, 224, 3), (120, 40, 60)), ((9, 9, 3), (90, 20, 40)), ((3000, 12, 3), (200, 80, 90))],
)
def test_a_frame_that_is_all_nucleus(shape: tuple[int, int, int], colour: tuple) -> None:
    frame = np.empty(shape, np.uint8)
    frame[:] = colour
    frame[: shape[0] // 2] = np.array(colour) // 2  # darker half: no background at all
    check_cells(frame, CellFinder())


# --------------------------------------------------------------------------- scale confidence


def _smear_with_red_cells(
    n_red: int, red_r: float, side: int = 480, seed: int = 0, red: np.ndarray = RED
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((side, side, 3), np.float32)
    img[:] = BACKGROUND
    placed: list[tuple[float, float]] = []
    while len(placed) < n_red:
        c = rng.uniform(red_r, side - red_r, 2)
        if all(np.hypot(*(c - p)) > 2.3 * red_r for p in placed):
            placed.append((float(c[0]), float(c[1])))
            cv2.circle(img, (int(c[0]), int(c[1])), int(red_r), red.tolist(), -1, cv2.LINE_AA)
    cv2.circle(img, (side // 2, side // 2), int(1.6 * red_r), CYTOPLASM.tolist(), -1)
    cv2.circle(img, (side // 2, side // 2), int(1.05 * red_r), NUCLEUS.tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_scale_from_many_red_cells_is_confident() -> None:
    finder = CellFinder()
    finder.find(_smear_with_red_cells(60, 12.0))
    est = finder.last_scale
    assert est is not None and est.source == "red cells" and est.confident, est
    assert est.red_cells >= 30 and est.isolated >= 30 and est.cv is not None and est.cv < 0.15
    assert 0.8 * 12 * 2 * 12 / 7.5 < est.cell_diameter_px < 1.2 * 12 * 2 * 12 / 7.5
    assert est.warning is None
    report = finder.scale_report()
    assert report["frames"] == 1 and report["guessed"] == 0 and report["warning"] is None


def test_scale_from_few_red_cells_is_a_guess_that_says_so() -> None:
    finder = CellFinder()
    finder.find(_smear_with_red_cells(4, 30.0))
    est = finder.last_scale
    assert est is not None and not est.confident
    assert "--um-per-px" in est.warning
    finder.find(_smear_with_red_cells(60, 12.0))
    report = finder.scale_report()
    assert report["frames"] == 2 and report["guessed"] == 1
    assert "1 of 2 frames" in report["warning"] and report["last"]["confident"]


def test_a_frame_without_red_cells_or_nuclei_is_a_default_guess() -> None:
    finder = CellFinder()
    frame = np.empty((200, 300, 3), np.uint8)
    frame[:] = BACKGROUND.astype(np.uint8)
    assert finder.find(frame) == []
    est = finder.last_scale
    assert est is not None and est.source == "default" and not est.confident


def test_given_scale_is_confident_and_reported() -> None:
    finder = CellFinder(um_per_px=0.25)
    finder.find(_smear_with_red_cells(4, 30.0))
    est = finder.last_scale
    assert est == ScaleEstimate(48.0, "given") and est.confident
    assert est.to_dict()["source"] == "given"


def test_judge_scale_reasons() -> None:
    t = Tuning()
    ok = ScaleEstimate(40.0, "red cells", red_cells=50, isolated=20, cv=0.1, red_diameter_px=25)
    assert judge_scale(ok, t).confident
    assert (
        "only 3 red cells" in judge_scale(ScaleEstimate(40.0, "red cells", red_cells=3), t).reason
    )
    tiny = ScaleEstimate(6.0, "red cells", red_cells=90, red_diameter_px=3.8)
    assert "3.8 px" in judge_scale(tiny, t).reason
    spread = ScaleEstimate(40.0, "red cells", red_cells=50, cv=0.45, red_diameter_px=25)
    assert "vary by 45%" in judge_scale(spread, t).reason
    assert not judge_scale(ScaleEstimate(40.0, "largest nucleus"), t).confident


def test_the_run_summary_carries_the_scale_report() -> None:
    from leukedge.runtime.outputs import _finder_reports

    finder = CellFinder()
    finder.find(_smear_with_red_cells(4, 30.0))
    reports = _finder_reports(finder)
    assert reports["scale"]["guessed"] == 1 and "--um-per-px" in reports["scale"]["warning"]
    assert _finder_reports(object()) == {}  # a finder without reports adds nothing


# --------------------------------------------------------------------------- the frame's own stain


def _od_gains(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Re-colour a frame by scaling its optical density per BGR channel (a dye cast)."""
    return cast(img, np.diag(gains), 1.0, np.ones(3))


def test_reference_stain_keeps_the_fixed_maps() -> None:
    ref = np.asarray(REFERENCE_RED) / np.linalg.norm(REFERENCE_RED)
    assert FrameStains(ref, float(np.mean(REFERENCE_OD))).mix() is None
    img = _smear_with_red_cells(60, 12.0, red=RED_REF)
    bg = background_grid(img)
    a, b = stain_maps(img, bg), stain_maps(img, bg, FIXED_MIX)
    assert np.allclose(a.nuclear, b.nuclear, atol=1e-5)
    assert np.allclose(a.density, b.density, atol=1e-5)


def test_a_dark_stain_is_scaled_back_and_a_turned_one_rotated_back() -> None:
    ref = np.asarray(REFERENCE_RED) / np.linalg.norm(REFERENCE_RED)
    dark_od = 2.0 * REFERENCE_OD[1]
    dark = FrameStains(ref, dark_od).mix()
    assert dark is not None
    assert np.allclose(dark, REFERENCE_OD_TARGET[1] / dark_od * FIXED_MIX, atol=1e-6)
    pale_od = 0.5 * REFERENCE_OD[0]
    pale = FrameStains(ref, pale_od).mix()
    assert pale is not None
    assert np.allclose(pale, REFERENCE_OD_TARGET[0] / pale_od * FIXED_MIX, atol=1e-6)
    turned = ref * np.array([0.5, 1.0, 1.8])
    turned /= np.linalg.norm(turned)
    est = FrameStains(turned, float(np.mean(REFERENCE_OD)))
    mix = est.mix()
    assert mix is not None and np.degrees(est.angle) > 15
    # the turned red-cell stain reads as red cells again: negative nuclear stain
    assert float(FIXED_MIX[0] @ turned) > 0 > float(mix[0] @ turned)


def test_stain_strength_is_brought_back_continuously() -> None:
    lo, hi = REFERENCE_OD
    assert strength_gain(lo) == strength_gain(hi) == strength_gain(0.5 * (lo + hi)) == 1.0
    assert strength_gain(lo - 1e-6) == pytest.approx(1.0, abs=1e-3)
    assert strength_gain(hi + 1e-6) == pytest.approx(1.0, abs=1e-3)
    strengths = np.linspace(0.02, 1.5, 300)
    brought = strengths * np.array([strength_gain(float(s)) for s in strengths])
    # paler and darker stains are brought into the range, never past the targets
    assert brought.min() >= lo - 1e-6 and brought.max() <= max(hi, *REFERENCE_OD_TARGET) + 1e-6
    assert 0.5 * lo * strength_gain(0.5 * lo) == pytest.approx(REFERENCE_OD_TARGET[0])
    assert 2 * hi * strength_gain(2 * hi) == pytest.approx(REFERENCE_OD_TARGET[1])


def test_red_cells_already_apart_from_strong_nuclei_are_left_alone() -> None:
    """Red cells of almost no red absorbance (far from nuclei on OD_red - OD_blue) next to
    strongly stained nuclei: the fixed maps tell them apart; weak nuclei still get the
    rotation, as a pink cast that weakens them needs it."""
    red = np.array([0.66, 0.75, 0.0])
    red /= np.linalg.norm(red)
    assert FrameStains(red, 0.3, nuclear_p99=0.5).mix() is None
    assert FrameStains(red, 0.3, nuclear_p99=0.2).mix() is not None


def test_frame_stains_reads_the_red_cells_of_a_smear() -> None:
    img = _smear_with_red_cells(60, 12.0, red=RED_REF)
    est = frame_stains(img)
    assert est is not None
    od = np.log1p(BACKGROUND) - np.log1p(RED_REF)
    assert est.red @ (od / np.linalg.norm(od)) > np.cos(np.deg2rad(3))
    assert 0.2 < est.red_od < 0.4
    blank = np.empty((100, 100, 3), np.uint8)
    blank[:] = BACKGROUND.astype(np.uint8)
    assert frame_stains(blank) is None


def test_adaptive_finder_under_a_blue_cast() -> None:
    """A blue cast turns red cells violet: read as nuclei by OD_red - OD_blue. The adaptive
    finder reads the frame through its own red-cell stain and finds the one white cell."""
    img = _od_gains(_smear_with_red_cells(60, 12.0, seed=3, red=RED_DARK), (0.4, 1.0, 3.0))
    assert len(CellFinder(stain="fixed").find(img)) > 3  # red cells pass as white cells
    cells = CellFinder(stain="adaptive").find(img)
    assert len(cells) == 1, [c.box for c in cells]
    x, y = cells[0].centroid
    assert abs(x - 240) < 8 and abs(y - 240) < 8


def test_adaptive_is_fixed_on_reference_colours() -> None:
    img = _smear_with_red_cells(60, 12.0, red=RED_REF)
    fixed, adaptive = CellFinder(stain="fixed"), CellFinder()
    a, b = fixed.find(img), adaptive.find(img)
    assert [c.box for c in a] == [c.box for c in b] and len(a) == 1
    assert adaptive.last_stains is not None and adaptive.last_stains.mix() is None


def test_an_unknown_stain_is_refused() -> None:
    with pytest.raises(UsageError, match="stain must be one of adaptive, fixed"):
        CellFinder(stain="auto")
