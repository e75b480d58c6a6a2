"""Every place a frame can come from, behind one small interface.

``open_source(text)`` understands an image file, a folder or glob of images, a
video file, ``camera:N`` (V4L2/USB), ``csi:N`` (a Jetson CSI camera through
GStreamer's ``nvarguscamerasrc``), ``rtsp://...`` and ``gst:<pipeline>``. Each
yields :class:`Frame` objects in order. A frame that cannot be decoded comes with
``error`` set instead of pixels, so a run lists it and goes on. Live sources
(cameras, streams) survive drop-outs: a failed read is retried with back-off and
the device reopened; after a few failures in a row the source ends cleanly and
says why. Needs only numpy and OpenCV.
"""

from __future__ import annotations

import glob as _glob
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from leukedge.imaging.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    decode_image,
    is_image_file,
    looks_grayscale,
    tiff_page_count,
    to_bgr_uint8,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ts")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
GLOB_CHARS = re.compile(r"[*?\[]")

CSI_DEFAULT = (1920, 1080, 30)
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 5_000

GSTREAMER_HINT = (
    "On a Jetson, use the system OpenCV that comes with JetPack (python3-opencv, built with "
    "GStreamer): a pip OpenCV wheel (opencv-python, opencv-python-headless, opencv-contrib-python) "
    "in the environment shadows it and has no GStreamer. Remove the wheel "
    "(pip uninstall opencv-python opencv-python-headless opencv-contrib-python) and create the "
    "venv with `python3 -m venv --system-site-packages .venv`. Elsewhere, use an OpenCV built "
    "with -DWITH_GSTREAMER=ON."
)


class SourceError(ValueError):
    """A source that cannot be opened; the message says what was tried and what to do."""

    exit_code = 2  # --source names nothing that opens (a source failing mid-run ends the run)


@dataclass
class Frame:
    """One frame in source order: pixels (8-bit BGR) or the reason there are none."""

    index: int
    name: str
    image: np.ndarray | None
    error: str | None = None
    timestamp: float = 0.0  # wall-clock time.time() when the frame was read

    @property
    def ok(self) -> bool:
        return self.image is not None and self.error is None


class Source(Protocol):
    """What the pipeline needs from any source (read-only: the source keeps them up to date)."""

    @property
    def kind(self) -> str:
        """One of images, video, camera, csi, rtsp, gst."""
        ...

    @property
    def description(self) -> str: ...

    @property
    def live(self) -> bool: ...

    @property
    def total(self) -> int | None:
        """Frames the source will yield when known (image lists, video files)."""
        ...

    @property
    def fps(self) -> float | None:
        """Frame rate when the source knows it (for writing an annotated video)."""
        ...

    @property
    def end_reason(self) -> str | None:
        """Why iteration ended, once it has."""
        ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the sources use (tests pass fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def set(self, prop: int, value: float) -> bool: ...

    def release(self) -> None: ...


# --------------------------------------------------------------------------- OpenCV facts


def cv2_location() -> str:
    """Version and file of the loaded cv2, for messages about which OpenCV is in use."""
    return f"OpenCV {cv2.__version__} from {getattr(cv2, '__file__', '?')}"


def build_has(feature: str, section: str | None = None) -> bool:
    """Whether ``cv2.getBuildInformation()`` lists ``feature: YES`` (optionally in a section)."""
    info = cv2.getBuildInformation()
    if section:
        start = info.find(section)
        info = info[start:] if start >= 0 else info
    m = re.search(rf"^\s*{re.escape(feature)}:\s*(\S+)", info, re.M | re.I)
    return m is not None and m.group(1).upper().startswith("YES")


def gstreamer_available() -> bool:
    """Whether the loaded cv2 can open GStreamer pipelines."""
    return build_has("GStreamer", "Video I/O")


def require_gstreamer(what: str) -> None:
    if not gstreamer_available():
        raise SourceError(
            f"{what} needs OpenCV built with GStreamer, and the loaded {cv2_location()} has "
            f"none (cv2.getBuildInformation() says GStreamer: NO). {GSTREAMER_HINT}"
        )


# --------------------------------------------------------------------------- image files


def natural_key(text: str) -> list[Any]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _frame_names(paths: list[Path]) -> list[str]:
    """Names relative to the common folder, so frames of different folders stay distinct."""
    if len(paths) <= 1:
        return [p.name for p in paths]
    parents = {p.parent for p in paths}
    if len(parents) == 1:
        return [p.name for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root)) for p in paths]


