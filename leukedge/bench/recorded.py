"""PyTorch's logits recorded at export as the bench's reference, and the check that they still hold.

On a Jetson there is no PyTorch and usually no dataset, but ``export/parity_set.npz``
carries crops and the logits PyTorch gave for them on the training machine. The
bench then measures on those crops (``--split parity``) with the recorded logits
as the reference row, so every backend is compared with PyTorch directly, with the
same metrics and budgets as on the workstation. Where PyTorch is installed it is
run on the same crops as well: whether today's torch/timm still reproduce the
recorded logits is reported, versions included, never hidden.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.bench.latency import summarize_ms
from leukedge.budgets import Budgets, judge
from leukedge.data.arrays import ImageSet
from leukedge.data.records import DatasetError
from leukedge.export.parity import compare
from leukedge.machine import package_version
from leukedge.rundir import RunDir, RunDirError
from leukedge.runtime.parityset import (
    REFERENCE_NAME,
    ParitySet,
    ParitySetError,
    has_parity_set,
    load_parity_set,
)
from leukedge.spec import ModelSpec

PARITY_SPLIT = "parity"
AUTO_SPLIT = "auto"
DRIFT_PACKAGES = ("torch", "timm")

__all__ = ["REFERENCE_NAME", "choose_split", "reproduction", "set_images"]


def torch_reference_missing(run_dir: Path) -> str | None:
    """Why PyTorch cannot be a live reference for the run here (None when it can)."""
    from leukedge.bench.torch_backend import torch_unavailable_reason

    reason = torch_unavailable_reason()
    if reason:
        return reason
    if not (run_dir / "checkpoint.pt").is_file():
        return f"no checkpoint.pt in {run_dir} (only the export was copied here)"
    return None


def choose_split(run: RunDir, split: str, data: str | Path | None) -> tuple[str, str]:
    """``auto``: the test split with live PyTorch where it and the data are here, else the
    parity set (when the export has one). Returns the split and why it was chosen."""
    if split != AUTO_SPLIT:
        return split, ""
    if not has_parity_set(run.path):
        return "test", ""
    why = torch_reference_missing(run.path)
    if why:
        return PARITY_SPLIT, why
    try:
        run.dataset_and_split(data)
    except (RunDirError, DatasetError, OSError) as e:
        return PARITY_SPLIT, f"the run's data is not here ({e})"
    return "test", ""


def set_images(ps: ParitySet, spec: ModelSpec) -> ImageSet:
    """The stored crops through this machine's ``preprocess``, as the bench's image set."""
    return ImageSet(ps.inputs(spec), ps.labels.copy(), list(ps.names), list(ps.subjects))


def crop_preprocess_cost(ps: ParitySet, spec: ModelSpec, max_images: int = 64) -> dict[str, Any]:
    """Per-crop ``preprocess`` time (the crops are stored decoded: no decode time)."""
    from leukedge.imaging.preprocess import preprocess

    times = []
    for i in range(min(max_images, len(ps))):
        crop = ps.crop(i)
        t0 = time.perf_counter()
        preprocess(crop, spec)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "n": len(times),
        "decode_ms": summarize_ms([]),
        "preprocess_ms": summarize_ms(times),
        "total_ms": summarize_ms(times),
    }


def version_changes(recorded: dict[str, str | None]) -> dict[str, list[str | None]]:
    """``{package: [at export, here]}`` for torch/timm versions that differ (installed here)."""
    out: dict[str, list[str | None]] = {}
    for pkg in DRIFT_PACKAGES:
        here = package_version(pkg)
        if here is not None and recorded.get(pkg) != here:
            out[pkg] = [recorded.get(pkg), here]
    return out


def reproduction(
    ps: ParitySet, torch_logits: np.ndarray, spec: ModelSpec, budgets: Budgets
) -> dict[str, Any]:
    """Today's PyTorch on the stored crops against the recorded logits, judged as fp32."""
    parity = compare(
        ps.logits[: len(torch_logits)], torch_logits, ps.labels[: len(torch_logits)], spec
    )
    return {**parity, "verdict": judge("fp32", parity, budgets)}


def drift_notes(info: dict[str, Any]) -> list[str]:
    """What the report says when the reference moved: versions, reproduction, preprocessing."""
    notes = []
    recorded = info["recorded"]["versions"]
    changes = info.get("version_changes") or {}
    repro = info.get("torch_reproduces")
    if changes:
        changed = ", ".join(
            f"{p} {old or '?'} at export, {new} here" for p, (old, new) in changes.items()
        )
        notes.append(f"PyTorch stack changed since the parity set was recorded: {changed}")
    if repro is not None:
        if repro["verdict"]["status"] == "fail":
            notes.append(
                f"today's PyTorch does NOT reproduce the logits recorded at export "
                f"(torch {recorded.get('torch')}, timm {recorded.get('timm')}): "
                f"{'; '.join(repro['verdict']['reasons'])}. The exported files came from the "
                "recorded model: re-export to compare against this PyTorch"
            )
        elif changes:
            notes.append(
                f"today's PyTorch still reproduces the recorded logits "
                f"(max |Δlogit| {repro['max_abs_diff']:.2g})"
            )
    mismatched = info.get("preprocess_mismatches")
    if mismatched:
        import cv2

        notes.append(
            f"preprocessing here differs from the export machine's on {mismatched} of "
            f"{info['images_used']} crops (OpenCV {cv2.__version__} here, "
            f"{recorded.get('opencv')} at export): the parity figures include that "
            "difference, as use on this machine would"
        )
    return notes


def parity_set_info(
    ps: ParitySet,
    role: str,
    x: np.ndarray | None,
    torch_logits: np.ndarray | None,
    spec: ModelSpec,
    budgets: Budgets,
) -> dict[str, Any]:
    """The report's ``parity_set`` section: the set, its use, versions and reproduction."""
    info = ps.describe()
    info["role"] = role
    info["images_used"] = len(x) if x is not None else 0
    info["preprocess_mismatches"] = ps.preprocess_mismatches(x) if x is not None else None
    info["version_changes"] = version_changes(ps.versions)
    info["torch_reproduces"] = (
        reproduction(ps, torch_logits, spec, budgets) if torch_logits is not None else None
    )
    return info


def try_load(run_dir: Path, spec: ModelSpec) -> tuple[ParitySet | None, str]:
    """The run's parity set for a reproduction check, or why there is none (never raises)."""
    if not has_parity_set(run_dir):
        return None, ""
    try:
        return load_parity_set(run_dir, spec), ""
    except ParitySetError as e:
        return None, str(e)
