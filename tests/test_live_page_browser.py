"""The live page in a real browser: a run on a synthetic video, watched through `--serve`.

Chromium from the OS (``/usr/bin/chromium``; CI installs it with apt) driven by
Playwright's Python package; skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinputs import tiny_onnx

from leukedge.runtime.cells import Cell
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.live import LiveFeed
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import Frame

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"


def chromium_path() -> str:
    path = os.environ.get("LEUKEDGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("no Chromium here (apt-get install chromium); the live page is not browsed")
    return path


class Blobs:
    """Two round 'cells' per frame, found where they are drawn."""

    cell_diameter_px = None
    um_per_px = None

    def find(self, frame: np.ndarray) -> list[Cell]:
        h, w = frame.shape[:2]
        out = []
        for b in ((20, 20, 80, 80), (w - 90, h - 90, w - 30, h - 30)):
            out.append(
                Cell(
                    box=b,
                    centroid=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                    mask=np.ones((b[3] - b[1], b[2] - b[0]), bool),
                    area=(b[3] - b[1]) * (b[2] - b[0]),
                    touches_edge=False,
                )
            )
        return out


class SyntheticVideo:
    """A camera-like source: synthetic frames at ``fps`` until stopped."""

    kind = "camera"
    live = True
    total = None

    def __init__(self, fps: float = 20.0) -> None:
        self.fps = fps
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(0)
        i = 0
        while not self.stop.is_set() and i < 2000:
            img = np.full((240, 320, 3), 230, np.uint8)
            x = 40 + (i * 3) % 200
            img[60:120, x : x + 60] = rng.integers(80, 160, (60, 60, 3), np.uint8)
            yield Frame(i, f"camera#{i:06d}", img)
            i += 1
            time.sleep(1.0 / self.fps)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "fps": self.fps}


@pytest.mark.slow
def test_the_live_page_shows_frames_and_counts(tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (dev extra)"
    )
    pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
    chromium = chromium_path()
    from leukedge.serve.bind import Bind
    from leukedge.serve.server import LiveServer

    clf = Classifier.load(tiny_onnx(tmp_path / "m" / "model.fp32.onnx"), "ort", "cpu")
    out = tmp_path / "out"
    feed = LiveFeed(out)
    source = SyntheticVideo()
    server = LiveServer(feed, Bind("127.0.0.1", 0), TOKEN, max_fps=source.fps)
    url = server.start()
    result: dict[str, Any] = {}

    def run() -> None:
        result["summary"] = run_pipeline(clf, source, out, Blobs(), live=feed)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{url}?token={TOKEN}")
            page.wait_for_function("window.leukedge && window.leukedge.frames >= 2", timeout=20000)
            first = int(page.inner_text("#cells"))
            page.wait_for_function(
                f"Number(document.getElementById('cells').textContent) > {first}", timeout=20000
            )
            assert page.eval_on_selector("#frame", "img => img.naturalWidth") == 320
            lat = page.evaluate("window.leukedge.latencies")
            assert lat and all(x["capture_to_screen_ms"] >= 0 for x in lat)
            page.click("#reset")
            page.wait_for_function("window.leukedge.state.since_reset.resets === 1")
            page.click("#snapshot")
            page.wait_for_function(
                "document.getElementById('notice').textContent.startsWith('saved')"
            )
            page.click("#pause")
            page.wait_for_function("window.leukedge.state.paused === true")
            shot = os.environ.get("LEUKEDGE_LIVE_SCREENSHOT")
            if shot:
                page.screenshot(path=shot)
            page.click("#pause")
            page.wait_for_function("window.leukedge.state.paused === false")
            browser.close()
    finally:
        source.stop.set()
        runner.join(30)
        server.stop()
        clf.close()
    s = result["summary"]
    assert s["status"] == "completed" and s["cells"]["total"] > 0
    assert len(s["live"]["resets"]) == 1 and len(s["live"]["snapshots"]) == 2
    assert all((out / f).is_file() for f in s["live"]["snapshots"])
