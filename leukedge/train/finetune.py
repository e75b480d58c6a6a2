"""Start a run from another run: fine-tuning to a new microscope (``leukedge train --init RUN``).

A model trained in one lab fails on another lab's cells; a few hundred labelled cells
of the new microscope fix most of it when training starts from the trained weights
instead of from scratch. The new run takes the old run's spec (architecture, input
size, normalisation, crop geometry and stain reference), loads its best weights, and
by default trains at a tenth of the usual learning rate. ``--freeze-backbone`` trains
only the classifier head; BatchNorm statistics still follow the new images (AdaBN, Li
et al. 2016), which alone absorbs much of a stain or camera change.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from leukedge.rundir import RunDir, RunDirError
from leukedge.spec import ModelSpec
from leukedge.train.features import backbone_parameters


def init_spec(init: str | Path, classes: list[str], dataset: str | None) -> ModelSpec:
    """The spec of run ``init`` for a new run on data with ``classes``.

    What was measured on the old run's data (temperature, operating point) is reset:
    the new run measures its own.
    """
    run = RunDir(init)
    run.require("spec.json", "checkpoint.pt")
    spec = run.spec()
    if list(classes) != list(spec.classes):
        raise RunDirError(
            f"--init {init} was trained on classes {spec.classes}, the data has {classes}: "
            "label the new cells with the same class folder names"
        )
    return replace(spec, temperature=1.0, operating_point=None, dataset=dataset)


def load_init_weights(model: nn.Module, init: str | Path) -> None:
    """The best weights of run ``init`` into ``model`` (same architecture, strict)."""
    state = torch.load(RunDir(init).checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


def freeze_backbone(model: nn.Module) -> int:
    """Stop gradients outside the classifier head; returns the number of frozen tensors."""
    frozen = backbone_parameters(model)
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)
