"""Every bad input gets a clear error and loses nothing: one test (or more) per kind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinputs import (
    cell_image,
    class_folders,
    fake_run,
    huge_png,
    multipage_tiff,
    spec_dict,
    tiny_onnx,
    tree,
    truncated_video,
    write_png,
)
from typer.testing import CliRunner

from leukedge.cli import app
from leukedge.data.records import DatasetError
from leukedge.spec import ModelSpec, SpecError


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean(result: Any, code: int, *needles: str) -> None:
    """Exit ``code``, one clear message, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_folders(tmp_path_factory.mktemp("data") / "cells", per_class=6)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "model.fp32.onnx")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from leukedge.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=8, frames=2, seed=0, cell_size=16, n_subjects=2)
    return out / "frames"


# ------------------------------------------------------------------ 2, 12: train's --out


def test_train_refuses_a_non_empty_folder_that_is_not_a_run(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    before = tree(out)
    r = cli("train", "--data", data, "--out", out, "--epochs", 1)
    assert_clean(r, 2, "not empty", "thesis.docx")
    assert tree(out) == before


def test_a_bad_flag_writes_nothing_and_a_rerun_is_not_a_run(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_clean(cli("train", "--data", data, "--out", out, "--lr", "-1"), 2, "--lr")
    assert_clean(cli("train", "--data", data, "--out", out, "--model", "no/such"), 2, "--model")
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(os.urandom(300))
    r = cli("train", "--data", data, "--out", out, "--pretrained", garbage, "--workers", 0)
    assert_clean(r, 1, "weights.pt")
    assert "weights_only=False" not in r.output
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ 6: batch of one, zero batches


@pytest.mark.slow
def test_batch_size_1_trains_and_zero_batches_is_an_error(data: Path, tmp_path: Path) -> None:
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import TrainError, train

    cfg = dict(model="cnn", epochs=1, img_size=32, workers=0, cell_fraction=0.6, patience=1)
    result = train(TrainConfig(data=str(data), out=str(tmp_path / "b1"), batch_size=1, **cfg))
    hist = (tmp_path / "b1" / "history.csv").read_text().splitlines()
    assert result["epochs_run"] == 1 and float(hist[1].split(",")[2]) > 0  # a real train loss

    broken = tmp_path / "broken"
    class_folders(broken, per_class=6)
    for p in broken.rglob("*.png"):
        p.write_bytes(p.read_bytes()[:40])  # every image truncated
    with pytest.raises(TrainError, match="trained on no image"):
        train(TrainConfig(data=str(broken), out=str(tmp_path / "b0"), batch_size=4, **cfg))
    assert not (tmp_path / "b0" / "spec.json").exists()  # a run that never trained is no run


# ------------------------------------------------------------------ 7: spec values, graph, NaN


@pytest.mark.parametrize(
    "change",
    [
        {"mean": [float("nan"), 0.4, 0.4]},
        {"std": [0.2, float("inf"), 0.2]},
        {"std": [0.2, 0.0, 0.2]},
        {"cell_fraction": float("nan")},
        {"input_size": 224.5},
        {"input_size": 10**7},
        {"resize": 3},
        {"classes": "hem"},
        {"arch": 7},
        {"version": "1"},
    ],
)
def test_spec_refuses_every_unusable_value(change: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        ModelSpec.from_dict(spec_dict(**change))


def test_spec_json_with_nan_tokens_is_refused() -> None:
    text = json.dumps(spec_dict()).replace('"cell_fraction": 0.6', '"cell_fraction": NaN')
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json(text)


def test_run_refuses_a_nan_spec_and_a_spec_that_does_not_fit_its_graph(
    tmp_path: Path, frames: Path
) -> None:
    out = tmp_path / "out"
    nan_spec = tiny_onnx(tmp_path / "a.onnx", spec_dict(mean=[float("nan"), 0.5, 0.5]))
    assert_clean(cli("run", nan_spec, "-s", frames, "--out", out), 1, "NaN")
    huge = tiny_onnx(tmp_path / "h.onnx", spec_dict(std=[1e-30, 0.5, 0.5]))
    assert_clean(cli("run", huge, "-s", frames, "--out", out), 1, "std")
    three = tiny_onnx(tmp_path / "b.onnx", classes_out=3)
    assert_clean(cli("run", three, "-s", frames, "--out", out), 1, "2 classes")
    wide = tiny_onnx(tmp_path / "c.onnx", input_size=48)
    assert_clean(cli("run", wide, "-s", frames, "--out", out), 1, "48")


def test_nan_logits_stop_the_run_instead_of_counting_cells(tmp_path: Path, frames: Path) -> None:
    poisoned = tiny_onnx(tmp_path / "p.onnx", poison=True)
    out = tmp_path / "out"
    r = cli("run", poisoned, "-s", frames, "--out", out, "--cell-diameter-px", 60)
    assert_clean(r, 1, "NaN")
    for line in (out / "cells.jsonl").read_text().splitlines() if out.exists() else []:
        json.loads(line)


def test_json_writers_never_write_nan(tmp_path: Path) -> None:
    from leukedge.io import atomic_write_json, json_text
    from leukedge.runtime.outputs import CellsWriter

    obj = {"auroc": float("nan"), "x": np.float32("inf"), "list": [1.0, -float("inf")]}
    assert json.loads(json_text(obj)) == {"auroc": None, "x": None, "list": [1.0, None]}
    atomic_write_json(tmp_path / "m.json", obj)
    json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail)
    w = CellsWriter(tmp_path / "cells.jsonl")
    w.write_frame([{"probs": {"all": float("nan")}}])
    w.close()
    assert json.loads((tmp_path / "cells.jsonl").read_text()) == {"probs": {"all": None}}


# ------------------------------------------------------------------ 8, 16: labels, paths


def _cnmc(root: Path, rows: str, encoding: str = "utf-8") -> Path:
    """A C-NMC tree with one training fold and a preliminary test set described by ``rows``."""
    for cls, subject in (("all", "1"), ("hem", "H2")):
        for i in range(2):
            name = f"UID_{subject}_{i}_1_{cls}.bmp"
            write_png(root / "training_data" / "fold_0" / cls / name, cell_image(i))
    prelim = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    for i in (1, 2):
        write_png(prelim / f"{i}.bmp", cell_image(10 + i))
    text = "Patient_ID,new_names,labels\n" + rows
    (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_bytes(
        text.encode(encoding)
    )
    return root


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ("UID_5_1_1_all.bmp,1.bmp,2\n", "label '2'"),
        ("UID_5_1_1_all.bmp,1.bmp,ALL\n", "label 'ALL'"),
        ("UID_5_1_1_all.bmp,../../training_data/fold_0/all/UID_1_0_1_all.bmp,1\n", "'..'"),
        ("UID_5_1_1_all.bmp,/etc/hostname,1\n", "absolute"),
        ("UID_5_1_1_all.bmp,1.bmp\n", "line 2 has 2 field(s)"),
    ],
)
def test_labels_csv_rejects_bad_rows_naming_line_and_value(
    tmp_path: Path, rows: str, needle: str
) -> None:
    from leukedge.data.layouts import load_dataset

    root = _cnmc(tmp_path / "C-NMC_Leukemia", rows)
    with pytest.raises(DatasetError, match="line 2") as e:
        load_dataset(root)
    assert needle in str(e.value)
    r = cli("data", "check", root)
    assert_clean(r, 1, "line 2")


def test_labels_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from leukedge.data.layouts import load_dataset

    rows = "UID_5_1_1_all.bmp,1.bmp,1\r\nUID_h6_1_1_hem.bmp,2.bmp,0\r\n"
    ds = load_dataset(_cnmc(tmp_path / "C-NMC_Leukemia", rows, encoding="utf-8-sig"))
    test = [r for r in ds.records if ds.official_split and ds.official_split[r.path] == "test"]
    assert sorted((Path(r.path).name, r.label, r.subject) for r in test) == [
        ("1.bmp", 1, "5"),
        ("2.bmp", 0, "H6"),
    ]


def test_subjects_csv_paths_stay_inside_the_dataset(tmp_path: Path) -> None:
    from leukedge.data.layouts import load_dataset

    root = class_folders(tmp_path / "d")
    (tmp_path / "secret.png").write_bytes(b"x")
    for bad, needle in (("../secret.png", "'..'"), (str(tmp_path / "secret.png"), "absolute")):
        (root / "subjects.csv").write_text(f"file,subject\nhem/hem_0.png,P1\n{bad},P2\n")
        with pytest.raises(DatasetError, match=f"line 3.*{needle}"):
            load_dataset(root)
    (root / "subjects.csv").write_text("\ufefffile,subject\nhem/hem_0.png\n")
    with pytest.raises(DatasetError, match="line 2 has 1 field"):
        load_dataset(root)


def test_inside_root_refuses_escapes_by_name_and_by_symlink(tmp_path: Path) -> None:
    from leukedge.validate import UnsafePathError, inside_root

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert inside_root(root, "sub/a.png") == root / "sub" / "a.png"
    for bad in ("../x", "/etc/passwd", "sub/../../x", "", "out/x"):
        with pytest.raises(UnsafePathError):
            inside_root(root, bad)
    assert inside_root(root, "out/x", follow_links=False) == root / "out" / "x"


def test_split_json_paths_outside_the_data_are_refused(data: Path, tmp_path: Path) -> None:
    from leukedge.data.layouts import load_dataset
    from leukedge.data.splits import load_split, make_split

    ds = load_dataset(data)
    path = make_split(ds, "subject", 0).save(tmp_path / "split.json", ds)
    saved = json.loads(path.read_text())
    saved["files"][0]["path"] = "../../etc/passwd"
    path.write_text(json.dumps(saved))
    with pytest.raises(DatasetError, match=r"files\[0\].*'\.\.'"):
        load_split(path, ds)


def test_export_record_and_sidecar_names_stay_in_their_folder(tmp_path: Path) -> None:
    from leukedge.export.pipeline import _previous
    from leukedge.io import sha256_file

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    entry = {"file": "../../outside.bin", "sha256": sha256_file(outside)}
    (export / "export.json").write_text(
        json.dumps({"checkpoint_sha256": "c", "files": {"fp32": entry}})
    )
    assert _previous(export, "c") == {}


def test_an_engine_sidecar_naming_a_file_elsewhere_is_refused(tmp_path: Path) -> None:
    import leukedge.runtime.backends.engine_plan as ep

    spec = ModelSpec.from_dict(spec_dict())
    sidecar = ep.EngineSidecar(
        spec=spec,
        precision="fp16",
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        onnx_path="runs/r/export/model.fp16.onnx",
        onnx_sha256="a" * 64,
        engine_file="../../elsewhere.engine",
        engine_sha256="b" * 64,
        engine_bytes=1,
        build_flags=ep.BuildFlags(max_batch=8),
        profile=ep.profile_shapes(spec, 8),
        build_seconds=1.0,
        built_at="2025-01-01T00:00:00+00:00",
        leukedge_version="0.1.0",
    )
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"x")
    sidecar.save(ep.sidecar_path_for(engine))
    with pytest.raises(ep.SidecarError, match="'..'"):
        ep.load_sidecar_for(engine)


