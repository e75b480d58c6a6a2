"""The live page's web application (Starlette): the page, its frames, its numbers, its buttons.

```
GET  /                  the page (one static HTML file)
GET  /api/state         counts since the last reset and for the run, speed, backend, warnings
GET  /frame.jpg?after=N the newest annotated frame once it is newer than frame N (long poll;
                        204 when none came within ``timeout`` s); X-Frame-* headers say which
GET  /stream.mjpg       the same frames as MJPEG (for a video player), at most ``max_fps``
POST /api/pause         {"paused": true|false}
POST /api/reset         count from now on (on the page)
POST /api/snapshot      save the frame on screen and its numbers under OUT/snapshots/
```
Frames are never queued for a viewer: each request gets the newest frame, so a
slow network skips frames instead of falling behind. With a token every request
must carry it (``X-Leukedge-Token`` or ``Authorization: Bearer`` header, or
``?token=``): missing 401, wrong 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from leukedge.runtime.live import LiveFeed
from leukedge.serve.bind import TOKEN_HEADER, TOKEN_QUERY, token_ok

MAX_POLL_S = 5.0
DEFAULT_MAX_FPS = 30.0
BOUNDARY = "leukedgeframe"


def page_html() -> bytes:
    return resources.files("leukedge.serve").joinpath("page/index.html").read_bytes()


class TokenGate:
    """ASGI middleware: every HTTP request carries the token (401 without, 403 wrong)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = given_token(Request(scope))
        if given is None:
            response: Response = JSONResponse(
                {"error": "this page needs its token (?token=... or the X-Leukedge-Token header)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not token_ok(given, self.token):
            response = JSONResponse({"error": "wrong token"}, status_code=403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def given_token(request: Request) -> str | None:
    header = request.headers.get(TOKEN_HEADER)
    if header is not None:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get(TOKEN_QUERY)


def create_app(feed: LiveFeed, token: str | None = None, max_fps: float | None = None) -> ASGIApp:
    """The application serving ``feed``; ``max_fps``: the source's frame rate (MJPEG cap)."""
    fps = max_fps if max_fps and max_fps > 0 else DEFAULT_MAX_FPS
    no_store = {"Cache-Control": "no-store"}

    async def index(request: Request) -> Response:
        return Response(page_html(), media_type="text/html; charset=utf-8", headers=no_store)

    async def state(request: Request) -> Response:
        return JSONResponse({**feed.view(), "max_fps": fps}, headers=no_store)

    async def frame(request: Request) -> Response:
        after = _number(request.query_params.get("after"), 0, int)
        timeout = min(MAX_POLL_S, _number(request.query_params.get("timeout"), 2.0, float))
        jpeg, meta = await anyio.to_thread.run_sync(feed.wait_frame, after, max(0.0, timeout))
        if jpeg is None or meta.get("seq", 0) <= after:
            return Response(status_code=204, headers=no_store)
        headers = {
            **no_store,
            "X-Frame-Seq": str(meta["seq"]),
            "X-Frame-Index": str(meta["index"]),
            "X-Frame-Captured-Ms": str(meta["captured_ms"]),
            "X-Frame-Published-Ms": str(meta["published_ms"]),
        }
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    async def stream(request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            seq = 0
            loop = asyncio.get_running_loop()
            while not feed.closed:
                t = loop.time()
                jpeg, meta = await anyio.to_thread.run_sync(feed.wait_frame, seq, 1.0)
                if jpeg is None or meta.get("seq", 0) <= seq:
                    continue
                seq = meta["seq"]
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                yield head.encode() + jpeg + b"\r\n"
                await asyncio.sleep(max(0.0, 1.0 / fps - (loop.time() - t)))

        return StreamingResponse(
            parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}", headers=no_store
        )

    async def pause(request: Request) -> Response:
        body = await _json(request)
        wanted = body.get("paused", not feed.paused)
        return JSONResponse({"paused": feed.set_paused(bool(wanted))})

    async def reset(request: Request) -> Response:
        return JSONResponse({"reset": feed.reset()})

    async def snapshot(request: Request) -> Response:
        try:
            saved = await anyio.to_thread.run_sync(feed.snapshot)
        except (OSError, RuntimeError) as e:
            return JSONResponse({"error": f"snapshot not saved: {e}"}, status_code=500)
        return JSONResponse(saved)

    app: ASGIApp = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/frame.jpg", frame),
            Route("/stream.mjpg", stream),
            Route("/api/pause", pause, methods=["POST"]),
            Route("/api/reset", reset, methods=["POST"]),
            Route("/api/snapshot", snapshot, methods=["POST"]),
        ]
    )
    return TokenGate(app, token) if token else app


def _number(text: str | None, default: Any, kind: type) -> Any:
    try:
        return kind(text) if text is not None else default
    except ValueError:
        return default


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
