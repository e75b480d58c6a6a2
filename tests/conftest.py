"""Shared fixtures: small data sets and run dirs, each made once per session."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

# Tests are CPU-only and must not fight over the machine's cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

PINK_BGR = (200, 175, 235)


def shared_data(sub: str) -> Path:
    """A folder of the real data beside the project; skips the test when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available ({path} is absent)")
    return path


def draw_cell(rng: np.random.Generator, cls: str, side: int = 96) -> np.ndarray:
    """A pink field with one disc: HEM large and pale, ALL small and dark purple."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = PINK_BGR
    noise = rng.normal(0, 6, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    cx, cy = (side // 2 + int(v) for v in rng.integers(-8, 9, 2))
    if cls == "hem":
        radius, colour = int(rng.integers(28, 36)), (225, 205, 215)
    else:
        radius, colour = int(rng.integers(11, 16)), (115, 35, 85)
    jitter = rng.integers(-12, 13, 3)
    fill = tuple(int(c + j) for c, j in zip(colour, jitter, strict=True))
    cv2.circle(img, (cx, cy), radius, fill, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def make_drawn_dataset(root: Path, subjects_per_class: int = 4, per_subject: int = 6) -> Path:
    """Class folders ``hem/`` and ``all/`` of drawn cells with ``subjects.csv`` (one class each)."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in ("hem", "all"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for s in range(subjects_per_class):
            subject = f"{cls[0].upper()}{s}"
            for i in range(per_subject):
                name = f"{cls}/{subject}_{i}.png"
                cv2.imwrite(str(root / name), draw_cell(rng, cls))
                rows.append({"file": name, "subject": subject})
    with open(root / "subjects.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 synthetic cells of 12 subjects (20 each) and 4 frames, 64 px crops."""
    from leukedge.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=240, frames=4, seed=0, cell_size=64, n_subjects=12)
    return out


@pytest.fixture(scope="session")
def drawn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 drawn cells of 8 subjects: classes far apart, so a CNN learns them in a few steps."""
    return make_drawn_dataset(tmp_path_factory.mktemp("drawn"))


def _train_loop(data: Path, out: Path, model: str, img_size: int, epochs: int) -> None:
    """``leukedge train``: a complete run dir (history, metrics, plots, last.pt)."""
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import train

    cfg = TrainConfig(
        model=model,
        data=str(data),
        out=str(out),
        epochs=epochs,
        batch_size=16,
        img_size=img_size,
        workers=0,
        seed=0,
        patience=epochs,
    )
    train(cfg)


def _train_steps(
    data: Path, out: Path, model: str, img_size: int, steps: int, lr: float = 0.05
) -> None:
    """spec.json, split.json and checkpoint.pt after ``steps`` plain SGD steps at a high rate.

    Seconds instead of a training run, and the logits come out large with the
    classes far apart: what FP16/INT8 parity checks need to be meaningful.
    """
    import torch

    from leukedge.data.arrays import load_image_set
    from leukedge.data.layouts import load_dataset
    from leukedge.data.splits import make_split
    from leukedge.train.models import build_model, default_spec

    out.mkdir(parents=True)
    ds = load_dataset(data)
    split = make_split(ds, seed=0)
    split.save(out / "split.json", ds)
    spec = default_spec(model, ds.classes, ds.positive_class, img_size, "context", 0.5)
    spec.save(out / "spec.json")
    train = load_image_set(split.records(ds, "train"), spec)
    torch.manual_seed(0)
    net = build_model(model, spec.num_classes, img_size)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=gen)
        xb = x[idx]
        if torch.rand((), generator=gen) < 0.5:
            xb = xb.flip(3)
        loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), out / "checkpoint.pt")


MakeRun = Callable[..., Path]


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> MakeRun:
    """Run dirs made on first request and shared for the session.

    ``make_run(data, model="cnn", img_size=48, epochs=0, steps=0, export=(), lr=0.05)``
    trains on the data set folder ``data`` with the training loop for ``epochs``
    or with ``steps`` plain SGD steps (exactly one of them), then exports the
    ``export`` precisions into ``export/`` (a copy: the trained run stays
    unexported). The same arguments give the same dir, so a test must not
    change it: copy it first.
    """
    runs: dict[tuple[object, ...], Path] = {}

    def make(
        data: Path,
        model: str = "cnn",
        img_size: int = 48,
        epochs: int = 0,
        steps: int = 0,
        export: tuple[str, ...] = (),
        lr: float = 0.05,
    ) -> Path:
        if (epochs > 0) == (steps > 0):
            raise ValueError(f"give epochs or steps, not both nor neither: {epochs=} {steps=}")
        key = (str(data), model, img_size, epochs, steps, tuple(export), lr)
        if key in runs:
            return runs[key]
        out = tmp_path_factory.mktemp("runs") / model
        if export:
            from leukedge.export import export_run

            shutil.copytree(make(data, model, img_size, epochs, steps, lr=lr), out)
            export_run(out, precisions=export)
        elif epochs:
            _train_loop(data, out, model, img_size, epochs)
        else:
            _train_steps(data, out, model, img_size, steps, lr)
        runs[key] = out
        return out

    return make


@pytest.fixture(scope="session")
def trained_run(make_run: MakeRun, synth_data: Path) -> Path:
    """A CNN trained briefly on the synthetic cells at 48 px: a real run dir for later steps."""
    return make_run(synth_data, model="cnn", img_size=48, epochs=6)


@pytest.fixture(scope="session")
def exported_run(make_run: MakeRun, synth_data: Path) -> Path:
    """``trained_run`` exported to FP32/FP16/INT8 ONNX with its parity set (bench, parity set)."""
    return make_run(synth_data, model="cnn", img_size=48, epochs=6, export=("fp32", "fp16", "int8"))
