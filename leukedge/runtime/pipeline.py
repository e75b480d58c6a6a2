"""Frames in, classified cells out: the loop that runs next to the microscope.

Three threads share the work. A capture thread reads frames, finds the cells and
preprocesses their crops, and hands each frame to a bounded queue; the main
thread takes frames off the queue, classifies their cells and writes the
results; a writer thread draws, encodes and writes the annotated frames and
feeds the live page (:mod:`leukedge.runtime.writer` states when it drops frames;
:mod:`leukedge.runtime.threads` sizes the thread pools to the cores). OpenCV and
ONNX Runtime/TensorRT release the GIL, so finding cells in
frame *n+1* overlaps classifying frame *n*. When frames arrive faster than the
model needs for one batch, cells of several frames are classified together (up
to ``batch`` cells, waiting at most ``max_wait_s`` for more), which is what makes
GPUs and large models efficient; a slow live source never waits for a batch to
fill beyond that limit.

The capture thread runs at most ``queue_size`` frames (default 2) ahead of
inference: enough to keep both threads busy, few enough that a frame's
end-to-end latency stays near its processing time when inference is the slower
of the two (with 4, ALL-IDB1 frames on a loaded 2-core CPU waited twice as long).

Memory stays bounded however long the run: at most ``queue_size`` frames wait in
the queue and at most ``batch`` frames in a batch; per-stage latencies are kept
in a fixed-size sample. Outputs are written as the run goes (see
:mod:`leukedge.runtime.outputs`); an unreadable frame is listed and skipped, a
source that fails ends the run with everything so far written, and Ctrl-C stops
it cleanly (a second Ctrl-C aborts at once).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukedge.io import DiskFullError, is_disk_full
from leukedge.runtime import outfolder
from leukedge.runtime.outputs import (
    CELLS_FILE,
    AnnotatedImages,
    AnnotatedVideo,
    CellsWriter,
    RunStatus,
    build_summary,
    cell_record,
    files_written,
    write_summary,
)
from leukedge.runtime.stats import Totals
from leukedge.runtime.threads import ThreadBudget, plan_threads
from leukedge.runtime.writer import FrameJob, FrameWriter

if TYPE_CHECKING:
    from leukedge.runtime.cells import Cell, CellFinder
    from leukedge.runtime.classifier import Classifier
    from leukedge.runtime.display import Display
    from leukedge.runtime.live import LiveFeed
    from leukedge.runtime.session import CountSession
    from leukedge.runtime.sources import Frame, Source
    from leukedge.runtime.tracking import FrameMotion

Progress = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class FrameWork:
    """One frame as the capture thread hands it over: cells found, crops preprocessed."""

    index: int
    name: str
    t0: float  # perf_counter when reading this frame began
    image: np.ndarray | None = None  # kept only for annotation/display
    cells: list[Cell] = field(default_factory=list)
    x: np.ndarray | None = None  # (n_cells, 3, S, S) float32
    stains: np.ndarray | None = None  # (n_cells, 6) stain statistics for the shift score
    error: str | None = None
    motion: FrameMotion | None = None  # where the frame lies on the slide (count session)
    thumbs: list[np.ndarray] | None = None  # the cells' pictures for the review gallery
    capture_s: float = 0.0
    find_s: float = 0.0
    preprocess_s: float = 0.0


@dataclass
class End:
    """The capture thread is done: why, and what went wrong if anything did."""

    status: str  # "completed" | "interrupted" | "source_error"
    message: str | None = None


# --------------------------------------------------------------------------- capture thread


class CaptureThread(threading.Thread):
    """Reads frames, finds cells, preprocesses crops; one frame at a time into ``out``."""

    def __init__(
        self,
        frames: Iterable[Frame],
        finder: CellFinder,
        classifier: Classifier,
        out: queue.Queue,
        keep_images: bool,
        live: LiveFeed | None = None,
        session: CountSession | None = None,
    ) -> None:
        super().__init__(name="leukedge-capture", daemon=True)
        self.session = session
        self.frames = frames
        self.finder = finder
        self.classifier = classifier
        self.out = out
        self.keep_images = keep_images
        self.live = live
        self.stop = threading.Event()

    def put(self, item: FrameWork | End) -> bool:
        """Block until there is room or the run is stopping (then the item is dropped)."""
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            end = self._loop(iter(self.frames))
        except BaseException as e:  # never die silently: the main thread must hear of it
            end = End("source_error", f"capture thread failed: {type(e).__name__}: {e}")
        self.put(end)

    def _loop(self, frames: Iterator[Frame]) -> End:
        while not self.stop.is_set():
            if self.live is not None:
                self.live.wait_while_paused(self.stop)
                if self.stop.is_set():
                    break
            t0 = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                return End("completed")
            except KeyboardInterrupt:
                return End("interrupted", "interrupted while reading the source")
            except Exception as e:  # a camera or file that fails mid-stream ends the run cleanly
                return End("source_error", f"the source failed: {type(e).__name__}: {e}")
            work = self.process(frame, t0, time.perf_counter() - t0)
            if not self.put(work):
                break
        return End("interrupted", "stopped")

    def process(self, frame: Frame, t0: float, capture_s: float) -> FrameWork:
        work = FrameWork(frame.index, frame.name, t0, capture_s=capture_s)
        if frame.error is not None or frame.image is None:
            work.error = frame.error or "no image"
            return work
        if self.session is not None:
            work.motion = self.session.measure(frame.image)
            if work.motion.blurred:  # smeared by the moving stage: not classified
                work.image = frame.image if self.keep_images else None
                return work
        t1 = time.perf_counter()
        try:
            cells = self.finder.find(frame.image)
        except Exception as e:  # one odd frame must not end a run
            work.error = f"cell finder failed: {type(e).__name__}: {e}"
            return work
        t2 = time.perf_counter()
        try:
            crops = [self._crop(frame.image, c) for c in cells]
            work.x, work.stains = self.classifier.prepare(crops)
            if self.session is not None:
                work.thumbs = [self.session.thumbnail(c) for c in crops]
        except Exception as e:  # an empty or odd crop skips its frame, not the run
            work.error = f"preprocessing failed: {type(e).__name__}: {e}"
            return work
        for c in cells:
            c.crop = None  # the tensor is all inference needs; free the pixels now
        work.find_s, work.preprocess_s = t2 - t1, time.perf_counter() - t2
        work.cells = cells
        work.image = frame.image if self.keep_images else None
        return work

    def _crop(self, image: np.ndarray, cell: Cell) -> np.ndarray:
        if cell.crop is not None:
            return cell.crop
        from leukedge.imaging.preprocess import crop_cell

        return crop_cell(
            image,
            cell.box,
            self.classifier.spec,
            cell.mask,
            cell.full_diameter,
            cell.full_centre,
        )


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class PipelineSettings:
    """How a run batches, queues, reports and what it writes (see :func:`run_pipeline`).

    Out-of-range numbers are brought into range here, so a run never sees them.
    """

    out_dir: Path
    batch: int
    max_wait_s: float
    annotate: bool
    show: bool
    summary_every: int
    summary_interval_s: float
    queue_size: int
    model_name: str | None = None
    frame_format: str = "jpg"  # annotated frames of image sources: "jpg" or "png"
    live: LiveFeed | None = None  # the live page's feed (``--serve``)
    live_interval_s: float = 0.25  # how often the page's numbers are refreshed
    threads: ThreadBudget | None = None  # the run's thread budget, reported in the summary
    track: bool = True  # count each cell once (motion, association, report.html)
    count: int | None = None  # stop once this many unique cells are counted

    def __post_init__(self) -> None:
        for name, least in (
            ("batch", 1),
            ("max_wait_s", 0.0),
            ("summary_every", 1),
            ("queue_size", 1),
        ):
            object.__setattr__(self, name, max(least, getattr(self, name)))


class Pipeline:
    """One run: owns the capture thread, the writers and the totals."""

    def __init__(
        self,
        classifier: Classifier,
        source: Source | Iterable[Frame],
        finder: CellFinder,
        settings: PipelineSettings,
        progress: Progress | None = None,
    ) -> None:
        self.clf = classifier
        self.source = source
        self.finder = finder
        self.settings = settings
        self.progress = progress
        spec = classifier.spec
        self.totals = Totals(list(spec.classes), spec.positive_class)
        self.queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self.display: Display | None = None
        if settings.show:
            from leukedge.runtime.display import Display

            self.display = Display()
        self.annotator = self._annotator() if settings.annotate else None
        self.live = settings.live
        self.writer: FrameWriter | None = None
        if self.annotator is not None or self.live is not None:
            self.writer = FrameWriter(
                self.annotator,
                spec.positive_class,
                drop=bool(getattr(source, "live", False)) or self.annotator is None,
                live=self.live,
            )
        self.cells_out = CellsWriter(settings.out_dir / CELLS_FILE)
        self.session = self._session() if settings.track or settings.count else None
        self.report_files: dict[str, Any] = {}
        self.capture = CaptureThread(
            source,
            finder,
            classifier,
            self.queue,
            keep_images=settings.annotate or settings.show or self.live is not None,
            live=self.live,
            session=self.session,
        )
        self.state = RunStatus()
        self.last_summary = self.state.t_start
        self.last_live = self.state.t_start

    def _session(self) -> CountSession:
        from leukedge.runtime.session import CountSession

        spec = self.clf.spec
        still = getattr(self.source, "kind", "images") == "images"
        return CountSession(
            list(spec.classes), spec.positive_class, self.settings.count, still=still
        )

    def _annotator(self) -> AnnotatedImages | AnnotatedVideo:
        out_dir = self.settings.out_dir
        if getattr(self.source, "kind", "images") == "images":
            return AnnotatedImages(out_dir, self.settings.frame_format)
        return AnnotatedVideo(out_dir, getattr(self.source, "fps", None))

    # ---------------------------------------------------------------- main loop

    def run(self) -> dict[str, Any]:
        error: BaseException | None = None
        state = self.state
        self._write_summary()  # there from the start, for monitors
        with _graceful_sigint(self.capture.stop) as interrupted:
            if self.writer is not None:
                self.writer.start()
            self.capture.start()
            try:
                self._loop()
                if interrupted.is_set():
                    state.status, state.message = "interrupted", "stopped by Ctrl-C"
            except KeyboardInterrupt:
                state.status, state.message = "interrupted", "stopped by Ctrl-C"
            except BaseException as e:  # outputs are closed and kept, then the error goes on
                if is_disk_full(e):  # what fits is kept; the summary says why the run ended
                    state.status, state.message = "failed", self._disk_full(e)
                else:
                    state.status, state.message = "error", f"{type(e).__name__}: {e}"
                    error = e
            finally:
                self._shutdown()
        if error is not None:
            raise error
        return self._summary()

    def _loop(self) -> None:
        state = self.state
        while True:
            group, end = self._gather()
            try:
                self._classify(group)
            except Exception as e:  # a remote backend gone for good ends the run like a camera
                if not getattr(e, "ends_run", False):
                    raise
                for work in group:
                    self.totals.skip(work.index, work.name, f"not classified: {e}")
                state.status, state.message = "backend_error", str(e)
                self.capture.stop.set()
                return
            if end is not None:
                state.status, state.message = end.status, end.message
                return
            if self.capture.stop.is_set():
                state.status = state.status if state.status != "running" else "stopped"
                return

    def _gather(self) -> tuple[list[FrameWork], End | None]:
        """The next frame, plus more while they come within ``max_wait_s`` and fit one batch."""
        first = self._get(None)
        if first is None:
            return [], None
        if isinstance(first, End):
            return [], first
        group, cells = [first], len(first.cells)
        batch = self.settings.batch
        deadline = time.perf_counter() + self.settings.max_wait_s
        while cells < batch and len(group) < batch:
            item = self._get(max(0.0, deadline - time.perf_counter()))
            if item is None:
                break
            if isinstance(item, End):
                return group, item
            group.append(item)
            cells += len(item.cells)
        return group, None

    def _get(self, timeout: float | None) -> FrameWork | End | None:
        """The next queued item; waits in short steps so Ctrl-C and quitting stay responsive."""
        if timeout is not None:
            try:
                return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                return None
        while not self.capture.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.capture.is_alive() and self.queue.empty():
                    return End("source_error", "the capture thread ended without a word")
        return None

    def _classify(self, group: list[FrameWork]) -> None:
        """Classify the cells of ``group`` in one go, then finish each frame in order."""
        ok = [w for w in group if w.error is None and w.x is not None and len(w.cells)]
        ok_ids = {id(w) for w in ok}
        probs = np.zeros((0, len(self.totals.classes)), dtype=np.float32)
        scores: np.ndarray | None = None
        if ok:
            x = np.concatenate([w.x for w in ok if w.x is not None], axis=0)
            t0 = time.perf_counter()
            logits, features = self.clf.infer_outputs(x)
            self.totals.stages["infer"].add(time.perf_counter() - t0)
            self.totals.infer_batches += 1
            self.totals.infer_cells += len(x)
            probs = self.clf.probabilities(logits)
            stains = [w.stains for w in ok if w.stains is not None]
            scores, why = self.clf.shift_scores(
                features, np.concatenate(stains) if len(stains) == len(ok) else None
            )
            if why is not None:
                self.totals.shift_unavailable = why
        offset = 0
        for work in group:
            n = len(work.cells) if id(work) in ok_ids else 0
            part = None if scores is None else scores[offset : offset + n]
            self._finish(work, probs[offset : offset + n], part)
            offset += n

    def _finish(self, work: FrameWork, probs: np.ndarray, scores: np.ndarray | None = None) -> None:
        t = self.totals
        if work.error is not None:
            t.skip(work.index, work.name, work.error)
        else:
            self._write_frame(work, probs, scores)
            for stage, s in (
                ("capture", work.capture_s),
                ("find", work.find_s),
                ("preprocess", work.preprocess_s),
            ):
                t.stages[stage].add(s)
            t.stages["end_to_end"].add(time.perf_counter() - work.t0)
        work.image, work.x, work.stains = None, None, None
        self._after_frame()

    def _write_frame(self, work: FrameWork, probs: np.ndarray, scores: np.ndarray | None) -> None:
        classes = self.totals.classes
        positive = self.clf.spec.positive_index
        records = [
            cell_record(
                work.index,
                work.name,
                i,
                c,
                classes,
                probs[i],
                positive_index=positive,
                shift_score=None if scores is None else float(scores[i]),
            )
            for i, c in enumerate(work.cells)
        ]
        file = None
        if work.image is not None and isinstance(self.annotator, AnnotatedImages):
            file = self.annotator.file_for(work.name, work.index)
            for r in records:
                r["annotated"] = file
        if self.session is not None:
            self.session.observe(
                work.index, work.name, work.motion, work.cells, records, work.thumbs
            )
        self.cells_out.write_frame(records)
        labels = [r["class"] for r in records]
        self.totals.count(labels, [r["touches_edge"] for r in records])
        self.totals.count_reliability(labels, [r["uncertain"] for r in records], scores)
        if work.image is not None and (self.writer is not None or self.display is not None):
            from leukedge.runtime.annotate import count_lines

            t = self.totals
            job = FrameJob(
                work.index,
                work.name,
                work.image,
                work.t0,
                cells=work.cells,
                labels=labels,
                probs=[r["probs"][r["class"]] for r in records],
                lines=count_lines(t.cells, t.positive_count, t.positive.upper(), self._fps()),
                file=file,
            )
            if self.display is not None:
                self._show(job)
            if self.writer is not None:
                self.writer.submit(job)

    def _show(self, job: FrameJob) -> None:
        """Draw ``job`` here, for the --show window (it lives in the main thread)."""
        from leukedge.runtime.annotate import draw_cells, draw_count

        img = draw_cells(job.image, job.cells, job.labels, job.probs, positive=self.totals.positive)
        draw_count(img, job.lines)
        job.image, job.drawn = img, True
        if self.display is not None and not self.display.show(img):
            self.state.status, self.state.message = "stopped", "window closed"
            self.capture.stop.set()

    def _after_frame(self) -> None:
        if self.session is not None and self.session.done and not self.capture.stop.is_set():
            self.state.status = "completed"
            self.state.message = (
                f"counted {self.session.counted} cells (--count {self.settings.count})"
            )
            self.capture.stop.set()
        now = time.perf_counter()
        due = now - self.last_summary >= self.settings.summary_interval_s
        if self.totals.frames % self.settings.summary_every == 0 or due:
            self._write_summary()
            self.last_summary = now
        if self.live is not None and now - self.last_live >= self.settings.live_interval_s:
            self.live.publish_stats(self._summary())
            self.last_live = now
        if self.progress is not None:
            self.progress(self.snapshot())

    def _shutdown(self) -> None:
        """Stop the capture thread, close every writer, write the final summary."""
        self.capture.stop.set()
        while True:  # unblock a capture thread waiting for room in the queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.capture.join(timeout=10.0)
        close = getattr(self.source, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:  # a camera that fails to release must not lose the summary
                failed = f" (closing the source failed: {e})"
                self.state.message = (self.state.message or "") + failed
        self.cells_out.close()
        closers = [c.close for c in (self.writer, self.annotator) if c is not None]
        for close in closers:  # the writer first: what is queued is written before the video ends
            try:
                close()
            except Exception as e:  # a frame or the video could not be finished: the summary is
                full = is_disk_full(e)
                self.state.status = "failed" if full else "error"
                self.state.message = self._disk_full(e) if full else f"{type(e).__name__}: {e}"
        if self.display is not None:
            self.display.close()
        self.state.end()
        self._write_report()
        self._write_summary()
        if self.live is not None:
            self.live.publish_stats(self._summary())

    def _write_report(self) -> None:
        """report.html, the cell pictures and tracks.jsonl; a failure is said, not fatal."""
        if self.session is None:
            return
        from leukedge.runtime.gallery import write_report

        try:
            self.report_files = write_report(self.settings.out_dir, self._summary(), self.session)
        except Exception as e:  # the summary must still be written
            self.report_files = {"report_error": f"{type(e).__name__}: {e}"}

    def _disk_full(self, e: BaseException) -> str:
        full = e if isinstance(e, DiskFullError) else DiskFullError(self.settings.out_dir, e)
        return f"{full} (the run stopped; everything before it is kept)"

    # ---------------------------------------------------------------- reporting

    def _fps(self) -> float | None:
        elapsed = time.perf_counter() - self.state.t_start
        return self.totals.processed / elapsed if elapsed > 0 and self.totals.processed else None

    def snapshot(self) -> dict[str, Any]:
        """Running totals for progress displays."""
        t = self.totals
        return {
            "frames": t.frames,
            "processed": t.processed,
            "skipped": t.skipped,
            "cells": t.cells,
            "positive": t.positive_count,
            "positive_class": t.positive,
            "fps": self._fps(),
            "total": getattr(self.source, "total", None),
        }

    def _summary(self) -> dict[str, Any]:
        """summary.json's content now (:func:`leukedge.runtime.outputs.build_summary`)."""
        summary = build_summary(
            self.state,
            self.totals,
            self.clf,
            self.source,
            self.finder,
            files_written(self.cells_out, self.annotator),
            batch=self.settings.batch,
            max_wait_s=self.settings.max_wait_s,
            model_name=self.settings.model_name,
        )
        if self.writer is not None:
            summary["latency_ms"].update(self.writer.latency_ms())
            if self.annotator is not None:
                summary["outputs"].update(self.writer.describe())
        if self.live is not None:
            summary["live"] = self.live.describe()
        summary["settings"]["frame_format"] = self.settings.frame_format
        if self.settings.threads is not None:
            summary["settings"]["threads"] = self.settings.threads.to_dict()
        if self.session is not None:
            summary["unique_cells"] = self.session.summary()
            summary["outputs"].update(self.report_files)
        return summary

    def _write_summary(self) -> None:
        write_summary(self.settings.out_dir, self._summary())


