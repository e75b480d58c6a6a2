"""Training records what in-distribution looks like; a new microscope's cells fine-tune it.

One tiny run (synthetic cells, 32 px, 2 epochs, Reinhard stain normalisation and HED
jitter) is trained once; the tests read what it wrote, export it, cut cells from
synthetic frames with it and fine-tune from it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from leukedge.data.layouts import load_dataset
from leukedge.rundir import RunDir, RunDirError
from leukedge.runtime.shift import SHIFT_FILE, ShiftModel
from leukedge.spec import ModelSpec
from leukedge.train.config import TrainConfig
from leukedge.train.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from leukedge.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth32")
    synthesize(out, n=64, frames=2, seed=0, cell_size=32, n_subjects=8)
    return out


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="cnn", data=str(data), out=str(out), epochs=2, batch_size=16, img_size=32)
    return TrainConfig(**{**base, "workers": 0, "seed": 0, **kw})


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    train(config(data, out, stain_norm="reinhard", hed_aug=True))
    return out


def test_a_run_records_calibration_operating_point_and_shift(run: Path) -> None:
    spec = RunDir(run).spec()
    assert spec.stain_norm == "reinhard" and spec.stain_reference["images"] > 0
    assert spec.temperature > 0 and spec.operating_point["split"] == "test"
    assert spec.operating_point["positives"] + spec.operating_point["negatives"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stain_norm"] == "reinhard" and metrics["hed_aug"] is True
    cal = metrics["calibration"]
    assert cal["temperature"] == pytest.approx(spec.temperature)
    assert 0 <= cal["test"]["ece"] <= 1 and cal["reliability"]["bins"]
    shift = metrics["domain_shift"]
    assert shift["available"] and 0 <= shift["test_flagged_fraction"] <= 1
    assert (run / "reliability.png").is_file() and (run / SHIFT_FILE).is_file()
    model = ShiftModel.load(run / SHIFT_FILE)
    assert model.feature_dim == 256 and model.info["percentile"] == 95.0


def test_export_embeds_features_and_shift(run: Path) -> None:
    import onnx

    from leukedge.export.pipeline import export_run

    record = export_run(run, precisions="fp32")
    assert record["files"]["fp32"]["domain_shift_embedded"] is True
    proto = onnx.load(str(run / "export" / "model.fp32.onnx"))
    assert [o.name for o in proto.graph.output] == ["logits", "features"]


def test_evaluate_reports_calibration_and_domain_shift(run: Path, tmp_path: Path) -> None:
    from leukedge.train.evaluate_run import evaluate_run

    r = evaluate_run(run, split="test", device="cpu", workers=0, out=tmp_path / "e.json")
    assert r["domain_shift"]["available"] and r["domain_shift"]["cells_scored"] == len(r["images"])
    assert r["calibration"]["temperature"] == RunDir(run).spec().temperature
    assert {"file", "label", "class", "p_all", "uncertain", "shift_score"} <= set(r["images"][0])
    assert r["blast_ratio_adjusted"]["method"].startswith("adjusted")


def test_data_cells_cuts_every_cell_for_labelling(run: Path, data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    test_export_embeds_features_and_shift(run)  # the guesses need the ONNX file
    out = tmp_path / "cells"
    args = ["data", "cells", str(data / "frames"), "--out", str(out), "--model", str(run)]
    r = CliRunner().invoke(app, [*args, "--cell-diameter-px", "40"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "cells.csv").open()))
    crops = sorted((out / "unlabelled").glob("*.png"))
    assert rows and len(rows) == len(crops)
    assert {"frame", "x0", "y1", "guess", "p_all", "uncertain", "shift_score"} <= set(rows[0])
    assert (out / "all").is_dir() and (out / "hem").is_dir()
    again = CliRunner().invoke(app, [*args, "--cell-diameter-px", "40"])
    assert again.exit_code == 1 and "already holds" in again.output
    # A lab sorts some cells; the rest stay unlabelled and out of the dataset.
    for i, crop in enumerate(crops[:4]):
        shutil.move(str(crop), out / ("all" if i % 2 else "hem") / crop.name)
    ds = load_dataset(out)
    assert ds.classes == ["hem", "all"] and len(ds.records) == 4


def test_cells_without_a_model_use_the_given_geometry(data: Path, tmp_path: Path) -> None:
    from leukedge.data.harvest import harvest_cells
    from leukedge.runtime.cells import CellFinder

    spec = ModelSpec(arch="none", crop_style="context", cell_fraction=0.5)
    finder = CellFinder.from_spec(spec, cell_diameter_px=40)
    r = harvest_cells(str(data / "frames"), tmp_path / "c", spec, finder)
    rows = list(csv.DictReader((tmp_path / "c" / "cells.csv").open()))
    assert r["cells"] == len(rows) > 0 and "guess" not in rows[0]


def test_init_fine_tunes_from_the_run_with_a_frozen_backbone(
    run: Path, data: Path, tmp_path: Path
) -> None:
    cfg = config(data, tmp_path / "ft", epochs=1, init=str(run), freeze_backbone=True)
    cfg.img_size = 64  # ignored: the spec comes from the run fine-tuned
    assert cfg.resolved_lr() == pytest.approx(1e-4)
    train(cfg)
    old_spec, new_spec = RunDir(run).spec(), RunDir(tmp_path / "ft").spec()
    assert new_spec.input_size == old_spec.input_size == 32
    assert new_spec.stain_reference == old_spec.stain_reference
    old = torch.load(run / "checkpoint.pt", weights_only=True)
    new = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    conv = "features.0.weight"
    torch.testing.assert_close(new[conv], old[conv])  # frozen
    assert not torch.equal(new["head.2.weight"], old["head.2.weight"])  # trained
    assert (tmp_path / "ft" / SHIFT_FILE).is_file()
    config_json = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config_json["init"] == str(run) and config_json["freeze_backbone"] is True


def test_init_refusals(run: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--init"):
        config(data, tmp_path / "x", freeze_backbone=True).validate()
    with pytest.raises(RunDirError, match="normalises stains"):
        train(config(data, tmp_path / "y", init=str(run), stain_norm="macenko"))
    other = tmp_path / "other"
    for c in ("eosinophil", "neutrophil"):
        (other / c).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(other / c / f"{i}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    with pytest.raises(RunDirError, match="classes"):
        train(config(other, tmp_path / "z", init=str(run)))
