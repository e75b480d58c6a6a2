"""What a pipeline run leaves in its output folder, written as it goes.

```
OUT/
  cells.jsonl     one line per classified cell, appended after every frame
  summary.json    counts, blast ratio, latencies, backend, machine; rewritten atomically
                  every few frames and at the end (status says whether the run finished)
  annotated/      one JPEG (or PNG: frame_format) per input image (image sources;
                  summary.json's outputs.annotated_files maps each input to its file), or
  annotated.mp4   the annotated stream (video files, cameras, streams), named when it ends
  report.html     the count of each cell once and every cell's picture for review, with
  thumbs/         the pictures and tracks.jsonl (one line per unique cell), written at the
  tracks.jsonl    end (see :mod:`leukedge.runtime.gallery`)
  .leukedge.lock  held while a run writes OUT (see :mod:`leukedge.runtime.outfolder`)
```
A crash or Ctrl-C at any moment leaves every finished frame in cells.jsonl and a
complete (if older) summary.json: no file is ever half-written under its name (a
SIGKILL in the middle of appending a frame of many kilobytes is the one case that
can cut cells.jsonl's last line; readers drop a last line without its newline).
A full disk ends the run with status "failed". summary.json's content is made
here too (:func:`build_summary`), from the run's totals and parts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from leukedge.io import (
    NEW_FILE_FLAGS,
    OutputError,
    TempFile,
    as_disk_full,
    atomic_write_bytes,
    atomic_write_json,
    json_text,
    write_all,
)
from leukedge.runtime.calibration import UNCERTAIN_BAND, adjusted_ratio
from leukedge.runtime.shift import summarise_flags, unavailable
from leukedge.runtime.stats import STAGES, Totals, blast_ratio

if TYPE_CHECKING:
    from leukedge.runtime.classifier import Classifier

CELLS_FILE = "cells.jsonl"
SUMMARY_FILE = "summary.json"
ANNOTATED_DIR = "annotated"
ANNOTATED_VIDEO = "annotated.mp4"
ANNOTATED_VIDEO_FALLBACK = "annotated.avi"
DEFAULT_VIDEO_FPS = 15.0
FRAME_FORMATS = ("jpg", "png")
JPEG_QUALITY = 90  # ~5 ms for a 1712x1368 frame here, where a PNG takes ~70 ms
MAX_NAME_CHARS = 150  # of an input's name in its annotated file name (NAME_MAX is 255 bytes)
SUMMARY_VERSION = 1
COUNT_NOTE = (
    "counts are per detection: on a video or camera a cell seen in several frames counts in "
    "each (unique_cells counts each cell once); edge cells (touches_edge) are counted and "
    "listed, their class is less certain"
)
UNCERTAIN_NOTE = (
    "probabilities are temperature-scaled (fitted on the validation split); cells whose ALL "
    "probability lies within uncertain_band are unsure: counted in by_class and here, and left "
    "out of blast_ratio_sure"
)
LATENCY_NOTE = (
    "capture, find and preprocess are per frame, infer per batch of cells; end_to_end runs "
    "from starting to read a frame to its results being written, queue waits included"
)


def cell_record(
    frame_index: int,
    frame_name: str,
    cell_index: int,
    cell: Any,
    classes: list[str],
    probs: np.ndarray,
    positive_index: int = 1,
    shift_score: float | None = None,
) -> dict[str, Any]:
    """One cells.jsonl line: where the cell is, its class and every (calibrated) probability.

    ``uncertain``: the positive-class probability is within the unsure band;
    ``shift_score``: the cell's domain-shift score (1.0 = threshold; None when the model
    has none) and ``out_of_distribution`` whether it exceeds the threshold.
    """
    k = int(np.argmax(probs))
    p_pos = float(probs[positive_index]) if len(probs) > positive_index else float("nan")
    return {
        "frame": frame_index,
        "name": frame_name,
        "cell": cell_index,
        "box": [int(v) for v in cell.box],
        "centroid": [round(float(v), 1) for v in cell.centroid],
        "class": classes[k],
        "probs": {c: round(float(p), 5) for c, p in zip(classes, probs, strict=True)},
        "touches_edge": bool(cell.touches_edge),
        "score": round(float(getattr(cell, "score", 1.0)), 3),
        "uncertain": bool(UNCERTAIN_BAND[0] <= p_pos <= UNCERTAIN_BAND[1]),
        "shift_score": None if shift_score is None else round(float(shift_score), 4),
        "out_of_distribution": None if shift_score is None else bool(shift_score > 1.0),
    }


class CellsWriter:
    """cells.jsonl, appended one frame at a time so readers and crashes see whole lines.

    The file is created new (never through a link planted at its name); a write the
    disk cannot hold is taken back, so the file ends on the last whole frame.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, NEW_FILE_FLAGS | os.O_APPEND, 0o666)
        except FileExistsError:
            raise OutputError(
                f"{path} appeared while the run started (another program writes this folder?); "
                "choose another --out"
            ) from None
        self._size = 0
        self.lines = 0

    def write_frame(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json_text(r, separators=(",", ":")) + "\n" for r in records).encode()
        try:
            write_all(self._fd, data)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            full = as_disk_full(e, self.path)
            if full is None:
                raise
            raise full from e
        self._size += len(data)
        self.lines += len(records)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def safe_file_name(name: str) -> str:
    """A frame name as one file name: folders joined with '__', odd characters replaced."""
    flat = name.replace("\\", "/").replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._#-]+", "_", flat).lstrip(".") or "frame"


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def encode_frame(image: np.ndarray, frame_format: str = "jpg") -> bytes | None:
    """``image`` as a JPEG (quality ``JPEG_QUALITY``) or PNG file's bytes; None if it cannot be."""
    if frame_format == "png":
        ok, buf = cv2.imencode(".png", image)
    else:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else None


