"""A Python client of the binary frame interfaces: `WS /ws/pose` and `POST /pose/frame`.

    from serve.client import PoseStream, encode_jpeg, post_frame

    with PoseStream("ws://127.0.0.1:5000/ws/pose") as stream:     # one tracking session
        print(stream.hello["model_version"])
        for image in frames:                                      # [H, W, 3] uint8 RGB
            answer = stream.pose(encode_jpeg(image))              # the /pose/hybrid fields
            print(answer["frame_number"], [p["track_id"] for p in answer["people"]])

    answer = post_frame("http://127.0.0.1:5000", encode_jpeg(image), frame_number=0)

`PoseStream.pose` keeps one frame in flight (send, then wait for its answer), the protocol's
intended use (`serve.live`); a client that sends faster has older frames answered as `dropped`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import cv2
import numpy as np
import requests

MAX_SIDE = 640  # the live page's longer side; the server downsizes larger frames anyway
CLOSE_FRAME_WAIT_S = 2.0  # after a failed send, how long the server's close frame may take


class StreamClosed(RuntimeError):
    """The server closed the stream; `code` and `reason` are its close frame's."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"stream closed by the server ({code}): {reason}")
        self.code, self.reason = code, reason


def encode_jpeg(image: np.ndarray, quality: int = 85, max_side: int | None = MAX_SIDE) -> bytes:
    """`[H, W, 3]` uint8 RGB -> JPEG bytes, the longer side shrunk to `max_side` (area filter).

    Raises:
        ValueError: not an `[H, W, 3]` uint8 image, or the encoder failed.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class PoseStream:
    """One `WS /ws/pose` connection (one tracking session on the server).

    Args:
        url: `ws://host:port/ws/pose`.
        timeout_s: longest wait for the hello and for each answer.
        token: the server's `STREAM_POSE_TOKEN`, when it requires one (`serve.access`).

    Attributes:
        hello: the server's first message (`model_version`, `max_frame_bytes`, `max_side`,
            `joint_names`, `bones`).

    Raises:
        StreamClosed: the server closed the connection (e.g. 1013 busy) before its hello.
        OSError: the server cannot be reached.
    """

    def __init__(self, url: str, timeout_s: float = 60.0, token: str | None = None) -> None:
        from websockets.sync.client import connect  # the `serve` extra

        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.ws = connect(url, open_timeout=timeout_s, max_size=None,
                          additional_headers=headers)
        self.hello = self._receive()

    def _receive(self) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        try:
            return json.loads(self.ws.recv(timeout=self.timeout_s))
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    def send(self, frame: bytes) -> None:
        """Send one encoded frame without waiting (its answer comes from `receive`).

        Raises:
            StreamClosed: the server closed the stream, during the send included (a frame over
                the server's limit is refused while it is still being sent).
        """
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.send(frame)
        except (ConnectionClosed, OSError) as exc:
            raise self._closed(exc) from exc

    def _closed(self, exc: Exception) -> StreamClosed:
        """`StreamClosed` with the server's close frame. A send that fails mid-frame (the server
        closed while we wrote) can fail before the reading thread has parsed the close frame that
        already arrived, so wait briefly for it; None when it never comes (a reset)."""
        rcvd = getattr(exc, "rcvd", None)
        deadline = time.monotonic() + CLOSE_FRAME_WAIT_S
        while rcvd is None and time.monotonic() < deadline:
            rcvd = getattr(getattr(self.ws, "protocol", None), "close_rcvd", None)
            if rcvd is None:
                time.sleep(0.02)
        return StreamClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    def receive(self) -> dict[str, Any]:
        """The next answer: `type` "pose", "dropped" or "error" (`serve.live`).

        Raises:
            StreamClosed: the server closed the stream (the code says why).
            TimeoutError: no answer within `timeout_s`.
        """
        return self._receive()

    def pose(self, frame: bytes) -> dict[str, Any]:
        """Send one encoded frame and return its answer (one frame in flight).

        Raises:
            StreamClosed, TimeoutError: as `receive`.
        """
        self.send(frame)
        return self.receive()

    def reset(self) -> None:
        """Start a new session on the server (tracks and filters cleared): a new video."""
        self.ws.send(json.dumps({"type": "reset"}))

    def close(self) -> None:
        """Close the connection (the server closes the session)."""
        self.ws.close()

    def __enter__(self) -> "PoseStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_frame(base_url: str, frame: bytes, frame_number: int = 0,
               session_id: str | None = None, timeout_s: float = 60.0,
               http: requests.Session | None = None, token: str | None = None) -> dict[str, Any]:
    """`POST /pose/frame` with the raw JPEG as the body; returns the `/pose/hybrid` fields.
    `token`: the server's `STREAM_POSE_TOKEN`, when it requires one.

    Raises:
        requests.HTTPError: a 4xx/5xx answer (the `detail` says why).
    """
    headers = {"Content-Type": "image/jpeg"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session_id:
        headers["X-Session-Id"] = session_id
    r = (http or requests).post(f"{base_url.rstrip('/')}/pose/frame", data=frame,
                                params={"frame_number": frame_number}, headers=headers,
                                timeout=timeout_s)
    r.raise_for_status()
    return r.json()
