"""A live window for ``leukedge run --show``, and a clear error where none can open.

pip's ``opencv-python-headless`` (and OpenCV builds without GTK/Qt) cannot open
windows; ``cv2.imshow`` then fails deep inside a run. The check happens before
the model is loaded and says what to install. On a Jetson the system OpenCV from
JetPack has a GUI and GStreamer; a pip wheel would shadow both.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

WINDOW = "leukedge"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc


class DisplayUnavailable(RuntimeError):
    """The loaded OpenCV has no GUI backend; the message says which one to install."""

    exit_code = 2  # --show where no window can open: a usage error


def gui_backend() -> str:
    """Name of the loaded cv2's GUI backend (GTK, QT, WIN32, COCOA...), or '' when it has none."""
    current = getattr(cv2, "currentUIFramework", None)
    if current is not None:
        try:
            return str(current() or "")
        except cv2.error:
            return ""
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.M)
    name = m.group(1) if m else ""
    return "" if name.upper() in ("", "NONE", "NO") else name


def require_display() -> None:
    if gui_backend():
        return
    raise DisplayUnavailable(
        f"--show needs an OpenCV with a GUI, and the loaded OpenCV {cv2.__version__} "
        f"({getattr(cv2, '__file__', '?')}) has none (probably opencv-python-headless). "
        "Install the GUI wheel instead: pip uninstall -y opencv-python-headless && "
        "pip install opencv-python. On a Jetson, do not pip-install OpenCV: keep the system "
        "OpenCV from JetPack (it has GTK and GStreamer) and create the venv with "
        "--system-site-packages. Without --show the annotated frames are still written to --out."
    )


class Display:
    """One OpenCV window; ``show`` returns False once the user quits (q, Esc, window closed)."""

    def __init__(self, title: str = WINDOW, max_side: int = 1280) -> None:
        require_display()
        self.title = title
        self.max_side = max_side
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        self._shown = False

    def show(self, image: np.ndarray) -> bool:
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            image = cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return False
        self._shown = True
        return True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
