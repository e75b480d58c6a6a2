"""The three classifiers, and any timm model by name.

| name         | what                                                        |
|--------------|-------------------------------------------------------------|
| ``cnn``      | 4 blocks of conv-BN-ReLU + max-pool, global pool, FC         |
| ``resnet50`` | timm ``resnet50``                                            |
| ``vit-hybrid`` | timm ``vit_small_r26_s32_224``: ResNet-26 stem + ViT-S/32  |

Every model is built with timm's ``exportable=True`` so its graph has no
dynamic SAME padding where a static form exists, which ONNX and TensorRT need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from leukedge.rundir import RunDir
from leukedge.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from leukedge.train.checkpoint import CheckpointError, load_checkpoint
from leukedge.validate import UsageError

ALIASES = {
    "resnet50": "resnet50",
    "vit-hybrid": "vit_small_r26_s32_224",
}
BUILTIN = ("cnn", "resnet50", "vit-hybrid")


class PretrainedError(RuntimeError):
    """Pretrained weights that cannot be found or do not fit."""


class SimpleCNN(nn.Module):
    """The paper's baseline: small, fast on CPU, a sanity check for the pipeline."""

    def __init__(
        self,
        num_classes: int = 2,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def timm_name(arch: str) -> str | None:
    """The timm model name behind ``arch`` (None for the built-in CNN)."""
    if arch == "cnn":
        return None
    return ALIASES.get(arch, arch)


def _known_timm_name(arch: str) -> str:
    import timm

    name = timm_name(arch)
    if name is None or (
        name not in timm.list_models() and name not in timm.list_models(pretrained=True)
    ):
        raise UsageError(
            f"unknown model {arch!r}: use one of {', '.join(BUILTIN)} or a timm model name "
            "(see timm.list_models())"
        )
    return name


def _timm_accepts_img_size(name: str) -> bool:
    return name.startswith(("vit", "deit", "beit", "eva", "swin", "convit", "cait", "xcit"))


def build_model(
    arch: str, num_classes: int, input_size: int = 224, pretrained: str | None = None
) -> nn.Module:
    """Build a classifier; ``pretrained`` is None, ``"timm"`` (hub weights) or a local file."""
    if arch == "cnn":
        model: nn.Module = SimpleCNN(num_classes)
        if pretrained:
            load_pretrained_file(model, pretrained)
        return model
    import timm

    name = _known_timm_name(arch)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "exportable": True}
    if _timm_accepts_img_size(name):
        kwargs["img_size"] = input_size
    if pretrained == "timm":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # hub unreachable, no weights for this name, ...
            raise PretrainedError(
                f"could not load timm weights for {name} ({type(e).__name__}: {e}). Without "
                "network access, download the weights elsewhere and pass --pretrained PATH "
                "(a .pth/.bin/.safetensors state dict)"
            ) from e
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        load_pretrained_file(model, pretrained)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
            raise PretrainedError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = load_checkpoint(path)
    except CheckpointError as e:
        raise PretrainedError(f"pretrained weights: {e}") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise PretrainedError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained_file(model: nn.Module, path: str | Path) -> list[str]:
    """Load matching tensors from a local file; the classifier head may differ in size.

    Returns the names of parameters left at their initial values, and refuses a file
    that fits less than half of the model (almost certainly the wrong architecture).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < 0.5 * len(own):
        raise PretrainedError(
            f"{path} fits only {len(fitting)} of {len(own)} tensors of this model: "
            "wrong architecture?"
        )
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def _cnn_pixels() -> dict[str, Any]:
    """The CNN is trained from scratch: ImageNet statistics, area/bilinear resize."""
    return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "area"}


def timm_pixels(name: str) -> dict[str, Any]:
    """mean, std and interpolation of timm model ``name``'s pretrained config.

    Read from timm's registry as ``timm.data.resolve_data_config`` resolves them, so
    no weights are needed (the config is the same with ``pretrained=False``).
    """
    import timm
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}")
    data = resolve_data_config(pretrained_cfg=cfg.to_dict())
    return {k: data[k] for k in ("mean", "std", "interpolation")}


def default_spec(
    arch: str,
    classes: list[str],
    positive_class: str,
    input_size: int,
    crop_style: str,
    cell_fraction: float,
    dataset: str | None = None,
) -> ModelSpec:
    """The ModelSpec a new model of ``arch`` is trained with.

    A timm backbone keeps the normalisation and resize filter its weights were
    pretrained with (``vit-hybrid`` has mean = std = 0.5, not ImageNet's).
    """
    pixels = _cnn_pixels() if arch == "cnn" else timm_pixels(_known_timm_name(arch))
    return ModelSpec(
        arch=arch,
        backbone=timm_name(arch),
        classes=list(classes),
        positive_class=positive_class,
        input_size=input_size,
        mean=pixels["mean"],
        std=pixels["std"],
        interpolation=pixels["interpolation"],
        channel_order="RGB",
        resize="stretch",
        crop_style=crop_style,
        cell_fraction=cell_fraction,
        dataset=dataset,
    )


def model_from_spec(spec: ModelSpec) -> nn.Module:
    """An untrained model of the spec's architecture, ready for ``load_state_dict``."""
    return build_model(spec.arch, spec.num_classes, spec.input_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_run_model(run: RunDir, map_location: str = "cpu") -> nn.Module:
    """A run's best checkpoint in eval mode (weights loaded with ``weights_only=True``)."""
    run.require("spec.json", "checkpoint.pt")
    spec = run.spec()
    model = model_from_spec(spec)
    state = load_checkpoint(run.checkpoint_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{run.checkpoint_path} does not hold a state dict")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{run.checkpoint_path} does not fit the {spec.arch} with {spec.num_classes} classes "
            f"that spec.json describes ({first}); the two files are from different runs"
        ) from None
    return model.to(map_location).eval()