# --------------------------------------------------------------------------- helpers


class _graceful_sigint:  # noqa: N801 (used as a context manager, reads like a function)
    """First Ctrl-C asks the run to stop after the current frame; a second one aborts.

    Only in the main thread (where Python delivers signals); elsewhere a no-op.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.interrupted = threading.Event()
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.interrupted.is_set():
            raise KeyboardInterrupt
        self.interrupted.set()
        self.stop.set()

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # not allowed here (embedded interpreters)
                self._previous = None
        return self.interrupted

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_pipeline(
    classifier: Classifier,
    source: Source | Iterable[Frame] | str,
    out_dir: str | Path,
    finder: CellFinder | None = None,
    batch: int = 8,
    max_wait_s: float = 0.02,
    annotate: bool = True,
    show: bool = False,
    max_frames: int | None = None,
    summary_every: int = 25,
    summary_interval_s: float = 10.0,
    queue_size: int = 2,
    progress: Progress | None = None,
    model_name: str | None = None,
    frame_format: str = "jpg",
    live: LiveFeed | None = None,
    threads: ThreadBudget | None = None,
    track: bool = True,
    count: int | None = None,
) -> dict[str, Any]:
    """Run ``classifier`` on every cell of every frame of ``source``; return summary.json's content.

    ``source`` is a :class:`~leukedge.runtime.sources.Source`, any iterable of
    :class:`~leukedge.runtime.sources.Frame`, or a source text for
    :func:`~leukedge.runtime.sources.open_source`. ``finder`` defaults to
    ``CellFinder.from_spec(classifier.spec)`` (cell size measured per frame).
    With ``track`` (the default) each cell is also counted once across frames
    (:mod:`leukedge.runtime.session`; summary.json's ``unique_cells``, report.html);
    ``count`` stops the run once that many unique cells are counted.
    Writes cells.jsonl, summary.json and annotated frames into ``out_dir``, which
    it locks for the run (another run into it is refused with
    :class:`~leukedge.io.OutputError`). A full disk ends the run with status
    "failed"; if not even the final summary fits, :class:`~leukedge.io.DiskFullError`.
    ``frame_format``: annotated frames of image sources as "jpg" (default) or "png";
    ``live``: a feed for the live page (``--serve``); ``threads``: the run's thread
    budget (default :func:`~leukedge.runtime.threads.plan_threads`; sizes OpenCV's pool,
    the classifier was opened with its ONNX Runtime part).
    """
    from leukedge.runtime.cells import CellFinder

    if show:
        from leukedge.runtime.display import require_display

        require_display()
    if isinstance(source, (str, Path)):
        from leukedge.runtime.sources import open_source

        source = open_source(str(source), max_frames=max_frames)
    settings = PipelineSettings(
        out_dir=Path(out_dir),
        batch=batch,
        max_wait_s=max_wait_s,
        annotate=annotate,
        show=show,
        summary_every=summary_every,
        summary_interval_s=summary_interval_s,
        queue_size=queue_size,
        model_name=model_name,
        frame_format=frame_format,
        live=live,
        threads=threads or plan_threads(),
        track=track,
        count=count,
    )
    if settings.threads is not None:
        settings.threads.apply_cv2()
    outfolder.prepare(settings.out_dir)
    finder = finder or CellFinder.from_spec(classifier.spec)
    with outfolder.FolderLock(settings.out_dir):
        outfolder.sweep(settings.out_dir)
        outfolder.clear_previous(settings.out_dir)
        return Pipeline(classifier, source, finder, settings, progress).run()
