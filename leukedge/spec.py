"""ModelSpec: the one source of truth for what a model expects.

A ModelSpec travels with every artifact (``spec.json`` in a run dir, the
``leukedge.spec`` key of ONNX ``metadata_props``, the sidecar JSON of a TensorRT
engine) so that a runtime given only an artifact knows its classes and exactly
how to turn a cell image into the input tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from leukedge.validate import MAX_INPUT_SIZE

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
# Normalisation of pixels in [0, 1]: a std below MIN_STD turns them into huge numbers.
MAX_ABS_MEAN = 10.0
MIN_STD, MAX_STD = 1e-3, 100.0
STAIN_NORMS = ("none", "reinhard", "macenko")
FEATURES_NAME = "features"  # optional second ONNX output: the penultimate features


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

    ``stain_norm`` re-colours every crop to ``stain_reference`` (statistics of the
    training split) after the resize, before scaling. ``temperature`` divides the
    logits before softmax (fitted on the validation split, so probabilities mean what
    they say); ``operating_point`` is the classifier's measured sensitivity and
    specificity on held-out cells, which the runtime uses to correct blast counts.
    Specs written before these fields existed load with the neutral defaults.
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
    stain_norm: str = "none"
    stain_reference: dict[str, Any] | None = None
    temperature: float = 1.0
    operating_point: dict[str, Any] | None = None
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.classes = list(self.classes)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.cell_fraction = float(self.cell_fraction)
        self.temperature = float(self.temperature)
        self.validate()

    def _check_types(self) -> None:
        """Refuse values of the wrong type (a spec may come from any JSON) before using them."""
        for name in ("arch", "positive_class", *_CHOICES):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.arch.strip():
            raise SpecError("arch must not be empty")
        for name in ("backbone", "dataset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SpecError(f"{name} must be a string or null, got {getattr(self, name)!r}")
        if not isinstance(self.classes, (list, tuple)) or not all(
            isinstance(c, str) and c.strip() for c in self.classes
        ):
            raise SpecError(f"classes must be a list of non-empty names, got {self.classes!r}")
        for name in ("input_size", "version"):
            if not _is_int(getattr(self, name)):
                raise SpecError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3:
                raise SpecError(f"{name} needs 3 numbers (one per channel), got {values!r}")
            if not all(_is_number(v) for v in values):
                raise SpecError(f"{name} needs 3 numbers (one per channel), got {values!r}")
        if not _is_number(self.cell_fraction):
            raise SpecError(f"cell_fraction must be a number, got {self.cell_fraction!r}")
        if not _is_number(self.temperature):
            raise SpecError(f"temperature must be a number, got {self.temperature!r}")
        for name in ("stain_reference", "operating_point"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise SpecError(f"{name} must be an object or null, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            raise SpecError(f"extra must be an object, got {self.extra!r}")

    def validate(self) -> None:
        """Refuse any value that would give wrong or non-finite model inputs."""
        if len(self.classes) < 2:
            raise SpecError(f"a classifier needs at least 2 classes, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise SpecError(f"duplicate class names in {self.classes}")
        if self.positive_class not in self.classes:
            raise SpecError(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        if not 8 <= self.input_size <= MAX_INPUT_SIZE:
            raise SpecError(f"input_size must be in [8, {MAX_INPUT_SIZE}], got {self.input_size}")
        if not all(math.isfinite(v) and abs(v) <= MAX_ABS_MEAN for v in self.mean):
            raise SpecError(f"mean must be 3 finite numbers in [-10, 10], got {list(self.mean)}")
        if not all(math.isfinite(v) and MIN_STD <= v <= MAX_STD for v in self.std):
            raise SpecError(
                f"std must be 3 finite numbers in [{MIN_STD:g}, {MAX_STD:g}], got {list(self.std)}"
            )
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                raise SpecError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        if not (math.isfinite(self.cell_fraction) and 0.05 <= self.cell_fraction <= 1.0):
            raise SpecError(f"cell_fraction must be in [0.05, 1], got {self.cell_fraction}")
        if self.version < 1:
            raise SpecError(f"spec version must be >= 1, got {self.version}")
        if self.stain_norm != "none" and not self.stain_reference:
            raise SpecError(f"stain_norm {self.stain_norm!r} needs stain_reference statistics")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise SpecError(f"temperature must be a positive number, got {self.temperature}")
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
        from leukedge.io import json_text

        return json_text(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from any mapping (a JSON object); anything unusable raises SpecError."""
        if not isinstance(data, dict):
            raise SpecError(f"a spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted((k for k in data if k not in known), key=str)
        kwargs = {k: v for k, v in data.items() if k in known}
        if "arch" not in kwargs:
            raise SpecError("spec has no 'arch'")
        spec = cls(**kwargs)
        if unknown:  # keep fields from newer writers instead of dropping them silently
            kept = spec.extra.get("unknown_fields")
            kept = dict(kept) if isinstance(kept, dict) else {}
            kept.update({str(k): data[k] for k in unknown})
            spec.extra["unknown_fields"] = kept
        return spec

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, NaN tokens
            raise SpecError(f"spec is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        from leukedge.io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no spec at {path}")
        try:
            return cls.from_json(path.read_bytes())
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None


_CHOICES = {
    "channel_order": CHANNEL_ORDERS,
    "resize": RESIZE_RULES,
    "interpolation": INTERPOLATIONS,
    "crop_style": CROP_STYLES,
    "stain_norm": STAIN_NORMS,
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
