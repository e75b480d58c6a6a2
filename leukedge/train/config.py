"""Training configuration: what `leukedge train` was asked to do, saved as config.json."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from leukedge.spec import CROP_STYLES, STAIN_NORMS
from leukedge.validate import (
    MAX_BATCH,
    MAX_INPUT_SIZE,
    UsageError,
    batch_memory,
    choice,
    device_name,
    finite,
    integer,
    positive,
)

DEFAULT_LR = {"cnn": 1e-3}
FALLBACK_LR = 3e-4
# Fine-tuning (--init) starts from trained weights: a tenth of the from-scratch rate
# keeps what they learned while the new microscope's cells move them.
FINETUNE_LR_FACTOR = 0.1


# How each layout shows a cell: C-NMC cells are segmented on black, the rest are crops.
LAYOUT_CROP_STYLE = {"cnmc": "masked"}


@dataclass
class TrainConfig:
    model: str = "cnn"
    data: str = ""
    out: str = "runs/run"
    epochs: int = 50
    batch_size: int = 32
    img_size: int = 224
    lr: float | None = None  # None: 1e-3 for cnn, 3e-4 for the timm models
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | adam
    warmup_epochs: float = 1.0
    patience: int = 10  # epochs without a better val weighted F1 before stopping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pretrained: str | None = None  # None | "timm" | path to a state dict
    split: str = "subject"  # subject | official
    seed: int = 0
    workers: int = 2
    layout: str = "auto"
    crop_style: str | None = None  # None: from the layout (masked for C-NMC, else context)
    cell_fraction: float | None = None  # None: measured from the training images
    class_weights: bool = True
    label_smoothing: float = 0.0
    grad_clip: float = 5.0
    amp: bool = True  # CUDA only
    eval_batch_size: int = 64
    stain_norm: str = "none"  # none | reinhard | macenko (reference from the train split)
    hed_aug: bool = False  # jitter stain concentrations in HED space while training
    init: str | None = None  # a run dir to fine-tune from (its weights and spec)
    freeze_backbone: bool = False  # with init: train only the classifier head

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        base = DEFAULT_LR.get(self.model, FALLBACK_LR)
        return base * FINETUNE_LR_FACTOR if self.init else base

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise UsageError(f"a training config is a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        """Refuse every value that cannot work, all at once, before anything is written.

        Needs no torch, so a mistyped flag costs no second of import time.
        """
        for name in ("optimizer", "split", "layout", "device", "crop_style", "stain_norm"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, value.strip().lower())
        problems: list[str] = []
        for check in _CHECKS:
            try:
                check(self)
            except UsageError as e:
                problems.append(str(e))
        if problems:
            raise UsageError("; ".join(problems))


SEED_MAX = 2**32 - 1
LAYOUTS = ("auto", "cnmc", "allidb2", "folders", "synthetic")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# What may change when a run is resumed; everything else continues as the run was started.
RESUME_MAY_CHANGE = frozenset({"epochs", "workers", "device", "patience", "eval_batch_size", "out"})


def _check_model(c: TrainConfig) -> None:
    if not isinstance(c.model, str) or not MODEL_NAME.match(c.model):
        raise UsageError(
            f"--model must be cnn, resnet50, vit-hybrid or a timm model name, got {c.model!r}"
        )


def _check_path(value: Any, flag: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{flag} is needed: {what}")


def _check_batch(c: TrainConfig) -> None:
    integer(c.batch_size, "--batch-size", 1, MAX_BATCH)
    integer(c.img_size, "--img-size", 32, MAX_INPUT_SIZE)
    batch_memory(c.batch_size, c.img_size, "--batch-size")
    integer(c.eval_batch_size, "eval_batch_size", 1, MAX_BATCH)
    batch_memory(c.eval_batch_size, c.img_size, "eval_batch_size")


def _optional(check: Callable[[Any], Any], value: Any) -> None:
    if value is not None:
        check(value)


def _check_pretrained(c: TrainConfig) -> None:
    p = c.pretrained
    if p == "timm" and c.model == "cnn":
        raise UsageError("--pretrained timm: the cnn has no hub weights (give a weights file)")
    if p is None or p == "timm":
        return
    if not isinstance(p, str) or not Path(p).expanduser().is_file():
        raise UsageError(
            f"--pretrained takes 'timm' or a weights file (.pth/.pt/.bin/.safetensors); "
            f"{p!r} is neither"
        )


def _check_init(c: TrainConfig) -> None:
    if c.init is None:
        if c.freeze_backbone:
            raise UsageError("--freeze-backbone needs --init RUN (a trained backbone to keep)")
        return
    run = Path(str(c.init)).expanduser()
    if not ((run / "spec.json").is_file() and (run / "checkpoint.pt").is_file()):
        raise UsageError(
            f"--init takes a run dir made by `leukedge train` (spec.json, checkpoint.pt); "
            f"{c.init!r} is not one"
        )


_CHECKS: tuple[Callable[[TrainConfig], Any], ...] = (
    _check_model,
    lambda c: _check_path(c.data, "--data", "the dataset folder"),
    lambda c: _check_path(c.out, "--out", "the run dir to create"),
    lambda c: integer(c.epochs, "--epochs", 1, 100_000),
    _check_batch,
    lambda c: _optional(lambda v: positive(v, "--lr", hi=10.0), c.lr),
    lambda c: finite(c.weight_decay, "--weight-decay", 0.0, 10.0),
    lambda c: choice(c.optimizer, "--optimizer", ("adamw", "adam")),
    lambda c: finite(c.warmup_epochs, "warmup_epochs", 0.0, 100_000.0),
    lambda c: integer(c.patience, "--patience", 1, 100_000),
    lambda c: device_name(c.device, "--device"),
    _check_pretrained,
    lambda c: choice(c.split, "--split", ("subject", "official")),
    lambda c: integer(c.seed, "--seed", 0, SEED_MAX),
    lambda c: integer(c.workers, "--workers", 0, 256),
    lambda c: choice(c.layout, "--layout", LAYOUTS),
    lambda c: _optional(lambda v: choice(v, "--crop-style", CROP_STYLES), c.crop_style),
    lambda c: _optional(lambda v: finite(v, "cell_fraction", 0.05, 1.0), c.cell_fraction),
    lambda c: finite(c.label_smoothing, "label_smoothing", 0.0, 0.5),
    lambda c: finite(c.grad_clip, "grad_clip", 0.0, 1e6),
    lambda c: choice(c.stain_norm, "--stain-norm", STAIN_NORMS),
    _check_init,
)


def resume_differences(
    saved: TrainConfig, given: TrainConfig, explicit: set[str] | None = None
) -> list[str]:
    """How ``given`` differs from the run's ``saved`` config in what --resume cannot change.

    ``explicit``: the fields the user set (on the command line); None means every
    field whose value is not the default. The data folder counts as changed only when
    the run's own folder still exists (a moved dataset may be passed again).
    """
    default = TrainConfig()
    if explicit is None:
        explicit = {
            f.name
            for f in fields(TrainConfig)
            if getattr(given, f.name) != getattr(default, f.name)
        }
    out = []
    for name in sorted(explicit - RESUME_MAY_CHANGE):
        old, new = getattr(saved, name, None), getattr(given, name, None)
        if name == "data":
            if _same_folder(old, new) or not Path(str(old)).expanduser().exists():
                continue
        elif old == new:
            continue
        out.append(f"{name}: the run has {old!r}, now {new!r}")
    return out


def _same_folder(a: Any, b: Any) -> bool:
    try:
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except OSError:
        return str(a) == str(b)
