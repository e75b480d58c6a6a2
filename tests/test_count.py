"""The count session end to end: each cell once, --count, blur, report.html, corrections."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import MakeRun

from leukedge.runtime.cells import Cell
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.gallery import CSV_FIELDS, render
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import Frame

VIEW_W, VIEW_H, R = 200, 150, 14


@pytest.fixture(scope="module")
def tiny_run(make_run: MakeRun, drawn_data: Path) -> Path:
    return make_run(drawn_data, model="cnn", img_size=32, steps=20, export=("fp32", "int8"))


@pytest.fixture(scope="module")
def clf(tiny_run: Path) -> Iterator[Classifier]:
    c = Classifier.load(tiny_run / "export" / "model.fp32.onnx", backend="ort", device="cpu")
    yield c
    c.close()


def make_slide(seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 640x400 pink field of red cells with 24 dark discs at least 3 radii apart."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 60, (400, 640, 3)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 1.5) + np.array([200, 175, 225], np.float32)
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(500):  # red cells: the texture the stage motion is measured on
        x, y = (int(v) for v in rng.integers(0, [640, 400]))
        cv2.circle(img, (x, y), int(rng.integers(5, 9)), (150, 130, 215), -1)
    cells: list[tuple[int, int]] = []
    while len(cells) < 24:
        x, y = (int(v) for v in rng.integers([R + 2, R + 2], [640 - R - 2, 400 - R - 2]))
        if all((x - a) ** 2 + (y - b) ** 2 > (3 * R) ** 2 for a, b in cells):
            cells.append((x, y))
            cv2.circle(img, (x, y), R, (115, 35, 85), -1)
    return img, cells


class SlideFinder:
    """Reports the slide's known cells in each window (the finder is not under test here)."""

    cell_diameter_px = None
    um_per_px = None

    def __init__(self, cells: list[tuple[int, int]]) -> None:
        self.cells = cells
        self.origin: dict[int, tuple[int, int]] = {}

    def find(self, frame: np.ndarray) -> list[Cell]:
        ox, oy = self.origin[id(frame)]
        h, w = frame.shape[:2]
        out = []
        for x, y in self.cells:
            cx, cy = x - ox, y - oy
            if not (0 <= cx < w and 0 <= cy < h):
                continue
            box = (max(0, cx - R), max(0, cy - R), min(w, cx + R + 1), min(h, cy + R + 1))
            edge = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
            mask = np.ones((box[3] - box[1], box[2] - box[0]), bool)
            out.append(Cell(box, (float(cx), float(cy)), mask, int(mask.sum()), edge))
        return out

    def whole_cells(self, origins: list[tuple[int, int]], times: int = 2) -> set[int]:
        """The cells seen whole in at least ``times`` of the windows (a video counts twice)."""
        seen: dict[int, int] = {}
        for ox, oy in origins:
            for i, (x, y) in enumerate(self.cells):
                if R <= x - ox < VIEW_W - R - 1 and R <= y - oy < VIEW_H - R - 1:
                    seen[i] = seen.get(i, 0) + 1
        return {i for i, n in seen.items() if n >= times}


class Video:
    """Frames with a source kind (a plain iterable counts as still images)."""

    def __init__(self, frames: list[Frame], kind: str = "video") -> None:
        self.frames, self.kind, self.total, self.fps = frames, kind, len(frames), 10.0

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": "test"}


def pan_path() -> list[tuple[int, int]]:
    """Right along the top, down, back left, then up again over fields already seen."""
    path = [(x, 10) for x in range(10, 431, 14)]
    path += [(430, y) for y in range(24, 241, 14)]
    path += [(x, 240) for x in range(416, 9, -14)]
    path += [(10, y) for y in range(226, 9, -14)]
    return path


