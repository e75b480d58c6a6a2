"""The parity set: images and the PyTorch logits of them, carried with the export.

A device next to the microscope has neither PyTorch nor the dataset, yet must show
that its compiled models answer like the PyTorch original. ``leukedge export``
therefore writes ``export/parity_set.npz``: a sample of the validation and test
splits stored as the 8-bit BGR crops the one preprocessing function starts from,
with labels, subjects, file names and the PyTorch FP32 logits of exactly those
crops, computed on the training machine. Any backend on any machine runs the
crops through its own ``preprocess`` and is compared with the recorded logits.

``export.json`` holds the file's sha256: a set that was changed after export is
refused, so the reference cannot drift silently. Torch-free; the writer that runs
PyTorch lives in :mod:`leukedge.export.parityset`.

File format (``np.load(..., allow_pickle=False)``; no object arrays)::

    crops     uint8 (N, H, W, 3)   BGR, zero-padded; crop i is crops[i, :h_i, :w_i]
    sizes     int32 (N, 2)         (h_i, w_i)
    labels    int64 (N,)           class index into meta["classes"]
    subjects  str (N,)             subject id, "" where the layout has none
    names     str (N,)             file path relative to the dataset root
    splits    str (N,)             "val" or "test"
    logits    float32 (N, C)       PyTorch FP32 logits of preprocess(crop i)
    digests   uint8 (N, 16)        sha256 (first 16 bytes) of each preprocessed float32 tensor
    meta      str ()               JSON: format, version, classes, input_size, side, images,
                                   checkpoint_sha256, versions, device, created
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.artifacts import EXPORT_RECORD, export_dir_of, read_export_record
from leukedge.io import atomic_path, sha256_file
from leukedge.spec import ModelSpec

PARITY_SET_FILE = "parity_set.npz"
RECORD_KEY = "parity_set"  # its entry in export.json
FORMAT = "leukedge.parityset"
VERSION = 1
ARRAYS = ("crops", "sizes", "labels", "subjects", "names", "splits", "logits", "digests", "meta")
REFERENCE_NAME = "torch (recorded at export)"


class ParitySetError(ValueError):
    """A parity set that is missing, changed since export or does not fit the model."""


@dataclass
class ParitySet:
    """Stored crops, their labels and origin, and PyTorch's logits of them."""

    crops: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    subjects: list[str | None]
    names: list[str]
    splits: list[str]
    logits: np.ndarray
    digests: np.ndarray  # uint8 (N, 16): the export machine's preprocessed tensors
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def versions(self) -> dict[str, str | None]:
        """Package versions of the machine that recorded the logits (torch, timm, ...)."""
        return dict(self.meta.get("versions") or {})

    def crop(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.sizes[i])
        return self.crops[i, :h, :w]

    def head(self, n: int | None) -> ParitySet:
        """The first ``n`` images: the set is stored in stratified order, so still stratified."""
        if n is None or n >= len(self):
            return self
        return ParitySet(
            self.crops[:n],
            self.sizes[:n],
            self.labels[:n],
            self.subjects[:n],
            self.names[:n],
            self.splits[:n],
            self.logits[:n],
            self.digests[:n],
            self.meta,
            self.path,
            self.sha256,
        )

    def inputs(self, spec: ModelSpec) -> np.ndarray:
        """float32 (N, 3, S, S): every crop through this machine's ``preprocess``."""
        from leukedge.imaging.preprocess import preprocess

        self.check_spec(spec)
        x = np.empty((len(self), *spec.input_shape), dtype=np.float32)
        for i in range(len(self)):
            x[i] = preprocess(self.crop(i), spec)
        return x

    def preprocess_mismatches(self, x: np.ndarray) -> int:
        """How many of ``inputs()``'s tensors differ from the export machine's, bit for bit.

        Zero on the training machine; elsewhere another OpenCV can resize differently,
        which parity then includes, as it would in use.
        """
        return int((input_digests(x) != self.digests[: len(x)]).any(axis=1).sum())

    def check_spec(self, spec: ModelSpec) -> None:
        """Refuse a set recorded for another model (classes or input size differ)."""
        where = self.path or PARITY_SET_FILE
        if self.classes != list(spec.classes):
            raise ParitySetError(
                f"{where} was recorded for classes {self.classes}, the model has "
                f"{list(spec.classes)}: re-export the run (leukedge export RUN)"
            )
        if self.logits.shape[1] != spec.num_classes:
            raise ParitySetError(f"{where}: logits have {self.logits.shape[1]} classes")

    def describe(self) -> dict[str, Any]:
        """What a report says about the set: file, sha256, size, origin and recording versions."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {
            "file": str(self.path) if self.path else PARITY_SET_FILE,
            "sha256": self.sha256,
            "images": len(self),
            "side": self.meta.get("side"),
            "class_counts": {c: int(n) for c, n in zip(self.classes, counts, strict=False)},
            "split_counts": {s: self.splits.count(s) for s in sorted(set(self.splits))},
            "recorded": {
                "created": self.meta.get("created"),
                "device": self.meta.get("device"),
                "checkpoint_sha256": self.meta.get("checkpoint_sha256"),
                "versions": self.versions,
            },
        }


def input_digests(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 16): a digest of each preprocessed tensor, to compare machines' preprocessing."""
    out = np.zeros((len(x), 16), dtype=np.uint8)
    for i, t in enumerate(x):
        digest = hashlib.sha256(np.ascontiguousarray(t, dtype=np.float32).tobytes()).digest()
        out[i] = np.frombuffer(digest[:16], dtype=np.uint8)
    return out


