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


class CheckpointError(RuntimeError):
    """A checkpoint file that is there but cannot be read: truncated, corrupt or foreign."""


def load_training_state(path: str | Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise CheckpointError(f"{path} is not a leukedge training state (last.pt)")
    return state


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` whose failures say the file is corrupt.

    torch's own messages about unpickling advise ``weights_only=False``, which would
    run code from the file: never the advice to give for a file that fails to load.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a crash while it was written?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, zip errors ...
        first = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch weights file "
            f"({type(e).__name__}{': ' + first if first and 'weights_only' not in first else ''})"
            "; retrain the run or restore the file from a backup"
        ) from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel (state_dict keys without ``module.``)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model
