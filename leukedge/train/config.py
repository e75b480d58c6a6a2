"""Training configuration: what `leukedge train` was asked to do, saved as config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_LR = {"cnn": 1e-3}
FALLBACK_LR = 3e-4

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

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.model, FALLBACK_LR)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("--epochs must be >= 1")
        if self.batch_size < 1:
            problems.append("--batch-size must be >= 1")
        if self.img_size < 32:
            problems.append("--img-size must be >= 32")
        if self.optimizer not in ("adamw", "adam"):
            problems.append("--optimizer must be adamw or adam")
        if self.split not in ("subject", "official"):
            problems.append("--split must be subject or official")
        if self.workers < 0:
            problems.append("--workers must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))
