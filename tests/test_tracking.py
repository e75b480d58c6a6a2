"""Counting each cell once: motion, blur and association on sequences with known shifts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leukedge.runtime.tracking import CellTracks, Detection, MotionTracker
from leukedge.runtime.tracking.motion import overlap_ncc

W, H = 160, 120


def slide(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A smear-like texture: smooth noise plus discs, so every window has structure."""
    rng = np.random.default_rng(seed)
    base = rng.normal(180, 30, (*size, 3)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(120):
        x, y = (int(v) for v in rng.integers(0, [size[1], size[0]]))
        cv2.circle(
            img,
            (x, y),
            int(rng.integers(4, 12)),
            tuple(int(c) for c in rng.integers(40, 160, 3)),
            -1,
        )
    return img


def window(img: np.ndarray, x: int, y: int) -> np.ndarray:
    return np.ascontiguousarray(img[y : y + H, x : x + W])


def motion_blur(img: np.ndarray, length: int = 15) -> np.ndarray:
    k = np.zeros((1, length), np.float32)
    k[:] = 1.0 / length
    return cv2.filter2D(img, -1, k)


PATH = [(40, 30), (52, 33), (67, 35), (85, 40), (100, 60), (120, 80), (100, 70), (70, 50), (40, 30)]


def test_origins_follow_known_shifts_and_a_revisit_returns_home() -> None:
    img = slide()
    mt = MotionTracker(work_width=W)
    x0, y0 = PATH[0]
    for x, y in PATH:
        m = mt.step(window(img, x, y))
        assert m.field == 0
        assert m.origin == pytest.approx((x - x0, y - y0), abs=0.6)
    assert m.origin == pytest.approx((0, 0), abs=0.6)  # back where it started: same place


def test_downscaled_measurement_keeps_frame_pixels() -> None:
    img = cv2.resize(slide(1), (1280, 960))
    mt = MotionTracker(work_width=128)
    mt.step(np.ascontiguousarray(img[100:580, 100:740]))
    m = mt.step(np.ascontiguousarray(img[130:610, 160:800]))  # content moves by (-60, -30)
    assert m.shift == pytest.approx((-60, -30), abs=2.0)
    assert m.origin == pytest.approx((60, 30), abs=2.0)


def test_unrelated_images_are_separate_fields_even_with_a_shared_camera_pattern() -> None:
    pattern = np.zeros((H, W, 3), np.float32)
    pattern[::8, :] = 25  # a fixed pattern on every frame (sensor rows, JPEG blocks)
    pattern[:, ::8] = 25
    mt = MotionTracker(work_width=W, judge_blur=False)
    fields = []
    for seed in range(4):
        frame = np.clip(window(slide(seed + 10), 50, 50) + pattern, 0, 255).astype(np.uint8)
        fields.append(mt.step(frame).field)
    assert fields == [0, 1, 2, 3]
    assert mt.describe()["fields"] == 4


def test_overlap_ncc_tells_overlap_from_chance() -> None:
    img = cv2.cvtColor(slide(), cv2.COLOR_BGR2GRAY)
    a, b = window(img, 40, 30), window(img, 50, 35)
    assert overlap_ncc(a, b, -10, -5) > 0.9
    assert abs(overlap_ncc(a, window(cv2.cvtColor(slide(5), cv2.COLOR_BGR2GRAY), 0, 0), 0, 0)) < 0.3


def test_blurred_frames_are_flagged_against_the_runs_own_sharpness() -> None:
    img = slide()
    mt = MotionTracker(work_width=W)
    for i in range(8):
        assert not mt.step(window(img, 40 + 3 * i, 30)).blurred
    m = mt.step(motion_blur(window(img, 70, 30)))
    assert m.blurred and m.threshold is not None and m.sharpness < m.threshold
    assert mt.step(window(img, 73, 30)).blurred is False
    assert mt.describe()["blurred_frames"] == 1
    # still images are never judged for blur: their content differs, not their focus
    still = MotionTracker(work_width=W, judge_blur=False)
    for i in range(8):
        still.step(window(img, 40 + 3 * i, 30))
    assert not still.step(motion_blur(window(img, 70, 30))).blurred


def test_blur_threshold_is_learned_not_fixed() -> None:
    """A whole run of soft frames is the run's normal: none of them is rejected."""
    img = cv2.GaussianBlur(slide(), (0, 0), 2.0)
    mt = MotionTracker(work_width=W)
    assert not any(mt.step(window(img, 40 + 2 * i, 30)).blurred for i in range(12))


# --------------------------------------------------------------------------- association


def dets(
    points: list[tuple[float, float]], p_all: float = 0.9, edge: bool = False
) -> list[Detection]:
    return [Detection(p, 20.0, edge, np.array([1 - p_all, p_all])) for p in points]


CELLS = [(100.0, 100.0), (160.0, 110.0), (220.0, 90.0), (300.0, 140.0)]


def seen_from(origin: tuple[float, float]) -> list[tuple[float, float]]:
    """The cells inside a 200x150 view at ``origin``, in frame pixels."""
    ox, oy = origin
    return [(x - ox, y - oy) for x, y in CELLS if 0 <= x - ox < 200 and 0 <= y - oy < 150]


def test_cells_seen_in_many_frames_and_on_a_revisit_count_once() -> None:
    tracks = CellTracks()
    rng = np.random.default_rng(0)
    origins = [(0, 0), (20, 5), (50, 10), (110, 20), (150, 30), (60, 10), (0, 0)]  # and back
    detections = 0
    for f, o in enumerate(origins):
        pts = [(x + rng.normal(0, 1.5), y + rng.normal(0, 1.5)) for x, y in seen_from(o)]
        detections += len(pts)
        tracks.observe(0, o, f, dets(pts))
    assert len(tracks) == len(CELLS)
    assert detections > 2 * len(CELLS)
    for t in tracks.tracks:
        assert min(np.hypot(t.position[0] - x, t.position[1] - y) for x, y in CELLS) < 5


def test_two_cells_close_together_stay_two() -> None:
    tracks = CellTracks()
    pair = [(50.0, 50.0), (71.0, 50.0)]  # a little more than one diameter apart
    for f in range(3):
        tracks.observe(0, (0, 0), f, dets(pair))
    assert len(tracks) == 2 and all(t.sightings == 3 for t in tracks.tracks)


def test_fields_never_share_cells() -> None:
    tracks = CellTracks()
    tracks.observe(0, (0, 0), 0, dets([(50, 50)]))
    tracks.observe(1, (0, 0), 1, dets([(50, 50)]))
    assert len(tracks) == 2


def test_probabilities_are_averaged_over_whole_sightings() -> None:
    tracks = CellTracks()
    tracks.observe(0, (0, 0), 0, dets([(50, 50)], p_all=0.2, edge=True))  # cut by the edge
    t = tracks.tracks[0]
    assert t.edge_only and t.probs[1] == pytest.approx(0.2)
    tracks.observe(0, (0, 0), 1, dets([(51, 50)], p_all=0.8))
    tracks.observe(0, (0, 0), 2, dets([(50, 51)], p_all=0.6))
    assert not t.edge_only and t.sightings == 3 and t.whole_sightings == 2
    assert t.probs[1] == pytest.approx(0.7)  # the cut view does not vote


def test_pan_positions_stay_inside_and_come_back() -> None:
    from leukedge.data.pan import pan_positions

    path = pan_positions((640, 480), (420, 320), 16)
    assert all(0 <= x <= 220 and 0 <= y <= 160 for x, y in path)
    assert path[0] == (0, 0) and (220, 160) in path
    assert path.count(path[1]) == 2  # the first row is passed twice


def test_a_cut_cell_matches_farther_than_a_whole_one() -> None:
    """A cell cut by the edge has an estimated centre: it may lie further off."""
    tracks = CellTracks()
    tracks.observe(0, (0, 0), 0, dets([(50, 50)]))  # diameter 20
    tracks.observe(0, (0, 0), 1, dets([(64, 50)], edge=True))  # 0.7 diameters off, cut
    assert len(tracks) == 1 and tracks.tracks[0].sightings == 2
    assert tracks.tracks[0].position == (50, 50)  # a cut view does not move a whole cell
    tracks.observe(0, (0, 0), 2, dets([(64, 50)]))  # 0.7 diameters off, whole: another cell
    assert len(tracks) == 2
