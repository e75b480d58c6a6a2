"""The classifier's penultimate features next to its logits, from one forward pass.

The domain-shift score (Lee et al. 2018) measures how far a cell's penultimate
features lie from the training cells'. Training computes them to fit the score, and
the exported ONNX file returns them as a second output (``features``), so the runtime
and TensorRT get them from the same pass that gives the logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def classifier_head(model: nn.Module) -> nn.Module:
    """The last layer, features -> logits (the built-in CNN's head, a timm model's classifier)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head  # SimpleCNN: Flatten, Dropout, Linear
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise TypeError(f"{type(model).__name__} has no known classifier head")
    head_module = get()
    if not isinstance(head_module, nn.Module):
        raise TypeError(f"{type(model).__name__}.get_classifier() is not a module")
    return head_module


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, D) features the classifier head turns into logits."""
    head, body_fn = getattr(model, "forward_head", None), getattr(model, "forward_features", None)
    if callable(head) and callable(body_fn):  # timm
        out = head(body_fn(x), pre_logits=True)
        assert isinstance(out, torch.Tensor)
        return out
    pool = getattr(model, "pool", None)
    body = getattr(model, "features", None)
    if pool is None or body is None:
        raise TypeError(f"cannot find the penultimate features of {type(model).__name__}")
    return torch.flatten(pool(body(x)), 1)


class WithFeatures(nn.Module):
    """``model`` answering (logits, penultimate features); logits equal ``model(x)`` in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = classifier_head(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = penultimate(self.model, x)
        return self.head(f), f


@contextlib.contextmanager
def answering_features(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model(x)`` returns (logits, features), from one pass.

    For export: unlike the :class:`WithFeatures` wrapper, the module tree stays as it
    is, so exported node names keep their module paths (``head/Gemm``, ``norm/...``)
    that INT8 exclusions and TensorRT layer names rely on.
    """
    head = classifier_head(model)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = penultimate(model, x)
        return head(f), f

    own = model.__dict__  # an instance attribute shadows the class's forward
    had, previous = "forward" in own, own.get("forward")
    own["forward"] = forward
    try:
        yield model
    finally:
        if had:
            own["forward"] = previous
        else:
            del own["forward"]


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside the classifier head (what ``--freeze-backbone`` keeps fixed)."""
    head = {id(p) for p in classifier_head(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]
