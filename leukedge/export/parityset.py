"""Write ``export/parity_set.npz``: the crops and PyTorch logits a device checks itself against.

Runs on the training machine, where PyTorch and the dataset are: a sample of the
validation and test splits, spread over classes and subjects, is read, each image
shrunk so its short side is at most ``side`` (never below the model's input size,
never enlarged), and the model's FP32 logits are computed from exactly those
stored crops through the one ``preprocess``. Each exported ONNX file is measured
on the same set, so a device's figures can be compared with the workstation's
digit for digit. The format is :mod:`leukedge.runtime.parityset`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leukedge.artifacts import read_export_record
from leukedge.data.records import DatasetError, Record
from leukedge.imaging.images import ImageReadError, read_image
from leukedge.io import is_disk_full
from leukedge.machine import package_version
from leukedge.rundir import RunDir, RunDirError
from leukedge.runtime.parityset import (
    PARITY_SET_FILE,
    RECORD_KEY,
    ParitySet,
    ParitySetError,
    input_digests,
    pack_crops,
    read_parity_set,
    save_parity_set,
)
from leukedge.spec import ModelSpec

DEFAULT_IMAGES = 256
DEFAULT_SIDE = 128  # short side of the stored crops, raised to the model's input size
SPLITS = ("val", "test")
VERSION_PACKAGES = ("torch", "timm", "leukedge", "numpy", "onnxruntime")

Progress = Callable[[str, int, int], None]


def stratified_order(records: Sequence[Record], seed: int = 0) -> list[Record]:
    """Every record, ordered round-robin over classes and, within a class, over subjects.

    Any prefix of the result is spread as evenly as the data allows, so ``--parity-images``
    on the device (the first N) is still a stratified sample.
    """
    rng = np.random.default_rng(seed)
    groups: dict[int, dict[str, list[Record]]] = {}
    for r in sorted(records, key=lambda r: r.path):
        groups.setdefault(r.label, {}).setdefault(r.subject or r.path, []).append(r)
    queues: dict[int, list[list[Record]]] = {}
    for label in sorted(groups):
        subjects = [groups[label][k] for k in sorted(groups[label])]
        subjects = [[s[i] for i in rng.permutation(len(s))] for s in subjects]
        queues[label] = [subjects[i] for i in rng.permutation(len(subjects))]
    out: list[Record] = []
    cursor = dict.fromkeys(queues, 0)
    while any(any(q) for q in queues.values()):
        for label, subjects in queues.items():
            for _ in range(len(subjects)):
                queue = subjects[cursor[label] % len(subjects)]
                cursor[label] += 1
                if queue:
                    out.append(queue.pop(0))
                    break
    return out


def stored_crop(image_bgr: np.ndarray, side: int) -> np.ndarray:
    """The image shrunk (area filter) so its short side is ``side``; smaller ones kept as read."""
    h, w = image_bgr.shape[:2]
    scale = side / min(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(image_bgr)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)


def library_versions() -> dict[str, str | None]:
    """Versions that decide the recorded logits and the preprocessing."""
    out = {p: package_version(p) for p in VERSION_PACKAGES}
    out["opencv"] = cv2.__version__
    return out


def build_parity_set(
    run: RunDir,
    spec: ModelSpec,
    model: Any,
    images: int = DEFAULT_IMAGES,
    side: int | None = None,
    data: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ParitySet, list[str]]:
    """Read ``images`` crops of the val and test splits and record PyTorch's logits of them."""
    from leukedge.export.parity import torch_logits

    side = max(spec.input_size, side or DEFAULT_SIDE)
    dataset, split = run.dataset_and_split(data)
    records = [r for s in SPLITS for r in split.records(dataset, s)]
    which = {r.path: s for s in SPLITS for r in split.records(dataset, s)}
    crops: list[np.ndarray] = []
    chosen: list[Record] = []
    skipped: list[str] = []
    for r in stratified_order(records):
        if len(chosen) >= images:
            break
        try:
            crops.append(stored_crop(read_image(r.path), side))
        except ImageReadError as e:
            skipped.append(f"{dataset.relpath(r.path)}: {e.reason}")
            continue
        chosen.append(r)
        if progress:
            progress(len(chosen), min(images, len(records)))
    if not chosen:
        raise DatasetError(f"no readable image in the {' and '.join(SPLITS)} splits")
    packed, sizes = pack_crops(crops)
    ps = ParitySet(
        crops=packed,
        sizes=sizes,
        labels=np.asarray([r.label for r in chosen], dtype=np.int64),
        subjects=[r.subject for r in chosen],
        names=[dataset.relpath(r.path) for r in chosen],
        splits=[which[r.path] for r in chosen],
        logits=np.zeros((len(chosen), spec.num_classes), dtype=np.float32),
        digests=np.zeros((len(chosen), 16), dtype=np.uint8),
        meta={
            "classes": list(spec.classes),
            "input_size": spec.input_size,
            "side": side,
            "images": len(chosen),
            "checkpoint_sha256": checkpoint_sha256,
            "versions": library_versions(),
            "device": "cpu",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    x = ps.inputs(spec)
    ps.logits = torch_logits(model, x).astype(np.float32)
    ps.digests = input_digests(x)
    notes = [f"parity set: {len(skipped)} unreadable image(s) left out"] if skipped else []
    return ps, notes


def onnx_parity(
    ps: ParitySet, export_dir: Path, files: dict[str, dict[str, Any]], spec: ModelSpec
) -> dict[str, dict[str, Any]]:
    """Each exported file in ONNX Runtime on the set, against the recorded logits."""
    from leukedge.export.parity import compare, onnx_logits

    x = ps.inputs(spec)
    out = {}
    for precision, entry in files.items():
        path = export_dir / str(entry.get("file", ""))
        if path.is_file():
            out[precision] = compare(ps.logits, onnx_logits(path, x, spec), ps.labels, spec)
    return out


def write_parity_set(
    run: RunDir,
    spec: ModelSpec,
    model: Any,
    record: dict[str, Any],
    images: int = DEFAULT_IMAGES,
    side: int | None = None,
    data: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Write the parity set beside the export and enter it into ``record`` (export.json).

    ``record``'s files are measured on the set and its warnings get any problem.
    Without the data, a set recorded earlier from the same checkpoint is kept;
    ``images`` 0 removes the set. Returns the entry (None when there is no set).
    """
    entry = _write(run, spec, model, record, images, side, data, progress)
    if entry is None:
        record.pop(RECORD_KEY, None)
    else:
        record[RECORD_KEY] = entry
    return entry


def _write(
    run: RunDir,
    spec: ModelSpec,
    model: Any,
    record: dict[str, Any],
    images: int,
    side: int | None,
    data: str | Path | None,
    progress: Progress | None,
) -> dict[str, Any] | None:
    export_dir = run.export_dir
    path = export_dir / PARITY_SET_FILE
    warnings: list[str] = record.setdefault("warnings", [])
    tell = progress or (lambda stage, done, total: None)
    checkpoint = record.get("checkpoint_sha256")
    if images < 1:
        path.unlink(missing_ok=True)
        return None
    try:
        ps, notes = build_parity_set(
            run,
            spec,
            model,
            images,
            side,
            data,
            checkpoint,
            lambda i, n: tell("parity set", i, n),
        )
        warnings += notes
        sha = save_parity_set(path, ps)
        ps.path, ps.sha256 = path, sha
    except (RunDirError, DatasetError, ParitySetError, OSError) as e:
        if is_disk_full(e):  # as for the ONNX files: a full disk stops the export
            raise
        earlier = _earlier_set(export_dir, checkpoint)
        if earlier is None:
            path.unlink(missing_ok=True)
            warnings.append(f"no parity set written ({e}): a device cannot check itself")
            return None
        ps = earlier
        warnings.append(f"parity set kept from the earlier export of this checkpoint ({e})")
    tell("parity set: onnx", 0, 1)
    figures = onnx_parity(ps, export_dir, record.get("files") or {}, spec)
    tell("parity set: onnx", 1, 1)
    info = ps.describe()
    return {
        "file": PARITY_SET_FILE,
        "sha256": ps.sha256,
        "size_bytes": path.stat().st_size,
        "images": info["images"],
        "side": info["side"],
        "class_counts": info["class_counts"],
        "split_counts": info["split_counts"],
        "reference": "torch fp32 logits of the stored crops, on this machine's CPU",
        "versions": ps.versions,
        "parity": figures,
    }


def _earlier_set(export_dir: Path, checkpoint_sha256: str | None) -> ParitySet | None:
    """The set of the previous export, when it is intact and from the same checkpoint."""
    entry = read_export_record(export_dir).get(RECORD_KEY) or {}
    if not entry.get("file") or not entry.get("sha256"):
        return None
    try:
        ps = read_parity_set(export_dir / entry["file"], expected_sha256=entry["sha256"])
    except ParitySetError:
        return None
    return ps if ps.meta.get("checkpoint_sha256") == checkpoint_sha256 else None