class FrameNotes:
    """What a source noticed about its frames that makes results doubtful, said once.

    Grayscale frames: the finder tells nuclei from cytoplasm by stain colour, so a
    gray frame yields few or no cells. Multi-page TIFFs: only the first page is read.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.gray: list[str] = []
        self.multipage: list[tuple[str, int]] = []

    def see(self, name: str, image: np.ndarray) -> None:
        self.frames += 1
        if looks_grayscale(image):
            self.gray.append(name)

    def warnings(self) -> list[str]:
        out = []
        if self.gray:
            out.append(
                f"{len(self.gray)} of {self.frames} frames are grayscale (first: {self.gray[0]}): "
                "the cell finder needs a stained colour image (Wright, Giemsa, May-Gruenwald); "
                "expect few or no cells"
            )
        for name, pages in self.multipage[:5]:
            out.append(f"{name} is a TIFF of {pages} pages: only page 1 was read")
        if len(self.multipage) > 5:
            out.append(f"... and {len(self.multipage) - 5} more multi-page TIFFs")
        return out

    def add_to(self, info: dict[str, Any]) -> dict[str, Any]:
        warnings = self.warnings()
        if warnings:
            info["warnings"] = warnings
        return info


class ImageFiles:
    """A list of image files in order; unreadable files become frames with an error."""

    kind = "images"
    live = False
    fps: float | None = None

    def __init__(self, paths: list[Path], description: str, max_frames: int | None = None) -> None:
        self.paths = paths[:max_frames] if max_frames is not None else list(paths)
        self.names = _frame_names(self.paths)
        self.description = description
        self.total: int | None = len(self.paths)
        self.end_reason: str | None = None
        self.notes = FrameNotes()

    def __iter__(self) -> Iterator[Frame]:
        for i, (path, name) in enumerate(zip(self.paths, self.names, strict=True)):
            try:
                data = path.read_bytes()
                image = decode_image(data, str(path))
            except OSError as e:
                yield Frame(i, name, None, f"cannot read file ({e.strerror or e})", time.time())
                continue
            except ImageReadError as e:
                yield Frame(i, name, None, e.reason, time.time())
                continue
            pages = tiff_page_count(data)
            if pages > 1:
                self.notes.multipage.append((name, pages))
            self.notes.see(name, image)
            yield Frame(i, name, image, None, time.time())
        self.end_reason = "all images read"

    def close(self) -> None:
        """Nothing is held open between frames."""

    def info(self) -> dict[str, Any]:
        info = {"kind": self.kind, "source": self.description, "images": self.total}
        return self.notes.add_to(info)


def glob_files(pattern: str) -> list[Path]:
    """The paths ``pattern`` matches, like ``glob``; ``**`` visits each real folder once.

    ``glob`` follows folder links under ``**`` without noticing loops: a link to a
    parent yields every image ~40 times (until ELOOP), two such links never end.
    Here a folder reached again (same device and inode) is not entered again.
    """
    parts = Path(pattern).parts
    if "**" not in parts:
        return [Path(p) for p in _glob.glob(pattern)]
    first = next(i for i, part in enumerate(parts) if GLOB_CHARS.search(part))
    root = Path(*parts[:first]) if first else Path(".")
    rx = re.compile(_glob_regex(parts[first:]))
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # like glob: hidden ones not
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found += [Path(folder) / f for f in files if rx.fullmatch(prefix + f)]
    return found


def _glob_regex(parts: tuple[str, ...]) -> str:
    """A regex for '/'-joined relative paths matching glob components ``parts``."""
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += r"(?:(?!\.)[^/]+/)*" + (r"(?!\.)[^/]+" if last else "")
            continue
        piece = "" if part.startswith(".") else r"(?!\.)"
        k = 0
        while k < len(part):
            c = part[k]
            end = part.find("]", k + 2) if c == "[" else -1
            if c == "*":
                piece += "[^/]*"
            elif c == "?":
                piece += "[^/]"
            elif end > 0:
                body = part[k + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                piece += "[" + body.replace("\\", "\\\\") + "]"
                k = end
            else:
                piece += re.escape(c)
            k += 1
        out += piece + ("" if last else "/")
    return out


def _image_list(paths: list[Path], text: str) -> list[Path]:
    images = sorted(
        (p for p in paths if p.is_file() and is_image_file(p)), key=lambda p: natural_key(str(p))
    )
    if not images:
        raise SourceError(f"no images in {text} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


# --------------------------------------------------------------------------- captures


def _video_capture(
    target: str | int, api: int, params: list[int] | None = None
) -> cv2.VideoCapture:
    if params:
        return cv2.VideoCapture(target, api, params)
    return cv2.VideoCapture(target, api)


def _camera_capture(target: str | int, api: int) -> Capture:
    """A V4L2 camera holding one buffered frame, so results follow the live image closely."""
    cap = _video_capture(target, api)
    if cap.isOpened():
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


def _read_bgr(cap: Capture) -> np.ndarray | None:
    ok, image = cap.read()
    if not ok or image is None or getattr(image, "size", 0) == 0:
        return None
    return to_bgr_uint8(image)


def _fps_of(cap: Capture) -> float | None:
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    except Exception:  # a capture that cannot say: the writer falls back to a default
        return None
    return fps if 0.5 <= fps <= 1000 else None


class VideoFile:
    """A video file read to its end."""

    kind = "video"
    live = False

    def __init__(
        self,
        path: Path,
        max_frames: int | None = None,
        opener: Callable[[], Capture] | None = None,
    ) -> None:
        self.path = path
        self.description = str(path)
        self.max_frames = max_frames
        self.end_reason: str | None = None
        self.notes = FrameNotes()
        self._cap = (opener or (lambda: _video_capture(str(path), cv2.CAP_ANY)))()
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"cannot open video {path} with {cv2_location()} (not a video, or a codec this "
                "OpenCV lacks; its FFmpeg backend reads mp4/avi/mkv with common codecs)"
            )
        self.fps = _fps_of(self._cap)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = count if count > 0 else None
        if self.total is not None and max_frames is not None:
            self.total = min(self.total, max_frames)

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        stem = self.path.stem
        while self.max_frames is None or i < self.max_frames:
            image = _read_bgr(self._cap)
            if image is None:
                count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                if count > 0 and i < count - 1:  # containers may over-count by one
                    self.end_reason = f"read failed at frame {i} of {count}"
                    raise SourceError(
                        f"{self.path}: {self.end_reason} the container announces (a truncated "
                        "or damaged file); the frames before it were processed"
                    )
                self.end_reason = "end of video"
                return
            name = f"{stem}#{i:06d}"
            self.notes.see(name, image)
            yield Frame(i, name, image, None, time.time())
            i += 1
        self.end_reason = f"--max-frames {self.max_frames} reached"

    def close(self) -> None:
        self._cap.release()

    def info(self) -> dict[str, Any]:
        info = {
            "kind": self.kind,
            "source": self.description,
            "fps": self.fps,
            "frames": self.total,
        }
        return self.notes.add_to(info)


class LiveSource:
    """A camera or stream that may drop out: reads are retried with back-off, then it ends.

    ``opener`` makes a new capture (called again to reconnect). After ``retries``
    failed reads in a row (sleeping ``backoff_s`` x 2^k, at most ``max_backoff_s``,
    and reopening the capture from the second failure on) the source ends cleanly
    with ``end_reason`` saying so.
    """

    live = True
    total: int | None = None

    def __init__(
        self,
        kind: str,
        description: str,
        opener: Callable[[], Capture],
        max_frames: int | None = None,
        retries: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        hint: str = "",
    ) -> None:
        self.kind = kind
        self.description = description
        self.max_frames = max_frames
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._opener = opener
        self._sleep = sleep
        self.end_reason: str | None = None
        self.read_failures = 0
        self.reconnects = 0
        self.notes = FrameNotes()
        self._cap = self._open_first(hint)
        self.fps = _fps_of(self._cap)

    def _open_first(self, hint: str) -> Capture:
        """The first open gets up to 3 tries: a camera can be busy for a moment at start."""
        tries = min(self.retries, 2) + 1
        for attempt in range(tries):
            cap = self._opener()
            if cap.isOpened():
                return cap
            cap.release()
            if attempt < tries - 1:
                self._sleep(self._delay(attempt))
        raise SourceError(
            f"cannot open {self.description} after {tries} tries with "
            f"{cv2_location()}. {hint}".strip()
        )

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * (2**attempt))

    def _reopen(self) -> None:
        self._cap.release()
        self._cap = self._opener()
        self.reconnects += 1

    def _read_with_retries(self) -> np.ndarray | None:
        failures = 0
        while True:
            image = _read_bgr(self._cap) if self._cap.isOpened() else None
            if image is not None:
                return image
            self.read_failures += 1
            failures += 1
            if failures > self.retries:
                self.end_reason = (
                    f"{self.description} stopped delivering frames "
                    f"({failures} failed reads in a row, {self.reconnects} reconnects)"
                )
                return None
            self._sleep(self._delay(failures - 1))
            if failures >= 2:
                self._reopen()

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while self.max_frames is None or i < self.max_frames:
            image = self._read_with_retries()
            if image is None:
                return
            name = f"{self.kind}#{i:06d}"
            self.notes.see(name, image)
            yield Frame(i, name, image, None, time.time())
            i += 1
        self.end_reason = f"--max-frames {self.max_frames} reached"

    def close(self) -> None:
        self._cap.release()

    def info(self) -> dict[str, Any]:
        info = {
            "kind": self.kind,
            "source": self.description,
            "fps": self.fps,
            "read_failures": self.read_failures,
            "reconnects": self.reconnects,
        }
        return self.notes.add_to(info)


# --------------------------------------------------------------------------- parsing


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30) -> str:
    """GStreamer pipeline of a Jetson CSI camera ending in BGR frames for OpenCV."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )


