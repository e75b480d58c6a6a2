"""Dataset layouts, robust image reading and subject-level splits."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_data

from leukedge.data import DatasetError, detect_layout, load_dataset, make_split
from leukedge.data.check import check_dataset
from leukedge.data.splits import load_split
from leukedge.imaging.images import ImageReadError, read_image


def _img(path: Path, value: int = 128, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    ok, buf = cv2.imencode(path.suffix, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_cnmc(root: Path, with_prelim: bool = True) -> Path:
    base = root / "C-NMC_Leukemia"
    subjects = {"all": ["1", "2", "3", "4", "5", "6"], "hem": ["H1", "H2", "h3", "H4", "H5", "H6"]}
    for i, (cls, ids) in enumerate(subjects.items()):
        for j, s in enumerate(ids):
            for k in (1, 2):
                _img(
                    base / "training_data" / f"fold_{j % 3}" / cls / f"UID_{s}_{k}_1_{cls}.bmp",
                    i * 50 + j,
                )
    # The unlabelled final test set must be ignored.
    _img(base / "testing_data" / "C-NMC_test_final_phase_data" / "1.bmp")
    if with_prelim:
        prelim = base / "validation_data" / "C-NMC_test_prelim_phase_data"
        rows = []
        for n, (pid, label) in enumerate(
            [("UID_57_1_1_all.bmp", 1), ("UID_H30_2_1_hem.bmp", 0), ("UID_58_1_1_all.bmp", 1)],
            start=1,
        ):
            _img(prelim / f"{n}.bmp", 200 + n)
            rows.append({"Patient_ID": pid, "new_names": f"{n}.bmp", "labels": label})
        with open(
            base / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv", "w", newline=""
        ) as f:
            w = csv.DictWriter(f, fieldnames=["Patient_ID", "new_names", "labels"])
            w.writeheader()
            w.writerows(rows)
    return root


def test_cnmc_layout_subjects_case_insensitive_and_official_split(tmp_path: Path) -> None:
    root = make_cnmc(tmp_path)
    assert detect_layout(root) == "cnmc"
    ds = load_dataset(root)
    assert ds.classes == ["hem", "all"]
    assert len(ds.records) == 24 + 3
    assert "H3" in ds.subjects() and "h3" not in ds.subjects()
    assert ds.has_subjects
    split = make_split(ds, "official", seed=1)
    test = split.records(ds, "test")
    assert sorted(Path(r.path).name for r in test) == ["1.bmp", "2.bmp", "3.bmp"]
    assert {r.subject for r in test} == {"57", "H30", "58"}
    assert not any("testing_data" in r.path for r in ds.records)


def test_official_split_needs_the_prelim_set(tmp_path: Path) -> None:
    ds = load_dataset(make_cnmc(tmp_path, with_prelim=False))
    with pytest.raises(DatasetError, match="official"):
        make_split(ds, "official")


def test_allidb2_and_class_folders_and_synthetic(tmp_path: Path, synth_data: Path) -> None:
    idb = tmp_path / "idb"
    for i in range(1, 9):
        _img(idb / f"Im{i:03d}_{i % 2}.jpg", i)
    assert detect_layout(idb) == "allidb2"
    ds = load_dataset(idb)
    assert ds.class_counts() == {"hem": 4, "all": 4} and not ds.has_subjects

    folders = tmp_path / "folders"
    for i in range(4):
        _img(folders / "normal" / f"n{i}.png", i)
        _img(folders / "blast" / f"b{i}.png", 10 + i)
    with open(folders / "subjects.csv", "w") as f:
        f.write(
            "file,subject\n"
            + "".join(f"normal/n{i}.png,p{i}\nblast/b{i}.png,q{i}\n" for i in range(4))
        )
    assert detect_layout(folders) == "folders"
    ds = load_dataset(folders)
    assert ds.classes == ["hem", "all"]  # aliases map to leukedge's order, ALL = index 1
    assert ds.has_subjects and ds.subjects()["P0"][0].label == 0

    other = tmp_path / "other"
    for c in ("zeta", "alpha", "mid"):
        _img(other / c / "x.png")
    assert load_dataset(other).classes == ["alpha", "mid", "zeta"]

    assert detect_layout(synth_data) == "synthetic"
    ds = load_dataset(synth_data)
    assert ds.has_subjects and len(ds.records) == 240


def test_empty_single_class_and_unknown_layouts_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no known dataset layout"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    for i in range(3):
        _img(tmp_path / "one" / "all" / f"{i}.png", i)
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(tmp_path / "one")


def _odd_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    cv2.imwrite(str(folder / "gray.png"), gray)
    out["gray"] = folder / "gray.png"
    deep = (rng.integers(0, 4095, (20, 20, 3))).astype(np.uint16)  # 12-bit camera in 16-bit PNG
    cv2.imwrite(str(folder / "deep.png"), deep)
    out["deep"] = folder / "deep.png"
    rgba = np.dstack(
        [rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), np.full((20, 20), 255, np.uint8)]
    )
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    out["rgba"] = folder / "rgba.png"
    cv2.imwrite(str(folder / "tiff.tif"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    out["tiff"] = folder / "tiff.tif"
    jpg = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    out["truncated"] = folder / "truncated.jpg"
    (folder / "empty.png").write_bytes(b"")
    out["empty"] = folder / "empty.png"
    (folder / "text.bmp").write_bytes(b"this is not a bitmap at all" * 10)
    out["garbage"] = folder / "text.bmp"
    return out


def test_odd_images_are_read_or_refused_clearly(tmp_path: Path) -> None:
    files = _odd_images(tmp_path)
    for name in ("gray", "deep", "rgba", "tiff"):
        img = read_image(files[name])
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
    deep = read_image(files["deep"])
    assert deep.max() > 200  # 12-bit data scaled by its bit depth, not by 16 bits
    for name in ("truncated", "empty", "garbage"):
        with pytest.raises(ImageReadError) as e:
            read_image(files[name])
        assert str(files[name]) in str(e.value)


def test_check_lists_corrupt_files(tmp_path: Path) -> None:
    files = _odd_images(tmp_path / "all")
    for i in range(3):
        _img(tmp_path / "hem" / f"{i}.png", i)
    report = check_dataset(load_dataset(tmp_path))
    bad = {Path(p["path"]).name for p in report["problems"]}
    assert bad == {files[k].name for k in ("truncated", "empty", "garbage")}
    assert report["usable_images"] == report["images"] - 3
    assert "gray uint8" in report["pixel_formats"] and "color uint16" in report["pixel_formats"]


def test_subject_split_no_leak_reproducible_stratified(tmp_path: Path, synth_data: Path) -> None:
    ds = load_dataset(synth_data)
    a = make_split(ds, seed=3)
    b = make_split(ds, seed=3)
    c = make_split(ds, seed=4)
    assert a.assignment == b.assignment
    assert a.assignment != c.assignment
    assert a.unit == "subject"
    where: dict[str, set[str]] = {}
    for r in ds.records:
        where.setdefault(r.subject, set()).add(a.assignment[r.path])
    assert all(len(v) == 1 for v in where.values())
    counts = a.counts(ds)
    for split in ("train", "val", "test"):
        assert all(n > 0 for n in counts[split].values()), (split, counts)
    # 6 subjects of 20 images per class: 4 train, 1 val, 1 test each.
    assert counts["train"] == {"hem": 80, "all": 80}
    assert counts["val"] == counts["test"] == {"hem": 20, "all": 20}
    # The saved split reads back identically.
    a.save(tmp_path / "split.json", ds)
    assert load_split(tmp_path / "split.json", ds).assignment == a.assignment


def test_subject_split_follows_fractions_with_many_subjects() -> None:
    from leukedge.data.records import Dataset, Record

    rng = np.random.default_rng(0)
    records = [
        Record(f"/x/{label}_{s}_{i}.png", label, f"{'H' if label == 0 else ''}{s}")
        for label in (0, 1)
        for s in range(40)
        for i in range(int(rng.integers(1, 30)))
    ]
    ds = Dataset(Path("/x"), "folders", ["hem", "all"], records)
    split = make_split(ds, seed=0)
    counts = split.counts(ds)
    for label in ("hem", "all"):
        total = sum(counts[s][label] for s in ("train", "val", "test"))
        assert abs(counts["train"][label] / total - 0.70) < 0.08
        assert abs(counts["test"][label] / total - 0.15) < 0.06


def test_image_level_split_says_so(tmp_path: Path) -> None:
    for i in range(20):
        _img(tmp_path / f"Im{i + 1:03d}_{i % 2}.jpg", i)
    split = make_split(load_dataset(tmp_path))
    assert split.unit == "image"
    assert any("no subject ids" in w for w in split.warnings)


def test_real_cnmc_sample() -> None:
    ds = load_dataset(shared_data("cnmc-sample"))
    assert ds.layout == "cnmc" and len(ds.records) == 52 and len(ds.subjects()) == 26
    assert "H3" in ds.subjects()
    split = make_split(ds, seed=0)
    assert split.unit == "subject"


def test_real_allidb2() -> None:
    ds = load_dataset(shared_data("all-idb2"))
    assert ds.layout == "allidb2" and len(ds.records) == 260
    assert ds.class_counts() == {"hem": 130, "all": 130}
