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

import os
from pathlib import Path
from typing import Any

from leukedge.data.layouts import load_dataset
from leukedge.data.records import Dataset, DatasetError
from leukedge.data.splits import Split, load_split, read_split_file
from leukedge.io import read_json
from leukedge.spec import ModelSpec


class RunDirError(ValueError):
    """A run directory that is missing something a step needs (a usage error: exit 2)."""

    exit_code = 2


class CorruptRunError(RunDirError):
    """A run file that is there but unreadable (a failure: exit 1)."""

    exit_code = 1


class RunExistsError(FileExistsError):
    """A run dir that already holds a run; refusing protects it from being overwritten."""

    exit_code = 2


# What a run that never finished its first epoch can leave: a new run may replace these.
UNFINISHED_RUN_FILES = frozenset(
    {"config.json", "split.json", "history.csv", "curves.png", "checkpoint.pt", "last.pt"}
)


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

    def is_run(self) -> bool:
        """Whether a run has trained here: spec.json is written last, after the first epoch."""
        return self.spec_path.is_file()

    def check_target(self, resume: bool) -> None:
        """Refuse an --out that training would damage or cannot use, before anything is written.

        A new run needs a new folder, an empty one, or the leftovers of a run that
        never finished an epoch; a folder holding anything else is not overwritten.
        """
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {p} is a file, not a folder")
        if resume:
            # spec.json without last.pt is a run prepared to start (a --folds fold).
            if not self.is_run():
                raise RunDirError(
                    f"nothing to resume in {p}: no finished epoch there (spec.json and last.pt "
                    "are written after the first one); start the run again without --resume"
                )
            return
        if self.is_run():
            raise RunExistsError(
                f"{p} already holds a run; pass --resume to continue it or choose another --out"
            )
        if p.is_dir():
            foreign = sorted(
                e.name
                for e in p.iterdir()
                if e.name not in UNFINISHED_RUN_FILES and not e.name.startswith(".")
            )
            if foreign:
                shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
                raise RunDirError(
                    f"--out {p} is not empty and is not a leukedge run (it holds {shown}); "
                    "training would overwrite files there: choose a new or empty folder"
                )
        _check_writable(p)

    def config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            return {}
        try:
            data = read_json(self.config_path)
        except (OSError, ValueError) as e:
            raise CorruptRunError(f"{self.config_path} is unreadable ({e})") from None
        if not isinstance(data, dict):
            raise CorruptRunError(f"{self.config_path} is not a JSON object")
        return data

    def dataset_and_split(self, data: str | Path | None = None) -> tuple[Dataset, Split]:
        """The run's dataset (or ``data`` laid out the same way) and its saved split."""
        self.require("split.json")
        saved = read_split_file(self.split_path)
        if not data and not saved.get("data_root"):
            raise RunDirError(f"{self.split_path} names no data folder; pass --data PATH")
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
        if dataset.classes != saved.get("classes"):
            raise RunDirError(
                f"classes of {root} {dataset.classes} differ from the run's {saved.get('classes')}"
            )
        return dataset, load_split(self.split_path, dataset)


def _check_writable(path: Path) -> None:
    """Refuse a folder that cannot be created or written (the nearest existing one decides)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"cannot create {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write in {existing} (permission denied): choose another --out")
