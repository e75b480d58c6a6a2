"""Training: it learns, resumes exactly, survives bad files, runs under DDP (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from leukedge.progress import Reporter
from leukedge.rundir import RunDir
from leukedge.train.config import TrainConfig
from leukedge.train.loop import RunExistsError, train
from leukedge.train.models import (
    build_model,
    default_spec,
    load_pretrained_file,
    load_run_model,
)


@pytest.mark.slow
def test_trained_run_is_complete_and_learned(trained_run: Path) -> None:
    for name in (
        "spec.json",
        "checkpoint.pt",
        "last.pt",
        "split.json",
        "config.json",
        "history.csv",
        "metrics.json",
        "curves.png",
        "confusion.png",
    ):
        assert (trained_run / name).stat().st_size > 0, name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # Synthetic classes overlap (about 95% is the ceiling); chance is 50%.
    assert metrics["val"]["val_accuracy"] >= 0.75
    assert metrics["test"]["accuracy"] >= 0.75
    assert metrics["split_unit"] == "subject"
    assert metrics["test"]["per_subject"]


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    last = torch.load(trained_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "epoch", "history"} <= set(last)
    model = load_run_model(RunDir(trained_run))
    assert not model.training


def _cfg(data: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(
        model="cnn",
        data=str(data),
        out=str(out),
        epochs=epochs,
        batch_size=16,
        img_size=32,
        workers=0,
        seed=5,
        patience=50,
        lr=2e-3,
    )


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    tmp_path: Path, synth_data: Path
) -> None:
    train(_cfg(synth_data, tmp_path / "straight", 3))

    class CtrlCInEpoch3(Reporter):
        def task(self, description: str, total: int | None) -> None:
            if description.startswith("epoch 3/"):
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synth_data, tmp_path / "resumed", 3), reporter=CtrlCInEpoch3())
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 2
    train(_cfg(synth_data, tmp_path / "resumed", 3), resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = (tmp_path / "resumed" / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 1 + 3


@pytest.mark.slow
def test_curves_are_drawn_once_per_run_even_when_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leukedge.train.loop as loop
    from leukedge.data.synth import synthesize

    synth_data = tmp_path / "data"  # a small set: this counts drawings, not learning
    synthesize(synth_data, n=72, frames=0, seed=1, cell_size=32, n_subjects=6)

    drawn: list[int] = []  # epochs in each drawing
    real_plot = loop.plot_curves

    def counting_plot(history: list[dict], path: Path) -> Path:
        drawn.append(len(history))
        return real_plot(history, path)

    monkeypatch.setattr(loop, "plot_curves", counting_plot)

    # Early stop: no epoch after the first is better, patience 1 -> stops after epoch 2 of 3.
    with monkeypatch.context() as m:
        m.setattr(loop, "_is_better", lambda row, best: best is None)
        cfg = _cfg(synth_data, tmp_path / "early", 3)
        cfg.patience = 1
        assert train(cfg)["epochs_run"] == 2
    assert drawn == [2]

    class CtrlCInEpoch2(Reporter):
        def task(self, description: str, total: int | None) -> None:
            if description.startswith("epoch 2/"):
                raise KeyboardInterrupt

    drawn.clear()
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synth_data, tmp_path / "stopped", 2), reporter=CtrlCInEpoch2())
    assert drawn == [1] and (tmp_path / "stopped" / "curves.png").stat().st_size > 0

    drawn.clear()
    train(_cfg(synth_data, tmp_path / "stopped", 2), resume=True)
    assert drawn == [2]


@pytest.mark.slow
def test_existing_run_is_not_overwritten(trained_run: Path, synth_data: Path) -> None:
    before = (trained_run / "checkpoint.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        train(_cfg(synth_data, trained_run, 1))
    assert (trained_run / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_listed(tmp_path: Path, synth_data: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data / "cells", data)
    victims = sorted((data / "all").glob("*.png"))[:2]
    victims[0].write_bytes(b"")
    victims[1].write_bytes(victims[1].read_bytes()[:50])
    metrics = train(_cfg(data, tmp_path / "run", 1))
    listed = {Path(s["path"]).name for s in metrics["skipped_files"]}
    assert {v.name for v in victims} <= listed


def test_pretrained_local_file_loads_and_wrong_arch_is_refused(tmp_path: Path) -> None:
    src = build_model("cnn", 5, 32)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model("cnn", 2, 32)
    left = load_pretrained_file(dst, tmp_path / "w.pt")
    assert left == ["head.2.bias", "head.2.weight"]  # only the differently sized head
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    from leukedge.train.models import PretrainedError

    with pytest.raises(PretrainedError, match="wrong architecture"):
        load_pretrained_file(build_model("resnet50", 2, 32), tmp_path / "w.pt")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "vit-hybrid"])
def test_timm_models_take_one_training_step(arch: str) -> None:
    model = build_model(arch, 2, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_timm_specs_take_the_pretrained_normalisation_and_filter() -> None:
    import timm
    from timm.data import resolve_model_data_config

    from leukedge.spec import IMAGENET_MEAN, IMAGENET_STD

    def spec_of(arch: str):
        return default_spec(arch, ["hem", "all"], "all", 64, "context", 0.5)

    vit = spec_of("vit-hybrid")
    assert vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5)
    assert vit.interpolation == timm.get_pretrained_cfg("vit_small_r26_s32_224").interpolation
    assert vit.interpolation == "bicubic"
    resnet = spec_of("resnet50")
    timm_cfg = resolve_model_data_config(timm.create_model("resnet50", pretrained=False))
    assert resnet.mean == tuple(timm_cfg["mean"]) and resnet.std == tuple(timm_cfg["std"])
    assert resnet.interpolation == timm_cfg["interpolation"]
    cnn = spec_of("cnn")
    assert (cnn.mean, cnn.std, cnn.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "area")


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path: Path, synth_data: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "leukedge",
        "train",
        "--data",
        str(synth_data),
        "--out",
        str(out),
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["test"]["n"] > 0


def test_cli_help_of_every_command() -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    runner = CliRunner()
    commands = [
        [],
        ["data"],
        ["data", "check"],
        ["data", "synth"],
        ["train"],
        ["evaluate"],
        ["demo"],
    ]
    commands += [[c] for c in ("export", "build-engine", "run", "bench") if _has_command(c)]
    for cmd in commands:
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


def _has_command(name: str) -> bool:
    from leukedge.cli import app

    return any(
        (c.name or c.callback.__name__.replace("_", "-")) == name for c in app.registered_commands
    )


@pytest.mark.slow
def test_cli_evaluate_and_bad_data_message(trained_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leukedge.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["evaluate", str(trained_run), "--split", "val", "--json", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metrics"]["n"] > 0
    (tmp_path / "nothing").mkdir()
    bad = runner.invoke(app, ["data", "check", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "no known dataset layout" in bad.output


def test_corrupt_frame_png_reads_as_clear_error(tmp_path: Path) -> None:
    from leukedge.imaging.images import ImageReadError, read_image

    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[:-20])
    with pytest.raises(ImageReadError, match="truncated PNG"):
        read_image(tmp_path / "cut.png")


def test_augmentation_is_seeded_and_keeps_masked_background_black() -> None:
    from leukedge.spec import ModelSpec
    from leukedge.train.augment import augment

    img = np.zeros((80, 80, 3), np.uint8)
    cv2.circle(img, (40, 40), 20, (160, 90, 200), -1)
    spec = ModelSpec(arch="cnn", input_size=48, crop_style="masked")
    a = augment(img, spec, np.random.default_rng([1, 2, 3]))
    b = augment(img, spec, np.random.default_rng([1, 2, 3]))
    c = augment(img, spec, np.random.default_rng([1, 2, 4]))
    assert a.shape == (48, 48, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a[0, 0].max() == 0 and a[24, 24].max() > 0


def test_pretrained_timm_without_the_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    from leukedge.train.models import PretrainedError

    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("could not reach the weights hub")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedError, match="--pretrained PATH"):
        build_model("resnet50", 2, 64, pretrained="timm")
