"""Records -> preprocessed arrays, the form every evaluation consumes.

Evaluation in training, ONNX parity, INT8 calibration and the bench all take
the same images through ``leukedge.imaging.preprocess`` here, so numbers from
different steps are comparable image for image. Unreadable files are skipped
and listed, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from leukedge.data.records import Record
from leukedge.imaging.images import ImageReadError, read_image
from leukedge.imaging.preprocess import preprocess
from leukedge.spec import ModelSpec


@dataclass
class ImageSet:
    """Preprocessed images with their labels and where they came from."""

    x: np.ndarray  # float32 (N, 3, S, S)
    labels: np.ndarray  # int64 (N,)
    paths: list[str]
    subjects: list[str | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def load_image_set(
    records: Sequence[Record],
    spec: ModelSpec,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Read and preprocess ``records`` (the first ``limit`` of them) for ``spec``."""
    chosen = list(records)[:limit] if limit else list(records)
    x = np.empty((len(chosen), *spec.input_shape), dtype=np.float32)
    labels, paths, subjects, skipped = [], [], [], []
    n = 0
    for i, r in enumerate(chosen):
        try:
            x[n] = preprocess(read_image(r.path), spec)
        except ImageReadError as e:
            skipped.append((r.path, e.reason))
        else:
            labels.append(r.label)
            paths.append(r.path)
            subjects.append(r.subject)
            n += 1
        if progress:
            progress(i + 1, len(chosen))
    return ImageSet(x[:n], np.asarray(labels, dtype=np.int64), paths, subjects, skipped)


def stratified_subset(records: Sequence[Record], size: int, seed: int = 0) -> list[Record]:
    """Up to ``size`` records spread evenly over classes and, within a class, over subjects.

    Used for INT8 calibration on part of the validation split: a calibration set
    drawn from one patient would tune the ranges to one stain.
    """
    if size >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.label, r.subject or r.path), []).append(r)
    queues = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(groups.items())}
    by_label: dict[int, list[tuple[int, str]]] = {}
    for key in queues:
        by_label.setdefault(key[0], []).append(key)
    for keys in by_label.values():
        rng.shuffle(keys)
    out: list[Record] = []
    # Round-robin over classes, then over subjects within the class.
    cursors = dict.fromkeys(by_label, 0)
    while len(out) < size:
        progressed = False
        for label, keys in by_label.items():
            for _ in range(len(keys)):
                key = keys[cursors[label] % len(keys)]
                cursors[label] += 1
                if queues[key]:
                    out.append(queues[key].pop())
                    progressed = True
                    break
            if len(out) >= size:
                break
        if not progressed:
            break
    return out