def parse_csi(spec: str) -> tuple[int, int, int, int]:
    """``0`` or ``0:1280x720`` or ``0:1280x720@60`` -> (sensor id, width, height, fps)."""
    m = re.fullmatch(r"(\d+)(?::(\d+)x(\d+)(?:@(\d+))?)?", spec.strip())
    if not m:
        raise SourceError(f"csi source must look like csi:0 or csi:0:1280x720@30, got csi:{spec}")
    w, h, fps = CSI_DEFAULT
    return (
        int(m.group(1)),
        int(m.group(2) or w),
        int(m.group(3) or h),
        int(m.group(4) or fps),
    )


def gst_pipeline(text: str) -> str:
    """A user pipeline, with a BGR appsink appended when it does not end in one."""
    pipeline = text.strip()
    if not pipeline:
        raise SourceError("gst: needs a pipeline, e.g. gst:videotestsrc ! videoconvert ! appsink")
    if "appsink" not in pipeline:
        pipeline += " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    return pipeline


def _camera_target(spec: str) -> tuple[str | int, int]:
    spec = spec.strip()
    if not spec.isdigit() and not spec.startswith("/dev/"):
        raise SourceError(
            f"camera source must look like camera:0 or camera:/dev/video0, got camera:{spec}"
        )
    target: str | int = int(spec) if spec.isdigit() else spec
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    return target, api


