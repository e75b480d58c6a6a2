"""Checkpoints that survive a kill and load with ``torch.load(weights_only=True)``.

``checkpoint.pt`` holds the best weights only (a plain state_dict), what export
and evaluation need. ``last.pt`` holds everything ``--resume`` needs to continue
exactly where the last finished epoch left off: model, optimizer, schedule,
early-stopping state, history and the torch RNG state. Only tensors and plain
Python values go in, so the safe loader accepts them. Both are saved through a
file object, so a full disk is reported as one (``torch.save`` to a path says
"unexpected pos" instead) and no partial file is left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from leukedge.io import atomic_file


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    with atomic_file(path) as f:
        torch.save(state, f)


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_file(path) as f:
        torch.save(state, f)


def load_training_state(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel (state_dict keys without ``module.``)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model