class AnnotatedImages:
    """One JPEG (or PNG) per input image under ``annotated/``, named after the input.

    ``annotated/<input name>.<jpg|png>`` (folders joined with '__', odd characters
    replaced, the extension not doubled, at most ``MAX_NAME_CHARS`` kept). Names that
    collide after that (``a b.jpg``/``a_b.jpg``, ``x.jpg``/``x.JPG``, names in
    other scripts), or with a file already there, get ``~<8 hex of the name>``:
    every input keeps its own file, and :attr:`files` maps input names to files.
    """

    def __init__(self, out_dir: Path, frame_format: str = "jpg") -> None:
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, not {frame_format!r}")
        self.frame_format = frame_format
        self.folder = out_dir / ANNOTATED_DIR
        if self.folder.is_symlink():
            raise OutputError(
                f"{self.folder} is a link; leukedge writes annotated frames only into a real "
                "folder inside --out (remove the link, or point --out at the other disk)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.failed: list[str] = []
        self.files: dict[str, str] = {}
        self._taken: set[str] = set()

    def file_for(self, name: str, index: int = 0) -> str:
        """Reserve the file of frame ``name``: ``annotated/<file>``, unique in this run."""
        ext = f".{self.frame_format}"
        safe = safe_file_name(name)
        stem = safe[: -len(ext)] if safe.lower().endswith(ext) else safe
        cut = len(stem) > MAX_NAME_CHARS
        stem = stem[:MAX_NAME_CHARS]
        candidates = [] if cut else [f"{stem}{ext}"]
        candidates += [f"{stem}~{_digest(name)}{ext}"]
        candidates += [f"{stem}~{_digest(name)}-{k}{ext}" for k in range(2, 10_000)]
        file = next(c for c in candidates if self._free(c))
        self._taken.add(file.casefold())
        key = name if name not in self.files else f"{name} [frame {index}]"
        self.files[key] = f"{ANNOTATED_DIR}/{file}"
        return self.files[key]

    def _free(self, file: str) -> bool:
        return file.casefold() not in self._taken and not os.path.lexists(self.folder / file)

    def encode(self, image: np.ndarray) -> bytes | None:
        return encode_frame(image, self.frame_format)

    def write(self, name: str, image: np.ndarray, file: str | None = None) -> None:
        """Write frame ``name`` to ``file`` (from :meth:`file_for`; reserved here when None)."""
        self.write_encoded(name, self.encode(image), file)

    def write_encoded(self, name: str, data: bytes | None, file: str | None = None) -> None:
        """Write the already encoded frame ``name`` (None: encoding failed, listed as such)."""
        file = file or self.file_for(name)
        if data is None:
            self.failed.append(name)
            return
        atomic_write_bytes(self.folder.parent / file, data, fsync=False)
        self.written += 1

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "annotated": f"{ANNOTATED_DIR}/",
            "annotated_format": self.frame_format,
            "annotated_frames": self.written,
            "annotated_files": dict(self.files),
        }
        if self.failed:
            out["annotated_failed"] = list(self.failed)
        return out

    def close(self) -> None:
        """Every image is complete once written."""


