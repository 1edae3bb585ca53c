"""The live routes of `stream-pose serve http`: the browser page and the binary frame stream.

- `GET /`: one self-contained page (`serve/web/live.html`: plain JS and Canvas, no external
  request) that streams the webcam or a local video file to `WS /ws/pose` and draws the answers.
- `WS /ws/pose`: one tracking session per connection. The server first sends
  `{"type": "hello", "model_version", "max_frame_bytes", "max_side", "joint_names", "bones"}`.
  Then each binary message is one encoded frame (JPEG; PNG/WebP also decode) and gets exactly
  one JSON answer, in order:
  - `{"type": "pose", ...}`: the `/pose/hybrid` fields (`serve.schemas.hybrid_response`);
  - `{"type": "dropped", "frame_number"}`: a frame that arrived while an earlier one waited,
    replaced by the newer one (the newest frame wins; frames are never queued);
  - `{"type": "error", "frame_number", "error"}`: a frame that is not a decodable image.
  Frames are numbered 0, 1, ... in arrival order and timed by their arrival (the One Euro
  filters see real time). A text message `{"type": "reset"}` starts a new session (a new video).
  Close codes: 1009 a frame over `--max-frame-mb`; 1008 a flood (more than `MAX_DROPPED` frames
  sent during one frame's processing), a text message that is not a known command, or a page of
  another origin; 1013 more than `--max-sessions` live connections; 1011 the model failed.
Browsers let any web page open a websocket to 127.0.0.1 (no CORS for websockets), so a
connection whose `Origin` is not this server's own host is refused; clients that send no
`Origin` (scripts, `serve.client`) are accepted. With a server token (`serve.access`) a
connection without it is closed with 1008.
A client keeps one frame in flight: it sends the newest frame when the previous answer arrives,
so latency does not grow behind a slow model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from serve.access import token_ok
from serve.images import ImageDecodeError, decode_image
from serve.schemas import hybrid_response
from stream_pose.skeleton import BONES, JOINT_NAMES

logger = logging.getLogger(__name__)

MAX_DROPPED = 50  # frames replaced during one frame's processing before a flood is closed
CLOSE_TOO_BIG, CLOSE_POLICY, CLOSE_BUSY, CLOSE_ERROR = 1009, 1008, 1013, 1011
PAGE = "live.html"


def page_html() -> str:
    """The live page, with the skeleton's joint names and bones filled in."""
    text = resources.files("serve").joinpath("web", PAGE).read_text(encoding="utf-8")
    skeleton = json.dumps({"joint_names": list(JOINT_NAMES), "bones": [list(b) for b in BONES]})
    return text.replace("/*SKELETON*/null", skeleton)


