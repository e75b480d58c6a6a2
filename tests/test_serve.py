"""The live page's server (`leukedge run --serve`) and the annotated-frame writer thread.

HTTP endpoints through Starlette's TestClient (skipped without the [serve] extra);
the writer's drop rule on slow writes; the run's feed; the command line's refusals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinputs import tiny_onnx
from stub_finders import TwoCells
from typer.testing import CliRunner

from leukedge.runtime.classifier import Classifier
from leukedge.runtime.live import LiveFeed, warnings_of
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import Frame
from leukedge.runtime.threads import plan_threads
from leukedge.serve.bind import Bind, check_access, parse_bind, token_ok
from leukedge.validate import UsageError

TOKEN = "s3cret-token-123"


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Classifier]:
    c = Classifier.load(tiny_onnx(tmp_path_factory.mktemp("m") / "model.fp32.onnx"), "ort", "cpu")
    yield c
    c.close()


class FakeSource:
    """n random frames; ``live`` like a camera (its annotated frames may be dropped)."""

    def __init__(self, n: int, live: bool, kind: str = "camera") -> None:
        self.n, self.live, self.kind, self.fps = n, live, kind, 25.0
        self.total = n

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(0)
        for i in range(self.n):
            yield Frame(i, f"{self.kind}#{i:06d}", rng.integers(0, 255, (48, 64, 3), np.uint8))

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "live": self.live}


# --------------------------------------------------------------------------- bind and token


def test_bind_parsing_and_who_may_listen() -> None:
    assert parse_bind("8080") == Bind("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == Bind("0.0.0.0", 9000)
    assert parse_bind("[::1]:0") == Bind("::1", 0) and Bind("::1", 0).loopback
    assert Bind("localhost", 1).loopback and not Bind("192.168.1.5", 1).loopback
    for bad in ("http", "70000", "host:", "-1"):
        with pytest.raises(UsageError):
            parse_bind(bad)
    check_access(Bind("127.0.0.1", 1), None)  # this machine only: no token needed
    with pytest.raises(UsageError, match="--token"):
        check_access(Bind("0.0.0.0", 8080), None)
    with pytest.raises(UsageError, match="8 characters"):
        check_access(Bind("0.0.0.0", 8080), "short")
    check_access(Bind("0.0.0.0", 8080), TOKEN)
    assert token_ok(TOKEN, TOKEN) and not token_ok("x" + TOKEN, TOKEN) and not token_ok(None, TOKEN)


def test_run_refuses_the_network_without_a_token(tmp_path: Path) -> None:
    from leukedge.cli import app

    result = CliRunner().invoke(
        app, ["run", str(tmp_path), "--source", str(tmp_path), "--serve", "0.0.0.0:0"]
    )
    assert result.exit_code == 2, result.output
    assert "--token" in result.output
    bad = CliRunner().invoke(app, ["run", str(tmp_path), "-s", str(tmp_path), "--serve", "x:y"])
    assert bad.exit_code == 2 and "[HOST:]PORT" in bad.output
    fmt = CliRunner().invoke(app, ["run", str(tmp_path), "-s", "x", "--frame-format", "gif"])
    assert fmt.exit_code == 2


# --------------------------------------------------------------------------- HTTP


def feed_with_frame(out: Path) -> LiveFeed:
    import cv2

    feed = LiveFeed(out)
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    feed.publish_stats(
        {
            "status": "running",
            "model": {"positive_class": "all"},
            "frames": {"processed": 3},
            "cells": {"total": 10, "by_class": {"hem": 6, "all": 4}},
            "all_count": 4,
            "blast_ratio": {"ratio": 0.4, "ci95": [0.17, 0.69]},
            "domain_shift": {"warning": "cells unlike the training data"},
            "source": {"warnings": ["scale guessed"]},
        }
    )
    feed.publish_frame(buf.tobytes(), 2, "f2", time.perf_counter() - 0.05)
    return feed


def client(feed: LiveFeed, token: str | None = None) -> Any:
    pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from leukedge.serve.app import create_app

    return TestClient(create_app(feed, token))


def test_token_is_required_and_checked(tmp_path: Path) -> None:
    c = client(feed_with_frame(tmp_path), TOKEN)
    for path in ("/", "/api/state", "/frame.jpg?timeout=0"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"X-Leukedge-Token": "wrong-token"}).status_code == 403
        assert c.get(f"{path}{'&' if '?' in path else '?'}token=nope").status_code == 403
    assert c.post("/api/reset").status_code == 401
    assert c.get("/", headers={"X-Leukedge-Token": TOKEN}).status_code == 200
    assert c.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get(f"/frame.jpg?timeout=0&token={TOKEN}").status_code == 200


def test_page_state_and_frames(tmp_path: Path) -> None:
    c = client(feed_with_frame(tmp_path))
    page = c.get("/")
    assert page.status_code == 200 and "leukedge live" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    s = c.get("/api/state").json()
    assert s["since_reset"]["cells"] == 10 and s["since_reset"]["blast_ratio"]["positive"] == 4
    assert "domain shift: cells unlike the training data" in s["warnings"]
    assert "source: scale guessed" in s["warnings"]
    f = c.get("/frame.jpg?after=0")
    assert f.status_code == 200 and f.content[:3] == b"\xff\xd8\xff"
    assert f.headers["x-frame-seq"] == "1" and f.headers["x-frame-index"] == "2"
    assert float(f.headers["x-frame-captured-ms"]) < float(f.headers["x-frame-published-ms"])
    assert c.get("/frame.jpg?after=1&timeout=0").status_code == 204  # nothing newer


def test_pause_reset_and_snapshot(tmp_path: Path) -> None:
    feed = feed_with_frame(tmp_path)
    c = client(feed)
    assert c.post("/api/pause", json={"paused": True}).json() == {"paused": True}
    assert feed.paused and c.get("/api/state").json()["paused"]
    assert c.post("/api/pause", json={"paused": False}).json() == {"paused": False}
    assert not feed.paused
    reset = c.post("/api/reset").json()["reset"]
    assert reset["total"] == 10 and reset["positive"] == 4
    assert c.get("/api/state").json()["since_reset"]["cells"] == 0
    feed.publish_stats(
        {**feed.stats, "cells": {"total": 13, "by_class": {"hem": 7, "all": 6}}, "all_count": 6}
    )
    since = c.get("/api/state").json()["since_reset"]
    assert since["cells"] == 3 and since["by_class"] == {"hem": 1, "all": 2}
    assert since["blast_ratio"]["positive"] == 2
    saved = c.post("/api/snapshot").json()["files"]
    assert {Path(f).suffix for f in saved} == {".jpg", ".json"}
    assert all((tmp_path / f).is_file() for f in saved)
    assert (tmp_path / saved[0]).read_bytes()[:3] == b"\xff\xd8\xff"
    again = c.post("/api/snapshot").json()["files"]
    assert set(again).isdisjoint(saved)  # a second snapshot never replaces the first
    assert feed.describe()["snapshots"] == saved + again and len(feed.describe()["resets"]) == 1


def test_warnings_are_collected_from_every_block() -> None:
    s = {"domain_shift": {"warning": "w1"}, "unique_cells": {"warning": None}, "source": {}}
    assert warnings_of(s) == ["domain shift: w1"]


# --------------------------------------------------------------------------- the run's side


def test_a_run_feeds_the_page_and_records_it(clf: Classifier, tmp_path: Path) -> None:
    feed = LiveFeed(tmp_path / "out")
    s = run_pipeline(
        clf,
        FakeSource(6, live=False, kind="images"),
        tmp_path / "out",
        TwoCells(touches_edge=False),
        live=feed,
    )
    assert s["status"] == "completed" and s["live"]["frames_published"] == 6
    view = feed.view()
    assert view["status"] == "completed" and view["since_reset"]["cells"] == 12
    jpeg, meta = feed.wait_frame(0, 0)
    assert jpeg is not None and jpeg[:3] == b"\xff\xd8\xff" and meta["index"] == 5
    assert s["outputs"]["annotated_frames"] == 6  # JPEG bytes shared with the page
    assert s["settings"]["frame_format"] == "jpg"
    assert s["settings"]["threads"]["ort_intra_op_threads"] >= 1


def test_the_page_alone_needs_no_annotated_output(clf: Classifier, tmp_path: Path) -> None:
    feed = LiveFeed(tmp_path / "out")
    s = run_pipeline(
        clf,
        FakeSource(4, False, "images"),
        tmp_path / "out",
        TwoCells(touches_edge=False),
        annotate=False,
        live=feed,
    )
    assert s["cells"]["total"] == 8 and "annotated" not in s["outputs"]
    assert not (tmp_path / "out" / "annotated").exists()
    assert feed.seq >= 1 and s["latency_ms"]["annotate"]["n"] == feed.seq


def test_pause_holds_the_capture_thread() -> None:
    feed = LiveFeed()
    stop = threading.Event()
    feed.set_paused(True)
    t = threading.Thread(target=feed.wait_while_paused, args=(stop,))
    t.start()
    t.join(0.2)
    assert t.is_alive()
    feed.set_paused(False)
    t.join(2)
    assert not t.is_alive()
    feed.set_paused(True)
    feed.close()  # the end of the run releases a paused capture thread too
    assert not feed.paused


# --------------------------------------------------------------------------- the writer thread


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing one annotated frame takes 30 ms, far longer than classifying it."""
    from leukedge.runtime import outputs

    def slow(write: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            time.sleep(0.03)
            return write(*a, **kw)

        return wrapper

    monkeypatch.setattr(outputs.AnnotatedVideo, "write", slow(outputs.AnnotatedVideo.write))
    monkeypatch.setattr(
        outputs.AnnotatedImages, "write_encoded", slow(outputs.AnnotatedImages.write_encoded)
    )


def test_a_live_source_drops_annotated_frames_never_cells(
    clf: Classifier, tmp_path: Path, slow_writes: None
) -> None:
    s = run_pipeline(clf, FakeSource(60, live=True), tmp_path / "out", TwoCells(touches_edge=False))
    out = s["outputs"]
    assert s["cells"]["total"] == 120 and s["frames"]["processed"] == 60  # every cell counted
    assert out["annotated_dropped"] > 0
    assert out["annotated_frames"] + out["annotated_dropped"] == 60
    assert "dropped" in out["annotated_drop_rule"]


def test_a_file_source_never_drops(clf: Classifier, tmp_path: Path, slow_writes: None) -> None:
    s = run_pipeline(
        clf,
        FakeSource(20, live=False, kind="images"),
        tmp_path / "out",
        TwoCells(touches_edge=False),
    )
    out = s["outputs"]
    assert out["annotated_dropped"] == 0 and out["annotated_frames"] == 20
    assert len(list((tmp_path / "out" / "annotated").iterdir())) == 20


def test_a_write_that_fails_ends_the_run_with_its_reason(
    clf: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from leukedge.runtime import outputs

    def full(*a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.AnnotatedImages, "write_encoded", full)
    s = run_pipeline(
        clf,
        FakeSource(10, live=False, kind="images"),
        tmp_path / "out",
        TwoCells(touches_edge=False),
    )
    assert s["status"] == "failed" and "disk" in s["message"].lower()


def test_thread_budget_never_exceeds_the_cores() -> None:
    for cores in (1, 2, 4, 16):
        b = plan_threads(cores)
        assert b.ort_threads >= 1 and b.cv2_threads >= 1 and not b.spinning
        assert b.ort_threads + 1 <= max(cores, 2)  # capture keeps a core of its own
        assert b.ort_threads + b.cv2_threads <= max(cores, 2)
    assert plan_threads(2).ort_threads == 1