def panning(finder: SlideFinder, img: np.ndarray, path: list[tuple[int, int]], blur_at=()):
    frames = []
    for i, (x, y) in enumerate(path):
        view = np.ascontiguousarray(img[y : y + VIEW_H, x : x + VIEW_W])
        if i in blur_at:
            k = np.full((1, 21), 1 / 21, np.float32)
            view = cv2.filter2D(view, -1, k)
        finder.origin[id(view)] = (x, y)
        frames.append(Frame(i, f"f{i:03d}", view))
    return frames


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines() if x]


def test_panning_counts_each_cell_once_and_a_revisit_adds_none(clf: Classifier, tmp_path: Path):
    img, cells = make_slide()
    finder = SlideFinder(cells)
    path = pan_path()
    s = run_pipeline(
        clf, Video(panning(finder, img, path)), tmp_path, finder=finder, annotate=False
    )
    u = s["unique_cells"]
    truth = finder.whole_cells(path)
    assert u["cells"] == len(truth)
    assert s["cells"]["total"] >= 3 * u["cells"]  # per detection: many times more
    assert u["motion"]["fields"] == 1
    assert sum(u["by_class"].values()) == u["cells"] and u["blasts"] == u["by_class"]["all"]
    lo, hi = u["blast_ratio"]["ci95"]
    assert lo <= u["blast_ratio"]["ratio"] <= hi
    recs = lines(tmp_path)
    assert {r["track_id"] for r in recs} == set(range(u["tracks"]))
    for r in recs:  # slide position = frame position + where the window was
        ox, oy = path[r["frame"]]
        x, y = cells[min(range(len(cells)), key=lambda i: _d(cells[i], r, ox, oy))]
        assert abs(r["slide_xy"][0] - (x - path[0][0])) < 4
        assert abs(r["slide_xy"][1] - (y - path[0][1])) < 4
    by_track: dict[int, int] = {}
    for r in recs:
        by_track[r["track_id"]] = by_track.get(r["track_id"], 0) + 1
        assert r["sighting"] == by_track[r["track_id"]]
    tracks = [json.loads(x) for x in (tmp_path / "tracks.jsonl").read_text().splitlines()]
    assert len(tracks) == u["tracks"] and all(
        t["sightings"] == by_track[t["track_id"]] for t in tracks
    )
    assert all((tmp_path / t["thumb"]).is_file() for t in tracks)
    assert s["outputs"]["report"] == "report.html" and (tmp_path / "report.html").is_file()


def _d(cell: tuple[int, int], r: dict[str, Any], ox: int, oy: int) -> float:
    return float(np.hypot(cell[0] - ox - r["centroid"][0], cell[1] - oy - r["centroid"][1]))


def test_count_stops_once_the_target_is_reached(clf: Classifier, tmp_path: Path) -> None:
    img, cells = make_slide()
    finder = SlideFinder(cells)
    path = pan_path()
    s = run_pipeline(
        clf,
        Video(panning(finder, img, path)),
        tmp_path,
        finder=finder,
        annotate=False,
        count=6,
        batch=1,
    )
    u = s["unique_cells"]
    assert s["status"] == "completed" and "--count 6" in s["message"]
    assert u["target_reached"] and u["cells"] >= 6
    assert s["frames"]["processed"] < len(path)  # stopped early
    # the frame that reached the target is the first where six cells had been seen whole twice
    first = next(i for i in range(1, len(path) + 1) if len(finder.whole_cells(path[:i])) >= 6)
    assert u["stopped_at_frame"] == first - 1
    assert u["cells"] == len(finder.whole_cells(path[:first]))


def test_blurred_frames_are_not_classified(clf: Classifier, tmp_path: Path) -> None:
    img, cells = make_slide()
    finder = SlideFinder(cells)
    path = pan_path()[:20]
    s = run_pipeline(
        clf,
        Video(panning(finder, img, path, blur_at={12})),
        tmp_path,
        finder=finder,
        annotate=False,
    )
    assert s["unique_cells"]["blurred_frames"] == 1
    assert 12 not in {r["frame"] for r in lines(tmp_path)}
    assert s["unique_cells"]["cells"] == len(finder.whole_cells(path[:12] + path[13:]))


