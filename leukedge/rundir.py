"""The run directory: the contract between train, export, build-engine and bench.

```
runs/<name>/
  spec.json         ModelSpec
  checkpoint.pt     best weights, a state_dict only (torch.load(weights_only=True))
  last.pt           full training state for --resume (weights_only-safe types only)
  split.json        every file with its split and subject
  config.json       the training arguments
  history.csv       one row per epoch
  metrics.json      test-split metrics of the best checkpoint
  curves.png, confusion.png
  export/  engines/  bench/    filled by later steps
```
Torch-free: the weights are loaded by :func:`leukedge.train.models.load_run_model`,
so the bench can read run dirs on a machine without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukedge.data.layouts import load_dataset
from leukedge.data.records import Dataset, DatasetError
from leukedge.data.splits import Split, load_split
from leukedge.io import read_json
from leukedge.spec import ModelSpec


class RunDirError(ValueError):
    """A run directory that is missing something a step needs."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    spec_path = property(lambda self: self.path / "spec.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    last_path = property(lambda self: self.path / "last.pt")
    split_path = property(lambda self: self.path / "split.json")
    config_path = property(lambda self: self.path / "config.json")
    history_path = property(lambda self: self.path / "history.csv")
    metrics_path = property(lambda self: self.path / "metrics.json")
    export_dir = property(lambda self: self.path / "export")
    bench_dir = property(lambda self: self.path / "bench")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def require(self, *names: str) -> None:
        missing = [n for n in names if not (self.path / n).exists()]
        if missing:
            raise RunDirError(
                f"{self.path} is not a complete run dir: missing {', '.join(missing)} "
                "(create one with `leukedge train`)"
            )

    def spec(self) -> ModelSpec:
        self.require("spec.json")
        return ModelSpec.load(self.spec_path)

    def config(self) -> dict[str, Any]:
        return read_json(self.config_path) if self.config_path.is_file() else {}

    def dataset_and_split(self, data: str | Path | None = None) -> tuple[Dataset, Split]:
        """The run's dataset (or ``data`` laid out the same way) and its saved split."""
        self.require("split.json")
        saved = read_json(self.split_path)
        root = Path(data) if data else Path(saved["data_root"])
        if not root.exists():
            raise RunDirError(
                f"the run's data folder {root} is not there any more; pass --data PATH"
            )
        layout = saved.get("layout", "auto")
        try:
            dataset = load_dataset(root, layout)
        except DatasetError:  # another layout of the same classes given with --data
            dataset = load_dataset(root)
        if dataset.classes != saved["classes"]:
            raise RunDirError(
                f"classes of {root} {dataset.classes} differ from the run's {saved['classes']}"
            )
        return dataset, load_split(self.split_path, dataset)
