"""What runs next to the microscope: find cells, classify them, count them. No torch.

```python
from leukedge.runtime import Classifier, CellFinder
clf = Classifier.load("runs/vit/export/model.int8.onnx")
cells = CellFinder.from_spec(clf.spec).find(frame_bgr)
probs = clf.predict([c.crop for c in cells])     # (N, num_classes) probabilities
```

Names are imported on first use, so ``import leukedge.runtime`` stays quick on a
Jetson and pulls in ONNX Runtime only when a classifier is made.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leukedge.runtime.cells import Cell, CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.pipeline import run_pipeline
    from leukedge.runtime.sources import Frame, open_source

_EXPORTS = {
    "Classifier": "leukedge.runtime.classifier",
    "CellFinder": "leukedge.runtime.cells",
    "Cell": "leukedge.runtime.cells",
    "Frame": "leukedge.runtime.sources",
    "open_source": "leukedge.runtime.sources",
    "run_pipeline": "leukedge.runtime.pipeline",
}

__all__ = ["Cell", "CellFinder", "Classifier", "Frame", "open_source", "run_pipeline"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'leukedge.runtime' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
