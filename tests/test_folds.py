"""K-fold cross-validation by subject: fold assignment, fold splits, the k-fold run dir."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from sklearn.model_selection import StratifiedGroupKFold

from leukedge.data.layouts import load_dataset
from leukedge.data.records import Dataset, Record
from leukedge.predictions import read_predictions
from leukedge.train.config import TrainConfig
from leukedge.train.folds import (
    FoldsError,
    fold_split,
    make_folds,
    train_folds,
)
from leukedge.train.loop import RunExistsError


def _dataset(n_subjects: int = 20, per_subject: int = 5, subjects: bool = True) -> Dataset:
    records = []
    for s in range(n_subjects):
        label = int(s % 3 != 0)  # about two ALL subjects per HEM one, as C-NMC
        for i in range(per_subject + s % 4):
            records.append(Record(f"/d/{s}_{i}.png", label, f"P{s}" if subjects else None))
    return Dataset(Path("/d"), "folders", ["hem", "all"], records)


def test_no_subject_is_in_two_folds_and_every_image_in_one() -> None:
    ds = _dataset()
    folds = make_folds(ds, 5, seed=0)
    assert set(folds.fold_of) == {r.path for r in ds.records}
    fold_of_subject: dict[str, set[int]] = {}
    for r in ds.records:
        fold_of_subject.setdefault(str(r.subject), set()).add(folds.fold_of[r.path])
    assert all(len(v) == 1 for v in fold_of_subject.values())
    assert sorted(set(folds.fold_of.values())) == [0, 1, 2, 3, 4]
    assert folds.unit == "subject"


def test_folds_are_reproducible_and_follow_the_seed() -> None:
    ds = _dataset()
    assert make_folds(ds, 5, seed=3).fold_of == make_folds(ds, 5, seed=3).fold_of
    assert make_folds(ds, 5, seed=3).fold_of != make_folds(ds, 5, seed=4).fold_of


def test_folds_are_scikit_learns_stratified_group_k_fold() -> None:
    ds = _dataset()
    folds = make_folds(ds, 4, seed=1)
    sgkf = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
    y = [r.label for r in ds.records]
    groups = [r.subject for r in ds.records]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, (_, test) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
            assert {ds.records[i].path for i in test} == folds.test_paths(k)


def test_folds_are_stratified_by_class() -> None:
    ds = _dataset(n_subjects=30)
    folds = make_folds(ds, 5, seed=0)
    total = Counter(r.label for r in ds.records)
    for k in range(5):
        in_fold = Counter(r.label for r in ds.records if folds.fold_of[r.path] == k)
        share = in_fold[1] / sum(in_fold.values())
        assert abs(share - total[1] / sum(total.values())) < 0.15


def test_image_level_folds_without_subject_ids_say_so() -> None:
    ds = _dataset(subjects=False)
    folds = make_folds(ds, 5, seed=0)
    assert folds.unit == "image"
    assert any("no subject ids" in w for w in folds.warnings)
    counts = Counter(folds.fold_of.values())
    assert max(counts.values()) - min(counts.values()) <= 2


def test_too_many_folds_for_the_subjects_is_a_clear_error() -> None:
    with pytest.raises(FoldsError, match="needs at least 30 subjects"):
        make_folds(_dataset(n_subjects=20), 30)
    with pytest.raises(FoldsError, match="at least 2"):
        make_folds(_dataset(), 1)


def test_fold_split_carves_val_by_subject_from_the_training_folds() -> None:
    ds = _dataset(n_subjects=12)
    folds = make_folds(ds, 3, seed=0)
    for k in range(3):
        split = fold_split(ds, folds, k)
        assert {p for p, s in split.assignment.items() if s == "test"} == folds.test_paths(k)
        where: dict[str, set[str]] = {}
        for r in ds.records:
            where.setdefault(str(r.subject), set()).add(split.assignment[r.path])
        assert all(len(v) == 1 for v in where.values())
        val = split.records(ds, "val")
        assert {r.label for r in val} == {0, 1}  # early stopping sees both classes
        assert split.records(ds, "train")


# ------------------------------------------------------------------ the k-fold run dir


def _cfg(data: Path, out: Path, **over: object) -> TrainConfig:
    base: dict[str, object] = {
        "model": "cnn",
        "data": str(data),
        "out": str(out),
        "epochs": 1,
        "batch_size": 16,
        "img_size": 32,
        "workers": 0,
        "seed": 0,
        "patience": 5,
    }
    base.update(over)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_kfold_run_pools_out_of_fold_predictions_and_resumes(
    tmp_path: Path, synth_data: Path
) -> None:
    out = tmp_path / "kf"
    result = train_folds(_cfg(synth_data, out), 2)
    dataset = load_dataset(synth_data)
    for k in range(2):  # each fold is an ordinary run dir
        for name in ("spec.json", "checkpoint.pt", "split.json", "metrics.json", "predictions.csv"):
            assert (out / f"fold-{k}" / name).is_file(), (k, name)
    oof = read_predictions(out / "oof.csv")
    assert sorted(oof.files) == sorted(dataset.relpath(r.path) for r in dataset.records)
    assert oof.folds is not None and set(oof.folds.tolist()) == {0, 1}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "kfold" and saved["images"] == len(dataset.records)
    assert saved["bootstrap"]["unit"] == "subject"
    for m in ("accuracy", "f1_weighted", "auroc", "ece"):
        lo, hi = saved["pooled"][m]["ci95"]
        assert lo <= saved["pooled"][m]["estimate"] <= hi
        assert saved["mean"][m] == pytest.approx(np.mean([f[m] for f in saved["per_fold"]]))
    assert result["per_fold"] == saved["per_fold"]

    # An unfinished fold continues; a finished one is left alone.
    done = (out / "fold-0" / "checkpoint.pt").stat().st_mtime_ns
    split_before = (out / "fold-1" / "split.json").read_text()
    for name in ("metrics.json", "predictions.csv", "checkpoint.pt", "last.pt"):
        (out / "fold-1" / name).unlink()
    (out / "oof.csv").unlink()
    train_folds(_cfg(synth_data, out), 2)
    assert (out / "fold-0" / "checkpoint.pt").stat().st_mtime_ns == done
    assert (out / "fold-1" / "predictions.csv").is_file() and (out / "oof.csv").is_file()
    assert (out / "fold-1" / "split.json").read_text() == split_before

    # A run started before a setting existed continues: it had the default then.
    saved_folds = json.loads((out / "folds.json").read_text())
    for newer in ("stain_norm", "hed_aug", "freeze_backbone"):
        saved_folds["config"].pop(newer)
    (out / "folds.json").write_text(json.dumps(saved_folds))
    train_folds(_cfg(synth_data, out), 2)

    with pytest.raises(RunExistsError, match="img_size 32 -> 48"):
        train_folds(_cfg(synth_data, out, img_size=48), 2)
    with pytest.raises(RunExistsError, match="folds 2 -> 3"):
        train_folds(_cfg(synth_data, out), 3)


def test_folds_refuse_the_official_split(tmp_path: Path, synth_data: Path) -> None:
    with pytest.raises(FoldsError, match="official"):
        train_folds(_cfg(synth_data, tmp_path / "x", split="official"), 3)


@pytest.mark.realdata
def test_cnmc_sample_folds_keep_each_patient_in_one_fold() -> None:
    ds = load_dataset(shared_data("cnmc-sample"))
    folds = make_folds(ds, 3, seed=0)
    assert folds.unit == "subject" and not folds.warnings
    for subject, recs in ds.subjects().items():
        assert len({folds.fold_of[r.path] for r in recs}) == 1, subject
    for k in range(3):
        split = fold_split(ds, folds, k)
        assert {r.label for r in split.records(ds, "test")} == {0, 1}
        assert {r.label for r in split.records(ds, "val")} == {0, 1}


@pytest.mark.slow
def test_cli_folds_then_export_one_fold(tmp_path: Path, synth_data: Path) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app
    from leukedge.export import export_run

    out = tmp_path / "cv"
    args = ["train", "--data", str(synth_data), "--out", str(out), "--folds", "2"]
    args += ["--epochs", "1", "--img-size", "32", "--workers", "0", "--batch-size", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2-fold cross-validation" in result.output and "pooled" in result.output
    export_run(out / "fold-1", precisions=("fp32",))  # a fold exports like any run
    assert (out / "fold-1" / "export" / "model.fp32.onnx").is_file()
    again = CliRunner().invoke(app, args)  # the same command again: nothing left to train
    assert again.exit_code == 0 and "done already" in again.output
    bad = CliRunner().invoke(app, [*args[:-2], "--batch-size", "8"])
    assert bad.exit_code == 2 and "batch_size 16 -> 8" in bad.output


def test_a_fold_gets_the_spec_a_single_split_run_would(tmp_path: Path, synth_data: Path) -> None:
    """--stain-norm reaches each fold's spec, its reference measured on that fold's train images."""
    from leukedge.progress import Reporter
    from leukedge.spec import ModelSpec
    from leukedge.train.folds import _fold_spec_and_config, fold_split, make_folds

    dataset = load_dataset(synth_data)
    folds = make_folds(dataset, 2, seed=0)
    cfg = _cfg(synth_data, tmp_path / "kf", stain_norm="reinhard")
    _fold_spec_and_config(cfg, dataset, fold_split(dataset, folds, 0), tmp_path / "f0", Reporter())
    spec = ModelSpec.load(tmp_path / "f0" / "spec.json")
    assert spec.stain_norm == "reinhard" and spec.stain_reference
    assert json.loads((tmp_path / "f0" / "config.json").read_text())["stain_norm"] == "reinhard"
