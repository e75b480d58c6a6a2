"""Shared fixtures: small synthetic data and one trained run, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests are CPU-only and must not fight over the machine's cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(sub: str) -> Path:
    """A folder of the real data beside the project; skips the test when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available ({path} is absent)")
    return path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 synthetic cells of 12 subjects (20 each) and 4 frames, 64 px crops."""
    from leukedge.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=240, frames=4, seed=0, cell_size=64, n_subjects=12)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> Path:
    """A CNN trained briefly on the synthetic cells at 48 px: a real run dir for later steps."""
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "cnn"
    cfg = TrainConfig(
        model="cnn",
        data=str(synth_data),
        out=str(out),
        epochs=6,
        batch_size=16,
        img_size=48,
        workers=0,
        seed=0,
        patience=6,
    )
    train(cfg)
    return out
