"""What a running pipeline shows to a live page: the latest annotated frame and its numbers.

The pipeline publishes; a web server (:mod:`leukedge.serve`) in another thread of
the same process reads. Only the latest frame is kept: a slow viewer skips
frames, it never makes the run queue them. The page's buttons act here: pause
(the capture thread stops reading frames until resumed), reset (the page counts
from that moment on; summary.json keeps the whole run's counts and lists the
resets) and snapshot (the frame on screen and its numbers saved under
``OUT/snapshots/``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from leukedge.io import atomic_write_bytes, atomic_write_json
from leukedge.runtime.stats import blast_ratio

SNAPSHOT_DIR = "snapshots"


class LiveFeed:
    """Thread-safe holder of the latest JPEG, the latest summary and the page's controls."""

    def __init__(self, out_dir: Path | None = None) -> None:
        self.out_dir = out_dir
        self._cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0  # frames published so far; the page asks for a frame newer than its own
        self.frame: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.closed = False
        self._paused = threading.Event()
        self._baseline: dict[str, Any] = {"by_class": {}, "total": 0, "positive": 0, "frames": 0}
        self.resets: list[dict[str, Any]] = []
        self.snapshots: list[str] = []

    # ------------------------------------------------------------ the pipeline's side

    def publish_frame(self, jpeg: bytes, index: int, name: str, t0: float) -> None:
        """The newest annotated frame; ``t0`` is ``perf_counter`` when reading it began."""
        now = time.time()
        captured = now - (time.perf_counter() - t0)
        with self._cond:
            self.jpeg = jpeg
            self.seq += 1
            self.frame = {
                "seq": self.seq,
                "index": index,
                "name": name,
                "captured_ms": round(captured * 1000, 1),
                "published_ms": round(now * 1000, 1),
            }
            self._cond.notify_all()

    def publish_stats(self, summary: dict[str, Any]) -> None:
        """The run's summary.json content as it is now."""
        with self._cond:
            self.stats = summary
            self._cond.notify_all()

    def wait_while_paused(self, stop: threading.Event) -> None:
        """Block the capture thread while the page holds the run paused (or until ``stop``)."""
        while self._paused.is_set() and not stop.is_set() and not self.closed:
            stop.wait(0.05)

    def close(self) -> None:
        """The run is over: waiting viewers wake up and end."""
        with self._cond:
            self.closed = True
            self._paused.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------ the page's side

    def wait_frame(self, after: int, timeout: float) -> tuple[bytes | None, dict[str, Any]]:
        """The latest frame once it is newer than ``after`` (or whatever there is at ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after or self.closed, timeout=timeout)
            return self.jpeg, dict(self.frame)

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def set_paused(self, paused: bool) -> bool:
        if paused and not self.closed:
            self._paused.set()
        else:
            self._paused.clear()
        return self.paused

    def reset(self) -> dict[str, Any]:
        """Count from now on (on the page); the whole run's counts stay in summary.json."""
        with self._cond:
            s = self.stats
            cells = s.get("cells") or {}
            self._baseline = {
                "by_class": dict(cells.get("by_class") or {}),
                "total": int(cells.get("total") or 0),
                "positive": int(s.get("all_count") or 0),
                "frames": int((s.get("frames") or {}).get("processed") or 0),
            }
            entry = {"at": _now(), **self._baseline}
            self.resets.append(entry)
            return entry

    def snapshot(self) -> dict[str, Any]:
        """Save the frame on screen and the page's numbers in ``OUT/snapshots/``."""
        if self.out_dir is None:
            raise RuntimeError("this live feed has no output folder for snapshots")
        with self._cond:
            jpeg, frame, view = self.jpeg, dict(self.frame), self._view()
        folder = self.out_dir / SNAPSHOT_DIR
        if folder.is_symlink():
            raise RuntimeError(f"{folder} is a link; snapshots go only into a real folder")
        folder.mkdir(exist_ok=True)
        stem = f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-frame{frame.get('index', 'none')}"
        k = 1
        while any((folder / f"{stem}{sfx}").exists() for sfx in (".jpg", ".json")):
            k += 1
            stem = f"{stem.split('~')[0]}~{k}"
        files = []
        if jpeg is not None:
            atomic_write_bytes(folder / f"{stem}.jpg", jpeg, fsync=False)
            files.append(f"{SNAPSHOT_DIR}/{stem}.jpg")
        atomic_write_json(folder / f"{stem}.json", {"frame": frame, "numbers": view})
        files.append(f"{SNAPSHOT_DIR}/{stem}.json")
        with self._cond:
            self.snapshots.extend(files)
        return {"files": files, "frame": frame}

    def view(self) -> dict[str, Any]:
        """What the page shows: counts since the last reset and for the whole run, speed, warnings."""
        with self._cond:
            return self._view()

    def _view(self) -> dict[str, Any]:
        s, base = self.stats, self._baseline
        cells = s.get("cells") or {}
        by_class = cells.get("by_class") or {}
        total = int(cells.get("total") or 0) - base["total"]
        positive = int(s.get("all_count") or 0) - base["positive"]
        processed = int((s.get("frames") or {}).get("processed") or 0)
        return {
            "status": s.get("status", "starting"),
            "message": s.get("message"),
            "paused": self.paused,
            "positive_class": (s.get("model") or {}).get("positive_class"),
            "since_reset": {
                "frames": processed - base["frames"],
                "cells": total,
                "by_class": {c: n - base["by_class"].get(c, 0) for c, n in by_class.items()},
                "blast_ratio": blast_ratio(positive, total),
                "resets": len(self.resets),
            },
            "run": {
                "frames": s.get("frames"),
                "cells": cells.get("total"),
                "by_class": by_class,
                "blast_ratio": s.get("blast_ratio"),
                "blast_ratio_adjusted": s.get("blast_ratio_adjusted"),
            },
            "unique": s.get("unique_cells"),  # each cell counted once, where the run tracks
            "latency_ms": s.get("latency_ms"),
            "throughput": s.get("throughput"),
            "backend": s.get("backend"),
            "warnings": warnings_of(s),
            "frame": dict(self.frame),
            "snapshots": list(self.snapshots),
        }

    def describe(self) -> dict[str, Any]:
        """summary.json's ``live`` block: the page's resets and snapshots."""
        with self._cond:
            return {
                "frames_published": self.seq,
                "resets": list(self.resets),
                "snapshots": list(self.snapshots),
            }


def warnings_of(summary: dict[str, Any]) -> list[str]:
    """Every warning a summary carries (domain shift, cell scale, the source...), one line each."""
    out: list[str] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            w = value.get("warning")
            if isinstance(w, str) and w:
                out.append(f"{key.replace('_', ' ')}: {w}")
            ws = value.get("warnings")
            if isinstance(ws, list):
                out += [f"{key}: {x}" for x in ws if isinstance(x, str)]
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