class AnnotatedVideo:
    """annotated.mp4 (MPEG-4 Part 2, plays everywhere), opened on the first frame.

    The size of the first frame fixes the video size; later frames of another size
    are resized. Falls back to Motion-JPEG AVI where the OpenCV build lacks an MP4
    writer; with neither, annotation is off and the summary says so.
    """

    def __init__(self, out_dir: Path, fps: float | None) -> None:
        self.out_dir = out_dir
        self.fps = fps if fps and fps > 0 else DEFAULT_VIDEO_FPS
        self._writer: Any = None
        self._tmp: TempFile | None = None
        self.path: Path | None = None
        self.size: tuple[int, int] | None = None
        self.written = 0
        self.error: str | None = None

    def _open(self, size: tuple[int, int]) -> None:
        for name, fourcc in ((ANNOTATED_VIDEO, "mp4v"), (ANNOTATED_VIDEO_FALLBACK, "MJPG")):
            path = self.out_dir / name
            tmp = TempFile(path, ext=path.suffix)  # OpenCV picks the container by extension
            writer = cv2.VideoWriter(str(tmp.path), cv2.VideoWriter.fourcc(*fourcc), self.fps, size)
            if writer.isOpened():
                self._writer, self._tmp, self.size = writer, tmp, size
                return
            writer.release()
            tmp.discard()
        self.error = f"this OpenCV ({cv2.__version__}) cannot write MP4 or MJPG video"

    def write(self, name: str, image: np.ndarray) -> None:
        if self.error:
            return
        h, w = image.shape[:2]
        if self._writer is None:
            self._open((w, h))
            if self._writer is None:
                return
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.written += 1

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "annotated": self.path.name if self.path else self._tmp and self._tmp.dest.name,
            "annotated_frames": self.written,
            "annotated_fps": self.fps,
        }
        if self.error:
            out["annotated_error"] = self.error
        return out

    def close(self) -> None:
        """Finish the video and give it its name (until then it is a temp file)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            try:
                self.path = tmp.publish()
            except BaseException as e:
                tmp.discard()
                full = as_disk_full(e, tmp.dest)
                if full is None:
                    raise
                raise full from e


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    return atomic_write_json(out_dir / SUMMARY_FILE, summary)


# --------------------------------------------------------------------------- summary.json


def utc_now() -> str:
    """Now, as summary.json writes times (ISO 8601, UTC, whole seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunStatus:
    """Where a run stands: how it ended (or that it still runs), and when.

    ``status`` is "running" until the run ends, then "completed", "stopped",
    "interrupted", "source_error", "backend_error" (a remote backend stopped
    answering), "failed" (the disk filled up) or "error";
    ``message`` says why where it is not "completed".
    """

    status: str = "running"
    message: str | None = None
    started: str = field(default_factory=utc_now)
    finished: str | None = None
    t_start: float = field(default_factory=time.perf_counter)

    def end(self) -> None:
        """The run is over: completed unless something else ended it first."""
        if self.status == "running":
            self.status = "completed"
        self.finished = utc_now()


def files_written(
    cells: CellsWriter, annotator: AnnotatedImages | AnnotatedVideo | None
) -> dict[str, Any]:
    """summary.json's ``outputs``: the files of the run and how much each holds."""
    out: dict[str, Any] = {"cells": CELLS_FILE, "cells_lines": cells.lines}
    if annotator is not None:
        out.update(annotator.describe())
    return out


def build_summary(
    run: RunStatus,
    totals: Totals,
    classifier: Classifier,
    source: Any,
    finder: Any,
    outputs: dict[str, Any],
    *,
    batch: int,
    max_wait_s: float,
    model_name: str | None = None,
) -> dict[str, Any]:
    """summary.json's content at this moment of a run.

    ``outputs`` is :func:`files_written`; ``batch`` and ``max_wait_s`` are the
    settings the run batches cells with; ``model_name`` is the model as the user
    named it (default: the classifier's artifact).
    """
    t = totals
    wall = time.perf_counter() - run.t_start
    spec = classifier.spec
    return {
        "version": SUMMARY_VERSION,
        "status": run.status,
        "message": run.message,
        "started": run.started,
        "finished": run.finished,
        "model": {
            "path": model_name or classifier.selection.artifact or None,
            "arch": spec.arch,
            "classes": list(spec.classes),
            "positive_class": spec.positive_class,
            "input_size": spec.input_size,
            "crop_style": spec.crop_style,
        },
        "backend": {
            **classifier.selection.to_dict(),
            "device": getattr(classifier.backend, "device", None),
            "precision": getattr(classifier.backend, "precision", None),
        },
        "source": _source_info(source),
        "finder": {
            "cell_diameter_px": getattr(finder, "cell_diameter_px", None),
            "um_per_px": getattr(finder, "um_per_px", None),
            "stain": getattr(finder, "stain", None),
            **_finder_reports(finder),
        },
        "settings": {"batch": batch, "max_wait_ms": round(1000 * max_wait_s, 1)},
        "frames": {"read": t.frames, "processed": t.processed, "skipped": t.skipped},
        "cells": {
            "total": t.cells,
            "by_class": dict(t.by_class),
            "touching_edge": t.edge_cells,
            "note": COUNT_NOTE,
        },
        "all_count": t.positive_count,
        "blast_ratio": blast_ratio(t.positive_count, t.cells),
        **reliability(t, spec, domain_shift(t, classifier)),
        "latency_ms": {s: t.stages[s].summary() for s in STAGES},
        "latency_note": LATENCY_NOTE,
        "throughput": {
            "wall_s": round(wall, 3),
            "frames_per_s": round(t.processed / wall, 3) if wall > 0 else None,
            "cells_per_s": round(t.cells / wall, 3) if wall > 0 else None,
            "infer_batches": t.infer_batches,
            "mean_cells_per_batch": round(t.infer_cells / t.infer_batches, 2)
            if t.infer_batches
            else None,
        },
        "skipped_frames": list(t.skipped_list),
        "skipped_frames_not_listed": max(0, t.skipped - len(t.skipped_list)),
        "outputs": outputs,
        "machine": _machine(),
    }


def domain_shift(t: Totals, classifier: Any) -> dict[str, Any]:
    """summary.json's ``domain_shift``: flagged cells, their fraction, and the warning."""
    if getattr(classifier, "shift", None) is None:
        return unavailable("the model has no domain-shift record (train it with this leukedge)")
    if t.shift_unavailable and t.shift_scored == 0:
        return unavailable(t.shift_unavailable)
    return summarise_flags(t.shift_scored, t.shift_flagged, np.asarray(t.shift_sample.sample))


def reliability(t: Totals, spec: Any, shift: dict[str, Any]) -> dict[str, Any]:
    """The blast ratio corrected for the classifier's errors, and among the sure cells only."""
    adjusted = adjusted_ratio(t.positive_count, t.cells, spec.operating_point)
    if shift.get("warning"):
        adjusted["note"] = (
            "the correction assumes the sensitivity and specificity measured on the training "
            "lab's cells; these cells are out of distribution, so it does not hold"
        )
    sure = t.cells - t.uncertain
    return {
        "blast_ratio_adjusted": adjusted,
        "blast_ratio_sure": blast_ratio(t.positive_count - t.uncertain_positive, sure),
        "calibration": {
            "temperature": spec.temperature,
            "uncertain": t.uncertain,
            "uncertain_all": t.uncertain_positive,
            "uncertain_band": list(UNCERTAIN_BAND),
            "note": UNCERTAIN_NOTE,
        },
        "domain_shift": shift,
    }


_MACHINE: dict[str, Any] | None = None


def _finder_reports(finder: Any) -> dict[str, Any]:
    """The finder's own account of the run, when it gives one: ``scale`` (how often the
    white-cell size was a guess, with the warning to show); see
    :meth:`CellFinder.scale_report`."""
    out: dict[str, Any] = {}
    for key, method in (("scale", "scale_report"),):
        report = getattr(finder, method, None)
        if callable(report):
            out[key] = report()
    return out


def _machine() -> dict[str, Any]:
    """The machine description, probed once per process (it runs nvidia-smi)."""
    global _MACHINE
    if _MACHINE is None:
        from leukedge.machine import describe_machine

        _MACHINE = describe_machine()
    return _MACHINE


def _source_info(source: Any) -> dict[str, Any]:
    info = source.info() if hasattr(source, "info") else {"kind": type(source).__name__}
    info["end_reason"] = getattr(source, "end_reason", None)
    return info
