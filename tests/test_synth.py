"""The synthetic generator: on-disk contract, determinism, a learnable but not trivial task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leukedge.data import synth

SMALL = {"n": 24, "frames": 2, "cell_size": 64, "frame_size": (320, 240)}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    synth.synthesize(out, seed=3, **SMALL)
    return out


def test_layout_and_metadata(small_out: Path) -> None:
    meta = json.loads((small_out / "synth.json").read_text())
    assert meta["generator"] == "leukedge.synth" and meta["version"] == 1
    assert meta["classes"] == ["hem", "all"]
    assert meta["counts"] == {"hem": 12, "all": 12}
    assert meta["frame_size"] == [320, 240] and meta["cell_size"] == 64
    assert len(meta["subjects"]) == 6
    for cls in ("hem", "all"):
        assert len(list((small_out / "cells" / cls).glob("*.png"))) == 12
    frames = sorted((small_out / "frames").glob("frame_*.png"))
    assert [p.name for p in frames] == ["frame_0000.png", "frame_0001.png"]
    for p in (small_out / "cells" / "all").glob("*.png"):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert not list(small_out.rglob("*.tmp")), "no temp files left behind"


def test_subjects_csv_matches_files_and_one_class_per_subject(small_out: Path) -> None:
    cells = small_out / "cells"
    with open(cells / "subjects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["file", "subject"]
    listed = {r["file"] for r in rows}
    on_disk = {str(p.relative_to(cells)) for p in cells.glob("*/*.png")}
    assert listed == on_disk
    class_of: dict[str, set[str]] = {}
    for r in rows:
        cls, name = r["file"].split("/")
        assert name.startswith(r["subject"] + "_")
        class_of.setdefault(r["subject"], set()).add(cls)
    assert all(len(v) == 1 for v in class_of.values())
    per_class = [sum(v == {c} for v in class_of.values()) for c in ("hem", "all")]
    assert per_class == [3, 3]


def test_dataset_layout_reads_it(small_out: Path) -> None:
    from leukedge.data.layouts import detect_layout, parse_synthetic

    assert detect_layout(small_out) == "synthetic"
    ds = parse_synthetic(small_out)
    assert len(ds.records) == 24 and not ds.problems
    assert all(r.subject for r in ds.records)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small_out: Path) -> None:
    again = tmp_path / "again"
    synth.synthesize(again, seed=3, **SMALL)
    assert _files(again) == _files(small_out)
    other = tmp_path / "other"
    synth.synthesize(other, seed=4, **SMALL)
    a, b = _files(small_out), _files(other)
    pngs = [k for k in a if k.endswith(".png") and k in b]
    assert pngs and all(a[k] != b[k] for k in pngs)


def test_odd_n_and_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    meta = synth.synthesize(
        tmp_path / "o",
        n=7,
        frames=1,
        cell_size=48,
        frame_size=(200, 160),
        progress=lambda i, t: calls.append((i, t)),
    )
    assert meta["counts"] == {"hem": 3, "all": 4}
    assert calls[-1] == (8, 8) and len(calls) == 8


def test_annotations_inside_frame_and_cover_nuclei(small_out: Path) -> None:
    ann = json.loads((small_out / "frames" / "annotations.json").read_text())
    assert ann["classes"] == ["hem", "all"]
    subjects = {
        s["id"]: s["class"] for s in json.loads((small_out / "synth.json").read_text())["subjects"]
    }
    for fr in ann["frames"]:
        img = cv2.imread(str(small_out / "frames" / fr["file"]))
        h, w = img.shape[:2]
        assert (fr["width"], fr["height"]) == (w, h)
        assert 1 <= len(fr["cells"]) <= 6
        inside = np.zeros((h, w), bool)
        for c in fr["cells"]:
            x0, y0, x1, y1 = c["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert x0 <= c["centroid"][0] <= x1 and y0 <= c["centroid"][1] <= y1
            assert c["class"] == subjects[fr["subject"]]
            assert c["diameter"] > 0
            inside[y0:y1, x0:x1] = True
        _assert_nuclei_boxed(img, inside, fr["cells"])


def _assert_nuclei_boxed(img: np.ndarray, inside: np.ndarray, cells: list[dict]) -> None:
    """Every large dark-purple blob (a nucleus) lies in a box; every box holds one."""
    dark = (img[:, :, 1] < 90).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 60]
    assert big, "no nucleus found in a synthetic frame"
    for i in big:
        assert inside[labels == i].mean() > 0.99
    for c in cells:
        x0, y0, x1, y1 = c["box"]
        assert dark[y0:y1, x0:x1].sum() >= 40


def test_render_frame_cell_count_and_scale() -> None:
    style = synth.SubjectStyle()
    img, cells = synth.render_frame(
        np.random.default_rng(1), "hem", style, 320, 240, n_cells=3, cell_diameter=40
    )
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    assert len(cells) == 3
    for c in cells:
        assert 40 * 0.8 <= c["diameter"] <= 40 * 1.25


@pytest.mark.parametrize("size", [48, 128])
@pytest.mark.parametrize("label", ["hem", "all"])
def test_render_cell_shape_and_centred_scale(size: int, label: str) -> None:
    """The nucleus sits in the middle at about nc x cell_fraction of the side."""
    subjects = synth.make_subjects(np.random.default_rng(0), 6)
    for k in range(4):
        img = synth.render_cell(np.random.default_rng(k), label, subjects[k][2], size, 0.6)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        dark = img[:, :, 1] < np.percentile(img[:, :, 1], 5) + 40
        n, labels, stats, cents = cv2.connectedComponentsWithStats(dark.astype(np.uint8))
        i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        diameter = 2 * np.sqrt(stats[i, cv2.CC_STAT_AREA] / np.pi) / size
        assert 0.3 <= diameter <= 0.65
        assert np.abs(cents[i] - size / 2).max() <= 0.12 * size


def test_render_cell_rejects_unknown_label() -> None:
    with pytest.raises(ValueError, match="label"):
        synth.render_cell(np.random.default_rng(0), "blast", synth.SubjectStyle())


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        synth.synthesize(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrites_previous_output_without_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "o"
    synth.synthesize(out, seed=0, **SMALL)
    synth.synthesize(out, seed=0, n=8, frames=1, cell_size=48, frame_size=(200, 160))
    assert len(list((out / "cells").glob("*/*.png"))) == 8
    assert len(list((out / "frames").glob("*.png"))) == 1
    with open(out / "cells" / "subjects.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8


def test_recovers_from_an_interrupted_run(tmp_path: Path) -> None:
    """No synth.json yet, only our own folders and a temp file: still ours to overwrite."""
    (tmp_path / "cells" / "all").mkdir(parents=True)
    (tmp_path / "cells" / "all" / "S00_0000.png").write_bytes(b"partial")
    (tmp_path / "cells" / "all" / ".S00_0001.png.tmp").write_bytes(b"partial")
    synth.synthesize(tmp_path, n=4, frames=0, cell_size=32)
    assert len(list((tmp_path / "cells").glob("*/*.png"))) == 4
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_learnable_but_not_trivial() -> None:
    """Logistic regression on 16x16 gray pixels, 4-fold by subject (each fold 2 ALL + 2 healthy).

    Thresholds on the pooled held-out accuracy: above 0.65 (clearly above chance,
    0.5) and below 0.97 (the blast-score overlap caps any classifier near 0.95, and
    raw pixels on unseen stains do much worse; about 0.78 here).
    """
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    subjects = synth.make_subjects(np.random.default_rng(7), 16)
    xs, ys, groups = [], [], []
    for s_idx, (_, label, style) in enumerate(subjects):
        for k in range(40):
            img = synth.render_cell(np.random.default_rng([7, s_idx, k]), label, style, 64)
            gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            xs.append(cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).ravel() / 255.0)
            ys.append(label == "all")
            groups.append(s_idx)
    x, y, g = np.array(xs), np.array(ys), np.array(groups)
    correct = 0
    for fold in range(4):
        test = g // 4 == fold
        mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-6
        clf = LogisticRegression(C=0.05, max_iter=3000).fit((x[~test] - mu) / sd, y[~test])
        correct += int((clf.predict((x[test] - mu) / sd) == y[test]).sum())
    acc = correct / len(y)
    assert 0.65 < acc < 0.97, f"held-out-subject accuracy {acc:.3f}"
