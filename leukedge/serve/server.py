"""The live page's server: uvicorn in a thread of the run's own process.

The socket is bound here, in the caller's thread, so a port in use or an address
that is not this machine's is a clear error before the run starts. The server
thread never touches signals (Ctrl-C stays the run's); :meth:`LiveServer.stop`
ends open viewers and the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from leukedge.runtime.live import LiveFeed
from leukedge.serve.bind import Bind
from leukedge.validate import UsageError

START_TIMEOUT_S = 10.0


class ServeUnavailable(UsageError):
    """--serve without the [serve] extra installed."""


def require_serve() -> None:
    """Starlette and uvicorn are importable, or a message that says how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ServeUnavailable(
            f"--serve needs the [serve] extra ({e.name} is missing): pip install 'leukedge[serve]'"
        ) from None


class LiveServer:
    """Serves ``feed`` at ``bind`` until :meth:`stop`; ``url`` once started."""

    def __init__(
        self, feed: LiveFeed, bind: Bind, token: str | None = None, max_fps: float | None = None
    ) -> None:
        self.feed = feed
        self.bind = bind
        self.token = token
        self.max_fps = max_fps
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.bind.url(self.port)

    def start(self) -> str:
        require_serve()
        import uvicorn

        from leukedge.serve.app import create_app

        self._sock = self._listen()
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.feed, self.token, self.max_fps),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="leukedge-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the live page did not start: {self.error or 'timed out'}")
        return self.url

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.bind.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind.host, self.bind.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise UsageError(
                f"--serve {self.bind.host}:{self.bind.port}: cannot listen there ({e.strerror or e}); "
                "choose another port (0 picks a free one) or an address of this machine"
            ) from None
        sock.set_inheritable(True)
        return sock

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as e:  # reported by start() or stop(), never lost
            self.error = e

    def stop(self) -> None:
        """End viewers (the feed closes), stop the server thread, free the port."""
        self.feed.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def live_page(
    bind: Bind | None,
    token: str | None,
    out_dir: Path,
    max_fps: float | None,
    announce: Callable[[str], None],
) -> Iterator[LiveFeed | None]:
    """The run's live feed served at ``bind`` for the ``with`` block (None: no page)."""
    if bind is None:
        yield None
        return
    feed = LiveFeed(out_dir)
    server = LiveServer(feed, bind, token, max_fps)
    url = server.start()
    announce(url + (f"?token={token}" if token else ""))
    try:
        yield feed
    finally:
        server.stop()