def test_unrelated_still_images_are_fields_of_their_own(clf: Classifier, tmp_path: Path) -> None:
    frames, expected = [], 0
    finder = SlideFinder([])
    for seed in range(3):  # the same cell layout on three different slides
        img, cells = make_slide(seed)
        finder.cells = cells
        view = np.ascontiguousarray(img[0:VIEW_H, 0:VIEW_W])
        finder.origin[id(view)] = (0, 0)
        frames.append(Frame(seed, f"slide{seed}.png", view))
        expected += len(finder.whole_cells([(0, 0)], times=1))
    finder.cells = []  # find() must use each frame's own cells
    per_frame = {id(f.image): make_slide(f.index)[1] for f in frames}

    class PerImage(SlideFinder):
        def find(self, frame: np.ndarray) -> list[Cell]:
            self.cells = per_frame[id(frame)]
            return super().find(frame)

    pf = PerImage([])
    pf.origin = finder.origin
    s = run_pipeline(clf, frames, tmp_path, finder=pf, annotate=False)
    assert s["unique_cells"]["motion"]["fields"] == 3
    assert s["unique_cells"]["cells"] == expected


# --------------------------------------------------------------------------- report.html


def cell(i: int, p: float, name: str = "f.png", cls: str | None = None) -> dict[str, Any]:
    return {
        "track_id": i,
        "field": 0,
        "slide_xy": [1.0 * i, 2.0],
        "class": cls or ("all" if p >= 0.5 else "hem"),
        "p_positive": p,
        "uncertain": 0.35 <= p <= 0.65,
        "edge_only": False,
        "out_of_distribution": None,
        "sightings": 2,
        "best_frame": i,
        "best_frame_name": name,
        "thumb": f"thumbs/cell-{i:06d}.jpg",
    }


def test_report_sorts_by_blast_probability_and_escapes_every_string() -> None:
    evil = '<script>alert("x")</script>&"'
    summary = {
        "status": "completed",
        "message": evil,
        "started": "2026-01-01",
        "model": {"path": evil},
        "domain_shift": {"warning": "these images differ <b>"},
        "unique_cells": {
            "cells": 3,
            "blasts": 1,
            "blast_ratio": {"ratio": 1 / 3, "ci95": [0.06, 0.79]},
        },
    }
    page = render(summary, [cell(0, 0.2), cell(1, 0.9, evil), cell(2, 0.5)], ["all", "hem"], "all")
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "these images differ &lt;b&gt;" in page
    ids = [int(m) for m in re.findall(r'class="cell[^"]*" data-id="(\d+)"', page)]
    assert ids == [1, 2, 0]  # P(ALL) 0.9, 0.5, 0.2
    assert "33.3 %" in page and "http" not in page.lower().replace("http-equiv", "")
    assert page.count("<script>") == 1  # only the page's own inline script


def exported_csv(page: str, out: Path, flip: dict[int, str]) -> Path:
    """The CSV the page's export button writes, made from the same data attributes."""
    rows = []
    for attrs in re.findall(r'<div class="cell[^"]*" ([^>]*)>', page):
        d = dict(re.findall(r'data-([a-z]+)="([^"]*)"', attrs))
        label = flip.get(int(d["id"]), d["class"])
        rows.append(
            [
                d["file"],
                label,
                d["class"],
                d["p"],
                int(label != d["class"]),
                d["id"],
                d["frame"],
                d["name"],
                d["x"],
                d["y"],
            ]
        )
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        w.writerows(rows)
    return out


