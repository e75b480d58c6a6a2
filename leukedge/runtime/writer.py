"""Annotated frames drawn, encoded and written off the inference thread.

Drawing a frame and encoding it (a PNG of 1712x1368 takes ~70 ms on one core, a
JPEG ~5 ms) must not hold up classifying the next frame, so the main thread hands
each annotated frame to this thread through a bounded queue and goes on counting.

The rule when writing falls behind:

- a **live source** (camera, stream): the annotated frame is dropped and counted
  (``outputs.annotated_dropped``); its cells are classified, written to
  cells.jsonl and counted all the same, so the count never waits for the pictures;
- a **file or folder** (images, video file): the main thread waits for room, so
  every input keeps its annotated output (nothing is lost by reading a file
  faster than it can be drawn);
- frames only for the live page (no annotated output): dropped, never waited for.

The live page (:class:`leukedge.runtime.live.LiveFeed`) gets each drawn frame as a
JPEG; with JPEG frames on disk the same bytes serve both.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from leukedge.runtime.outputs import AnnotatedImages, AnnotatedVideo, encode_frame
from leukedge.runtime.stats import StageStats

if TYPE_CHECKING:
    from leukedge.runtime.cells import Cell
    from leukedge.runtime.live import LiveFeed

DROP_RULE = (
    "annotated frames of a live source are dropped (and counted here) when writing falls "
    "behind; their cells are still classified and counted. Files and folders are never dropped."
)


@dataclass(eq=False)
class FrameJob:
    """One classified frame to draw: the picture, its cells and what to write on it."""

    index: int
    name: str
    image: np.ndarray
    t0: float  # perf_counter when reading the frame began
    cells: list[Cell] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the running count, as it was then
    file: str | None = None  # annotated/<file> reserved for an image source
    drawn: bool = False  # the image already has its boxes (drawn for --show)


class FrameWriter(threading.Thread):
    """Draws, encodes and writes annotated frames; feeds the live page.

    ``drop``: drop a frame when ``queue_size`` frames already wait (live sources),
    else :meth:`submit` waits for room. An error while writing (a full disk) is kept
    and raised by the next :meth:`submit` or by :meth:`close`, in the main thread.
    """

    def __init__(
        self,
        annotator: AnnotatedImages | AnnotatedVideo | None,
        positive: str,
        drop: bool,
        live: LiveFeed | None = None,
        queue_size: int = 4,
    ) -> None:
        super().__init__(name="leukedge-writer", daemon=True)
        self.annotator = annotator
        self.positive = positive
        self.drop = drop
        self.live = live
        self.queue: queue.Queue[FrameJob | None] = queue.Queue(maxsize=max(1, queue_size))
        self.dropped = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.work = StageStats()  # draw + encode + write of one frame
        self.latency = StageStats()  # from reading the frame to its annotated frame written

    def submit(self, job: FrameJob) -> bool:
        """Queue ``job``; False when it was dropped (live source, writer behind)."""
        self._raise()
        if self.drop:
            try:
                self.queue.put_nowait(job)
                return True
            except queue.Full:
                self.dropped += 1
                return False
        while self.is_alive():
            try:
                self.queue.put(job, timeout=0.1)
                return True
            except queue.Full:
                continue
        self._raise()
        return False

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is not None:  # after a failure: drain, so submit never blocks
                continue
            try:
                self._write(job)
            except BaseException as e:  # handed to the main thread
                self.error = e

    def _write(self, job: FrameJob) -> None:
        from leukedge.runtime.annotate import draw_cells, draw_count

        t1 = time.perf_counter()
        img = job.image
        if not job.drawn:
            img = draw_cells(img, job.cells, job.labels, job.probs, positive=self.positive)
            draw_count(img, job.lines)
        jpeg: bytes | None = None
        if isinstance(self.annotator, AnnotatedImages):
            data = self.annotator.encode(img)
            self.annotator.write_encoded(job.name, data, job.file)
            if self.annotator.frame_format == "jpg":
                jpeg = data
        elif self.annotator is not None:
            self.annotator.write(job.name, img)
        if self.live is not None:
            jpeg = jpeg if jpeg is not None else encode_frame(img, "jpg")
            if jpeg is not None:
                self.live.publish_frame(jpeg, job.index, job.name, job.t0)
        t2 = time.perf_counter()
        with self._lock:
            self.work.add(t2 - t1)
            self.latency.add(t2 - job.t0)

    def close(self) -> None:
        """Write what is queued, stop the thread; raise what went wrong in it."""
        if self.is_alive():
            self.queue.put(None)
            self.join()
        self._raise()

    def latency_ms(self) -> dict[str, dict[str, Any]]:
        """summary.json's ``latency_ms`` entries of this thread."""
        with self._lock:
            return {"annotate": self.work.summary(), "annotated_end_to_end": self.latency.summary()}

    def describe(self) -> dict[str, Any]:
        """summary.json's ``outputs`` entries: frames dropped and the rule."""
        return {"annotated_dropped": self.dropped, "annotated_drop_rule": DROP_RULE}