def _stream_params() -> list[int]:
    return [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        OPEN_TIMEOUT_MS,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        READ_TIMEOUT_MS,
    ]


def open_source(
    text: str,
    max_frames: int | None = None,
    retries: int = 5,
    backoff_s: float = 0.2,
    opener: Callable[[], Capture] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Source:
    """Open ``text`` as a frame source (see the module docstring for what it understands).

    ``opener`` replaces the ``cv2.VideoCapture`` factory of video and live sources
    (for other capture libraries and for tests); ``retries``/``backoff_s`` tune how
    live sources ride out drop-outs.
    """
    if max_frames is not None and max_frames < 1:
        raise SourceError(f"--max-frames must be >= 1, got {max_frames}")
    text = str(text).strip()
    if not text:
        raise SourceError("empty source")

    def live(kind: str, description: str, default: Callable[[], Capture], hint: str) -> LiveSource:
        return LiveSource(
            kind,
            description,
            opener or default,
            max_frames=max_frames,
            retries=retries,
            backoff_s=backoff_s,
            sleep=sleep,
            hint=hint,
        )

    low = text.lower()
    if low.startswith("camera:"):
        target, api = _camera_target(text[7:])
        return live(
            "camera",
            f"camera {target}",
            lambda: _camera_capture(target, api),
            hint="Check that the camera is plugged in and not used by another program "
            "(`v4l2-ctl --list-devices` lists cameras).",
        )
    if low.startswith("csi:"):
        sensor, w, h, fps = parse_csi(text[4:])
        if opener is None:
            require_gstreamer(f"csi:{text[4:]}")
        pipeline = csi_pipeline(sensor, w, h, fps)
        return live(
            "csi",
            f"CSI camera {sensor} ({w}x{h}@{fps})",
            lambda: _video_capture(pipeline, cv2.CAP_GSTREAMER),
            hint=f"Pipeline: {pipeline}. Check the sensor with "
            f"`gst-launch-1.0 nvarguscamerasrc sensor-id={sensor} num-buffers=1 ! fakesink` "
            "and that nvargus-daemon is running.",
        )
    if low.startswith("gst:"):
        pipeline = gst_pipeline(text[4:])
        if opener is None:
            require_gstreamer("a gst: source")
        return live(
            "gst",
            f"GStreamer pipeline {pipeline}",
            lambda: _video_capture(pipeline, cv2.CAP_GSTREAMER),
            hint="Test the pipeline with gst-launch-1.0 (replace appsink with fakesink).",
        )
    if low.startswith(STREAM_PREFIXES):
        return live(
            "rtsp",
            _redact(text),
            lambda: _video_capture(text, cv2.CAP_ANY, _stream_params()),
            hint="Check the URL, credentials and network (ffplay or VLC opens the same URL).",
        )
    return _open_path(text, max_frames, opener)


def _redact(url: str) -> str:
    """The URL without its password, for logs and summary.json."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _open_path(text: str, max_frames: int | None, opener: Callable[[], Capture] | None) -> Source:
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFiles(_image_list(list(path.iterdir()), str(path)), str(path), max_frames)
    if path.is_file():
        if is_image_file(path):
            return ImageFiles([path], str(path), max_frames)
        if path.suffix.lower() in VIDEO_SUFFIXES or opener is not None:
            return VideoFile(path, max_frames, opener)
        raise SourceError(
            f"{path} is neither an image ({', '.join(IMAGE_SUFFIXES)}) "
            f"nor a video ({', '.join(VIDEO_SUFFIXES)})"
        )
    if GLOB_CHARS.search(text):
        return ImageFiles(_image_list(glob_files(str(path)), text), text, max_frames)
    raise SourceError(
        f"no such file or folder: {text} (a source is an image, a folder or glob of images, a "
        "video file, camera:N, csi:N, rtsp://... or gst:<pipeline>)"
    )