def test_corrections_become_class_folders(clf: Classifier, tmp_path: Path) -> None:
    from leukedge.data.corrections import import_corrections
    from leukedge.data.layouts import load_dataset

    img, cells = make_slide()
    finder = SlideFinder(cells)
    run = tmp_path / "run"
    run_pipeline(clf, Video(panning(finder, img, pan_path())), run, finder=finder, annotate=False)
    page = (run / "report.html").read_text()
    tracks = [json.loads(x) for x in (run / "tracks.jsonl").read_text().splitlines()]
    flip = {t["track_id"]: ("hem" if t["track_id"] % 2 else "all") for t in tracks}
    csv_path = exported_csv(page, tmp_path / "corrections.csv", flip)
    result = import_corrections(csv_path, tmp_path / "cells", report_dir=run)
    assert result["cells"] == len(tracks)
    ds = load_dataset(tmp_path / "cells")
    assert ds.classes == ["hem", "all"] or set(ds.classes) == {"all", "hem"}
    assert len(ds.records) == len(tracks)
    with pytest.raises(ValueError, match="not an empty folder"):
        import_corrections(csv_path, tmp_path / "cells", report_dir=run)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\n../../etc/passwd,all\n")
    with pytest.raises(ValueError, match="line 2"):
        import_corrections(bad, tmp_path / "x", report_dir=run)


# --------------------------------------------------------------------------- the commands


def test_run_count_prints_a_lab_report_and_writes_report_html(tiny_run: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from leukedge.cli import app

    img, cells = make_slide()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, (x, y) in enumerate(pan_path()[:12]):  # a folder of frames from a pan
        cv2.imwrite(str(frames / f"f{i:03d}.png"), img[y : y + VIEW_H, x : x + VIEW_W])
    out = tmp_path / "out"
    args = ["run", str(tiny_run / "export" / "model.fp32.onnx"), "--source", str(frames)]
    args += ["--out", str(out), "--count", "3", "--no-annotate", "--backend", "ort-fp32"]
    args += ["--cell-diameter-px", "28"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "differential count" in result.output and "blast %" in result.output
    s = json.loads((out / "summary.json").read_text())
    assert s["unique_cells"]["target"] == 3
    assert (out / "report.html").is_file() and s["outputs"]["report"] == "report.html"
    # a second, shorter run into the folder removes the pictures the first one wrote
    first = len(list((out / "thumbs").iterdir()))
    args[args.index("--count") + 1] = "1"
    assert CliRunner().invoke(app, args).exit_code == 0
    second = (out / "tracks.jsonl").read_text().splitlines()
    assert len(list((out / "thumbs").iterdir())) == len(second) < first


@pytest.mark.slow
def test_reviewed_labels_fine_tune_the_model(clf: Classifier, tiny_run: Path, tmp_path: Path):
    """report.html -> exported CSV -> data import-corrections -> train --init: the whole loop."""
    from typer.testing import CliRunner

    from leukedge.cli import app
    from leukedge.rundir import RunDir

    img, cells = make_slide()
    finder = SlideFinder(cells)
    run = tmp_path / "run"
    run_pipeline(clf, Video(panning(finder, img, pan_path())), run, finder=finder, annotate=False)
    tracks = [json.loads(x) for x in (run / "tracks.jsonl").read_text().splitlines()]
    flip = {t["track_id"]: ("hem" if t["track_id"] % 2 else "all") for t in tracks}
    csv_path = exported_csv((run / "report.html").read_text(), tmp_path / "dl.csv", flip)
    cli = CliRunner()
    data = tmp_path / "mycells"
    r = cli.invoke(
        app, ["data", "import-corrections", str(csv_path), "--report", str(run), "--out", str(data)]
    )
    assert r.exit_code == 0, r.output
    ft = tmp_path / "ft"
    r = cli.invoke(
        app,
        ["train", "--init", str(tiny_run), "--data", str(data), "--out", str(ft)]
        + ["--epochs", "1", "--batch-size", "8", "--workers", "0"],
    )
    assert r.exit_code == 0, r.output
    assert RunDir(ft).spec().classes == RunDir(tiny_run).spec().classes
    assert (ft / "checkpoint.pt").is_file()
