"""ModelSpec: the one source of truth for what a model expects.

A ModelSpec travels with every artifact (``spec.json`` in a run dir, the
``leukedge.spec`` key of ONNX ``metadata_props``, the sidecar JSON of a TensorRT
engine) so that a runtime given only an artifact knows its classes and exactly
how to turn a cell image into the input tensor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SPEC_VERSION = 1
ONNX_METADATA_KEY = "leukedge.spec"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_RULES = ("stretch", "letterbox", "center_crop")
# "area": area averaging when shrinking, bilinear when enlarging (what OpenCV advises);
# "bilinear"/"bicubic": that filter both ways, as timm's pretrained configs name them.
INTERPOLATIONS = ("area", "bilinear", "bicubic")
CROP_STYLES = ("masked", "context")
CHANNEL_ORDERS = ("RGB", "BGR")


class SpecError(ValueError):
    """A ModelSpec that cannot be used (unknown field value, missing metadata)."""


@dataclass
class ModelSpec:
    """What a classifier expects and what it answers.

    ``mean``/``std`` are per channel in the order of ``channel_order`` and apply to
    pixels scaled to [0, 1]. ``interpolation`` is the filter of the resize to the
    input size (pretrained timm backbones name theirs). ``crop_style`` says how the training images showed a
    cell (``masked``: the cell on black as in C-NMC; ``context``: a square crop with
    its surroundings as in ALL-IDB2) and ``cell_fraction`` how large the cell was
    relative to the crop side, so the runtime crops cells from camera frames the
    way the model saw them.
    """

    arch: str
    classes: list[str] = field(default_factory=lambda: ["hem", "all"])
    positive_class: str = "all"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    resize: str = "stretch"
    interpolation: str = "area"
    crop_style: str = "masked"
    cell_fraction: float = 0.6
    backbone: str | None = None
    dataset: str | None = None
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        if len(self.classes) < 2:
            raise SpecError(f"a classifier needs at least 2 classes, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise SpecError(f"duplicate class names in {self.classes}")
        if self.positive_class not in self.classes:
            raise SpecError(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        if self.input_size < 8:
            raise SpecError(f"input_size must be >= 8, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError("mean and std need 3 values each, std > 0")
        if self.channel_order not in CHANNEL_ORDERS:
            raise SpecError(f"channel_order must be one of {CHANNEL_ORDERS}")
        if self.resize not in RESIZE_RULES:
            raise SpecError(f"resize must be one of {RESIZE_RULES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.crop_style not in CROP_STYLES:
            raise SpecError(f"crop_style must be one of {CROP_STYLES}, got {self.crop_style!r}")
        if not 0.05 <= self.cell_fraction <= 1.0:
            raise SpecError(f"cell_fraction must be in [0.05, 1], got {self.cell_fraction}")
        if self.version > SPEC_VERSION:
            raise SpecError(
                f"spec version {self.version} is newer than this leukedge understands "
                f"({SPEC_VERSION}); upgrade leukedge"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        return (3, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        kwargs = {k: v for k, v in data.items() if k in known}
        if "arch" not in kwargs:
            raise SpecError("spec has no 'arch'")
        spec = cls(**kwargs)
        if unknown:  # keep fields from newer writers instead of dropping them silently
            spec.extra.setdefault("unknown_fields", {}).update({k: data[k] for k in unknown})
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise SpecError("spec JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        from leukedge.io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no spec at {path}")
        return cls.from_json(path.read_text())