def pack_crops(crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Crops of any (h, w) as one zero-padded uint8 array and their sizes."""
    h = max((c.shape[0] for c in crops), default=0)
    w = max((c.shape[1] for c in crops), default=0)
    out = np.zeros((len(crops), h, w, 3), dtype=np.uint8)
    sizes = np.zeros((len(crops), 2), dtype=np.int32)
    for i, c in enumerate(crops):
        out[i, : c.shape[0], : c.shape[1]] = c
        sizes[i] = c.shape[:2]
    return out, sizes


# ---------------------------------------------------------------- writing and reading


def save_parity_set(path: str | Path, ps: ParitySet) -> str:
    """Write ``ps`` atomically (compressed npz); returns the file's sha256."""
    validate(ps)
    arrays: dict[str, Any] = {
        "crops": ps.crops,
        "sizes": ps.sizes.astype(np.int32),
        "labels": ps.labels.astype(np.int64),
        "subjects": np.asarray([s or "" for s in ps.subjects], dtype=str),
        "names": np.asarray(ps.names, dtype=str),
        "splits": np.asarray(ps.splits, dtype=str),
        "logits": ps.logits.astype(np.float32),
        "digests": ps.digests.astype(np.uint8),
        "meta": np.asarray(json.dumps({**ps.meta, "format": FORMAT, "version": VERSION})),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return sha256_file(path)


def read_parity_set(path: str | Path, expected_sha256: str | None = None) -> ParitySet:
    """Read and check a parity set file; ``expected_sha256`` refuses a changed file."""
    path = Path(path)
    if not path.is_file():
        raise ParitySetError(f"no parity set at {path}")
    sha = sha256_file(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ParitySetError(
            f"{path} is not the parity set this export recorded: its sha256 is {sha[:12]}…, "
            f"{EXPORT_RECORD} says {expected_sha256[:12]}… The file was changed or replaced "
            "after export, so its reference logits cannot be trusted. Copy export/ again from "
            "the training machine, or re-export there (leukedge export RUN)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ARRAYS if k not in data.files]
            if missing:
                raise ParitySetError(f"{path} is not a parity set: no {', '.join(missing)}")
            loaded = {k: data[k] for k in ARRAYS}
        meta = json.loads(str(loaded["meta"]))
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, ParitySetError):
            raise
        raise ParitySetError(f"{path} is not a readable parity set: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ParitySetError(f"{path} is not a leukedge parity set (format {meta!r:.60})")
    if int(meta.get("version", 0)) > VERSION:
        raise ParitySetError(
            f"{path} has parity-set version {meta.get('version')}, newer than this leukedge "
            f"reads ({VERSION}): upgrade leukedge"
        )
    ps = ParitySet(
        crops=loaded["crops"],
        sizes=loaded["sizes"],
        labels=loaded["labels"].astype(np.int64),
        subjects=[str(s) or None for s in loaded["subjects"]],
        names=[str(s) for s in loaded["names"]],
        splits=[str(s) for s in loaded["splits"]],
        logits=loaded["logits"],
        digests=loaded["digests"],
        meta=meta,
        path=path,
        sha256=sha,
    )
    validate(ps)
    return ps


def validate(ps: ParitySet) -> None:
    """Shapes, types and ranges that every reader relies on."""
    n = len(ps.labels)
    problems = []
    if ps.crops.dtype != np.uint8 or ps.crops.ndim != 4 or ps.crops.shape[3] != 3:
        problems.append(f"crops must be uint8 (N, H, W, 3), got {ps.crops.dtype} {ps.crops.shape}")
    if ps.sizes.shape != (n, 2) or (n and (ps.sizes.min() < 1)):
        problems.append(f"sizes must be (N, 2) >= 1, got {ps.sizes.shape}")
    elif n and ps.crops.ndim == 4 and (ps.sizes.max(axis=0) > ps.crops.shape[1:3]).any():
        problems.append("sizes exceed the stored crops")
    lengths = {len(ps.crops), len(ps.subjects), len(ps.names), len(ps.splits), len(ps.logits)}
    lengths.add(len(ps.digests))
    if ps.digests.dtype != np.uint8 or ps.digests.shape[1:] != (16,):
        problems.append(f"digests must be uint8 (N, 16), got {ps.digests.dtype} {ps.digests.shape}")
    if lengths != {n}:
        problems.append(f"arrays of different lengths {sorted(lengths | {n})}")
    classes = ps.meta.get("classes") or []
    if ps.logits.ndim != 2 or ps.logits.shape[1] != len(classes):
        problems.append(f"logits {ps.logits.shape} do not match the classes {classes}")
    elif not np.isfinite(ps.logits).all():
        problems.append("logits are not all finite")
    if n and (ps.labels.min() < 0 or ps.labels.max() >= max(1, len(classes))):
        problems.append("labels outside the classes")
    if n == 0:
        problems.append("no images")
    if problems:
        raise ParitySetError(f"invalid parity set {ps.path or ''}: " + "; ".join(problems))


# ---------------------------------------------------------------- beside an export


def parity_set_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The parity set's entry in ``export.json`` (None when the export made none)."""
    entry = read_export_record(model_dir).get(RECORD_KEY)
    return entry if isinstance(entry, dict) and entry.get("file") else None


def has_parity_set(model_dir: str | Path) -> bool:
    entry = parity_set_record(model_dir)
    return entry is not None and (export_dir_of(model_dir) / entry["file"]).is_file()


def load_parity_set(model_dir: str | Path, spec: ModelSpec | None = None) -> ParitySet:
    """The parity set of a run dir or export folder, checked against ``export.json``."""
    export = export_dir_of(model_dir)
    entry = parity_set_record(model_dir)
    if entry is None:
        raise ParitySetError(
            f"{export / EXPORT_RECORD} lists no parity set: export the run with this "
            "leukedge on the training machine (leukedge export RUN, with its data and "
            "checkpoint there) and copy export/ again"
        )
    if not entry.get("sha256"):
        raise ParitySetError(f"{export / EXPORT_RECORD} records no sha256 for the parity set")
    ps = read_parity_set(export / entry["file"], expected_sha256=entry["sha256"])
    if spec is not None:
        ps.check_spec(spec)
    return ps