class _LiveStream:
    """One `WS /ws/pose` connection: a receiver that keeps the newest frame, a worker that
    answers it. Frames are never queued: at most one waits while one is processed."""

    def __init__(self, ws: WebSocket, engine: Any, limit_bytes: int) -> None:
        self.ws, self.engine, self.limit = ws, engine, limit_bytes
        self.session: Any = None
        self.session_lock = threading.Lock()  # a step and a close never overlap
        self.pending: tuple[int, float, bytes] | None = None
        self.ready = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.received = self.dropped_in_a_row = 0
        self.t_start = time.monotonic()

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.client_state == WebSocketState.CONNECTED:
            async with self.send_lock:
                await self.ws.send_text(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        logger.info("ws/pose closed with %d: %s", code, reason)
        if self.ws.client_state == WebSocketState.CONNECTED:
            await self.ws.close(code=code, reason=reason[:120])  # a close reason is <= 123 bytes

    async def new_session(self) -> None:
        old, self.session = self.session, await run_in_threadpool(self.engine.new_session)
        if old is not None:
            await run_in_threadpool(self._close_session, old)

    def _close_session(self, session: Any) -> None:
        with self.session_lock:
            session.close()

    async def receive(self) -> None:
        """Read messages until the client goes; returns after closing on a protocol error."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if not await self._frame(data):
                    return
            elif not await self._command(text or ""):
                return

    async def _frame(self, data: bytes) -> bool:
        if len(data) > self.limit:
            await self.close(CLOSE_TOO_BIG, f"frame of {len(data)} bytes is over the limit of "
                                            f"{self.limit} bytes (--max-frame-mb)")
            return False
        number, self.received = self.received, self.received + 1
        if self.pending is not None:
            self.dropped_in_a_row += 1
            if self.dropped_in_a_row > MAX_DROPPED:
                await self.close(CLOSE_POLICY, "too fast: send the next frame after the "
                                               "previous answer")
                return False
            await self.send({"type": "dropped", "frame_number": self.pending[0]})
        self.pending = (number, time.monotonic() - self.t_start, data)
        self.ready.set()
        return True

    async def _command(self, text: str) -> bool:
        try:
            command = json.loads(text)
        except ValueError:
            command = None
        if isinstance(command, dict) and command.get("type") == "reset":
            self.pending = None
            await self.new_session()
            return True
        await self.close(CLOSE_POLICY, 'send frames as binary messages; the only text '
                                       'message is {"type": "reset"}')
        return False

    async def work(self) -> None:
        """Answer the newest frame, one at a time, until cancelled."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.pending is None:
                continue
            (number, time_s, data), self.pending = self.pending, None
            self.dropped_in_a_row = 0
            await self.send(await run_in_threadpool(self._answer, number, time_s, data))

    def _answer(self, number: int, time_s: float, data: bytes) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            decoded = decode_image(data, self.engine.max_side)
        except ImageDecodeError as exc:
            return {"type": "error", "frame_number": number, "error": str(exc)}
        t1 = time.perf_counter()
        with self.session_lock:
                result = self.session.step(decoded.image, frame_number=number, time_s=time_s,
                                       original_size=decoded.size)
        t2 = time.perf_counter()
        timings = {"decode": 1000 * (t1 - t0), "pose": 1000 * (t2 - t1),
                   "total": 1000 * (t2 - t0)}
        body = hybrid_response(result, self.engine.name, processing_ms=timings["total"],
                               timings_ms=timings)
        return {"type": "pose", **body}


def same_origin(origin: str | None, host: str | None) -> bool:
    """True for no `Origin` (a script), or an `Origin` whose host:port is the `Host` header."""
    if origin is None:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def add_live_routes(app: FastAPI, state: dict[str, Any], limit_bytes: int,
                    max_streams: int, token: str | None = None) -> None:
    """Register `GET /` and `WS /ws/pose` on `app`.

    Args:
        app: the FastAPI app of `serve.http.create_app`.
        state: its state dict (`engine` is set at start-up).
        limit_bytes: largest frame (`--max-frame-mb`).
        max_streams: live connections beyond which a new one is closed with 1013.
        token: required as `Authorization: Bearer` or `?token=` (`serve.access`); None: none.
    """
    live = {"streams": 0}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.websocket("/ws/pose")
    async def ws_pose(ws: WebSocket) -> None:
        await ws.accept()
        stream = _LiveStream(ws, state["engine"], limit_bytes)
        if not same_origin(ws.headers.get("origin"), ws.headers.get("host")):
            await stream.close(CLOSE_POLICY, "cross-origin: open the page this server serves at "
                                             "/ (or connect without an Origin header)")
            return
        if not token_ok(token, ws.headers, ws.query_params):
            await stream.close(CLOSE_POLICY, "unauthorized: this server needs its token (open "
                                             "the page as /#token=..., or send Authorization: "
                                             "Bearer ...)")
            return
        if live["streams"] >= max_streams:
            await stream.close(CLOSE_BUSY, f"server busy: {max_streams} live streams "
                                           "(--max-sessions); try again later")
            return
        live["streams"] += 1
        worker = receiver = None
        try:
            await stream.new_session()
            await stream.send({"type": "hello", "model_version": state["engine"].name,
                               "max_frame_bytes": limit_bytes,
                               "max_side": state["engine"].max_side,
                               "joint_names": list(JOINT_NAMES),
                               "bones": [list(b) for b in BONES]})
            worker = asyncio.create_task(stream.work())
            receiver = asyncio.create_task(stream.receive())
            done, _ = await asyncio.wait({worker, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a worker's exception is raised here
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # the model failed: tell the client, keep the server
            logger.exception("ws/pose stream failed")
            await stream.close(CLOSE_ERROR, f"model failed: {type(exc).__name__}: {exc}")
        finally:
            live["streams"] -= 1
            for task in (worker, receiver):
                if task is not None:
                    task.cancel()
            if stream.session is not None:  # waits for a step still running in its thread
                await run_in_threadpool(stream._close_session, stream.session)