# ------------------------------------------------------------------ 9: a truncated video


def test_a_truncated_video_exits_1_as_run_help_promises(model: Path, tmp_path: Path) -> None:
    video = truncated_video(tmp_path / "cut.avi")
    out = tmp_path / "out"
    r = cli("run", model, "-s", video, "--out", out, "--json", "--cell-diameter-px", 20)
    assert r.exit_code == 1, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "source_error" and "truncated" in summary["message"]
    assert summary["frames"]["read"] > 0  # the frames before the damage are kept


# ------------------------------------------------------------------ 10: warnings and refusals


def test_grayscale_frames_and_multipage_tiffs_are_warned_about(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "frames"
    write_png(src / "gray.png", cell_image(1, 64, gray=True))
    multipage_tiff(src / "stack.tif", pages=3)
    out = tmp_path / "out"
    r = cli("run", model, "-s", src, "--out", out, "--cell-diameter-px", 20)
    assert_clean(r, 0, "grayscale", "3 pages")
    warnings = json.loads((out / "summary.json").read_text())["source"]["warnings"]
    assert any("grayscale" in w for w in warnings) and any("only page 1" in w for w in warnings)


def test_data_check_flags_duplicates_across_classes_and_symlinked_folders(tmp_path: Path) -> None:
    from leukedge.data.check import check_dataset
    from leukedge.data.layouts import load_dataset

    root = class_folders(tmp_path / "d")
    (root / "all" / "copy.png").write_bytes((root / "hem" / "hem_1.png").read_bytes())
    elsewhere = class_folders(tmp_path / "elsewhere")
    (root / "blast").symlink_to(elsewhere / "all")
    multipage_tiff(root / "hem" / "stack.tif")
    report = check_dataset(load_dataset(root, "folders"))
    problems = [p["problem"] for p in report["problems"]]
    assert any("same image as" in p and "'hem'" in p for p in problems)
    assert any("symlink" in w and "outside the dataset" in w for w in report["warnings"])
    assert any("multi-page TIFF" in w for w in report["warnings"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device", "foo"], "--device"),
        (["--um-per-px", "inf"], "--um-per-px"),
        (["--um-per-px", "0"], "--um-per-px"),
        (["--cell-diameter-px", "0"], "--cell-diameter-px"),
        (["--cell-diameter-px", "nan"], "--cell-diameter-px"),
        (["--backend", "gpu-fp8"], "--backend"),
    ],
)
def test_run_refuses_impossible_settings(
    model: Path, frames: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    r = cli("run", model, "-s", frames, "--out", tmp_path / "o", *args)
    assert_clean(r, 2, needle)
    assert not (tmp_path / "o").exists()


def test_export_refuses_an_opset_outside_the_supported_range(tmp_path: Path) -> None:
    for opset in ("99", "12"):
        assert_clean(cli("export", tmp_path, "--opset", opset), 2, "--opset")


# ------------------------------------------------------------------ 11: allocations user input sizes


def test_huge_cell_scales_are_refused_with_the_limit_named(model: Path, frames: Path) -> None:
    from leukedge.imaging.preprocess import crop_cell
    from leukedge.runtime.cells import CellFinder
    from leukedge.validate import UsageError

    r = cli("run", model, "-s", frames, "--cell-diameter-px", "1e9")
    assert_clean(r, 2, "2000")
    with pytest.raises(UsageError, match="2000"):
        CellFinder(cell_diameter_px=1e9)
    spec = ModelSpec.from_dict(spec_dict(cell_fraction=0.05))
    with pytest.raises(UsageError, match="4096"):
        CellFinder(cell_diameter_px=1000, spec=spec)
    with pytest.raises(ValueError, match="4096"):
        crop_cell(np.zeros((8, 8, 3), np.uint8), (0, 0, 4, 4), spec, diameter_px=1e6)


def test_a_batch_too_large_for_memory_is_refused_with_the_limit_named(
    tmp_path: Path, frames: Path
) -> None:
    big = tiny_onnx(tmp_path / "big.onnx", spec_dict(input_size=2048), input_size=2048)
    r = cli("run", big, "-s", frames, "--batch", 4096, "--out", tmp_path / "o")
    assert_clean(r, 2, "GiB")


def test_an_image_over_the_opencv_pixel_limit_is_skipped_not_fatal(
    data: Path, model: Path, tmp_path: Path
) -> None:
    from leukedge.imaging.images import ImageReadError, decode_image

    with pytest.raises(ImageReadError, match="CV_IO_MAX_IMAGE_PIXELS"):
        decode_image(huge_png(), "huge.png")
    root = tmp_path / "d"
    class_folders(root)
    (root / "all" / "huge.png").write_bytes(huge_png())
    r = cli("data", "check", root, "--json")
    assert_clean(r, 0)
    report = json.loads(r.stdout)
    assert report["usable_images"] == report["images"] - 1
    r = cli("run", model, "-s", root / "all", "--out", tmp_path / "o", "--json")
    assert_clean(r, 0)
    assert json.loads(r.stdout)["frames"]["skipped"] == 1


# ------------------------------------------------------------------ 13: --resume with changes


def test_resume_refuses_changed_settings_listing_each(data: Path, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", data)
    args = ["train", "--data", data, "--out", run, "--resume"]
    r = cli(*args, "--model", "resnet50", "--img-size", 64)
    assert_clean(r, 2, "img_size: the run has 32, now 64", "model: the run has 'cnn'")
    other = class_folders(tmp_path / "other")
    assert_clean(cli(*args[:2], other, *args[3:]), 2, "data:")


def test_resume_differences_ignore_what_may_change() -> None:
    from leukedge.train.config import TrainConfig, resume_differences

    saved = TrainConfig(data="/d", img_size=64, epochs=5)
    assert resume_differences(saved, TrainConfig(data="/d", img_size=64, epochs=9)) == []
    diffs = resume_differences(saved, TrainConfig(data="/d", img_size=96), {"img_size"})
    assert diffs == ["img_size: the run has 64, now 96"]


# ------------------------------------------------------------------ 18: one line per failure


def test_corrupt_or_empty_checkpoints_say_they_are_corrupt(data: Path, tmp_path: Path) -> None:
    for name, content in (("empty", b""), ("random", os.urandom(2000))):
        run = fake_run(tmp_path / name, data, content)
        r = cli("evaluate", run, "--workers", 0)
        assert_clean(r, 1, "checkpoint")
        assert ("empty" if name == "empty" else "corrupt") in r.output
        assert "weights_only=False" not in r.output


def test_truncated_or_random_onnx_files_say_so(model: Path, frames: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model.read_bytes()[:200])
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(os.urandom(500))
    for bad in (cut, noise):
        assert_clean(cli("run", bad, "-s", frames, "--out", tmp_path / "o"), 1, bad.name)


def test_debug_shows_the_traceback(data: Path, tmp_path: Path, monkeypatch: Any) -> None:
    run = fake_run(tmp_path / "run", data)
    r = cli("--debug", "evaluate", run, "--workers", 0)
    assert (
        r.exit_code != 0 and r.exception is not None and "Checkpoint" in type(r.exception).__name__
    )
    monkeypatch.setenv("LEUKEDGE_DEBUG", "1")
    r = cli("evaluate", run, "--workers", 0)
    assert r.exception is not None and not isinstance(r.exception, SystemExit)


def test_unwritable_out_is_one_line(tmp_path: Path, data: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = cli("train", "--data", data, "--out", blocker / "run")
    assert_clean(r, 2, "not a folder")
    r = cli("data", "synth", blocker / "synth", "--n", 4, "--frames", 0)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
