"""Who may call the server (serve.access), against a real server on 127.0.0.1: the probe of
issue 21 found no auth option, no Host check and JSON routes taking text/plain, so any web page
could POST to a local server (CSRF) and DNS rebinding could read /tasks."""

from __future__ import annotations

import pytest
import requests
from servetools import clip_frames
from shared_paths import VIDEOS

from bench.server import Server
from serve.client import PoseStream, StreamClosed, encode_jpeg, post_frame
from serve.images import encode_jpeg_base64

pytestmark = [pytest.mark.slow]
TOKEN = "tok-" + "x7Qp2" * 6


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    pytest.importorskip("mediapipe")
    pytest.importorskip("websockets")
    server = Server(tmp_path_factory.mktemp("guarded"), "--model", "mediapipe",
                    env={"STREAM_POSE_TOKEN": TOKEN})
    yield server
    server.stop()


def test_a_token_server_answers_only_with_the_token(guarded):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    frame = clip_frames(VIDEOS / "basketball_single.mp4", 1)[0]
    body = {"image_base64": encode_jpeg_base64(frame), "frame_number": 0}
    assert guarded.get("/health").status_code == 200  # open: load balancers
    assert guarded.get("/").status_code == 200  # the page holds no data
    for method, path, kw in (("get", "/tasks", {}), ("post", "/pose/hybrid", {"json": body}),
                             ("get", "/warmup", {})):
        r = getattr(guarded, method)(path, **kw)
        assert r.status_code == 401 and "Bearer" in r.json()["detail"], (path, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        wrong = getattr(guarded, method)(path, headers={"Authorization": "Bearer nope"}, **kw)
        assert wrong.status_code == 401
    assert guarded.get("/tasks", headers=bearer).status_code == 200
    assert guarded.post("/pose/hybrid", json=body, headers=bearer).json()["keypoints"]
    assert post_frame(guarded.url, encode_jpeg(frame), token=TOKEN)["keypoints"]

    url = guarded.url.replace("http://", "ws://") + "/ws/pose"
    with pytest.raises(StreamClosed) as info:
        PoseStream(url, timeout_s=30)
    assert info.value.code == 1008 and "unauthorized" in info.value.reason
    with PoseStream(url, timeout_s=30, token=TOKEN) as stream:  # a script: the header
        assert stream.pose(encode_jpeg(frame))["type"] == "pose"
    with PoseStream(f"{url}?token={TOKEN}", timeout_s=30) as stream:  # the page: the query
        assert stream.hello["type"] == "hello"
    assert TOKEN not in guarded.log()


def test_foreign_host_names_and_non_json_bodies_are_refused(guarded):
    """DNS rebinding arrives with the attacker's name as Host; a cross-origin page can POST
    text/plain without CORS's consent."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.get(guarded.url + "/health", headers={"Host": "rebind.example:5000"}, timeout=10)
    assert r.status_code == 400
    for host in ("localhost", "[::1]:5000", "127.0.0.1"):
        assert guarded.get("/health", headers={"Host": host}).status_code == 200, host
    frame = clip_frames(VIDEOS / "basketball_single.mp4", 1)[0]
    text = '{"image_base64": "%s", "frame_number": 0}' % encode_jpeg_base64(frame)
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        r = guarded.post("/pose/hybrid", data=text, headers={**bearer, "Content-Type": kind})
        assert r.status_code == 415 and "application/json" in r.json()["detail"], r.text
    assert guarded.post("/pose/hybrid", data=text, headers=bearer).status_code == 200  # none


def test_stalled_bodies_long_session_ids_and_task_pages(tmp_path):
    """Growth the probe found (issue 21): stalled uploads were never timed out (300 open after
    35 s), `X-Session-Id` had no length cap, `/tasks` no pagination."""
    import socket
    import time

    pytest.importorskip("mediapipe")
    server = Server(tmp_path, "--model", "mediapipe", "--body-timeout-s", "1",
                    "--video-root", str(VIDEOS))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"POST /pose/frame HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8")
            t0 = time.monotonic()
            answer = conn.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and time.monotonic() - t0 < 20, answer[:200]
        frame = encode_jpeg(clip_frames(VIDEOS / "basketball_single.mp4", 1)[0])
        r = server.post("/pose/frame", data=frame, headers={"Content-Type": "image/jpeg",
                                                            "X-Session-Id": "s" * 201})
        assert r.status_code == 422 and "X-Session-Id" in r.json()["detail"]
        ids = [server.post("/process", json={"video_filename": "basketball_single.mp4"})
               .json()["task_id"] for _ in range(3)]
        page = server.get("/tasks", params={"limit": 2, "offset": 1}).json()
        assert [t["task_id"] for t in page["tasks"]] == ids[1:3] and page["total"] == 3
        assert server.get("/tasks", params={"limit": 0}).status_code == 422
    finally:
        server.stop()
