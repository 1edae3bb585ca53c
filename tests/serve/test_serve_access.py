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
TOKEN_B = "tok-" + "Lm4vR" * 6  # a second tenant of the same server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    pytest.importorskip("mediapipe")
    pytest.importorskip("websockets")
    server = Server(tmp_path_factory.mktemp("guarded"), "--model", "mediapipe",
                    env={"STREAM_POSE_TOKEN": f"{TOKEN},{TOKEN_B}"})
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
    assert guarded.get("/tasks", headers={"Authorization": f"Bearer {TOKEN_B}"}).ok
    assert guarded.get("/tasks", headers={"Authorization": f"Bearer {TOKEN},{TOKEN_B}"}
                       ).status_code == 401  # the setting whole is no token
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
    assert TOKEN not in guarded.log() and TOKEN_B not in guarded.log()


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


def test_tenants_sessions_are_apart_and_a_flood_evicts_only_its_own():
    """The probe (issue 21): any client could write into or evict any session by guessing its
    id. Sessions are now keyed by tenant (one per token): the same id is two sessions, and a
    tenant opening session after session evicts its own least recently used ones."""
    from serve.access import tenant_of
    from serve.engine import Engine
    from serve.http import SessionPool

    pytest.importorskip("mediapipe")
    setting = f"{TOKEN},{TOKEN_B}"
    a = tenant_of(setting, {"authorization": f"Bearer {TOKEN}"})
    b = tenant_of(setting, {"authorization": f"bearer {TOKEN_B}"})
    assert len({a, b}) == 2 and TOKEN not in a and tenant_of(None, {}) == ""
    assert tenant_of(setting, {"authorization": "Bearer guess"}) == ""
    frame = clip_frames(VIDEOS / "basketball_single.mp4", 1)[0]
    pool = SessionPool(Engine("mediapipe"), max_sessions=3, idle_s=600)
    with pool.use((b, "cam"), 5, {}) as theirs:
        theirs.step(frame, frame_number=5)
    with pool.use((a, "cam"), 0, {}) as mine:  # the same id, frame 0: not a restart of b's
        assert mine is not theirs
    for k in range(6):  # a opens session after session
        with pool.use((a, f"flood{k}"), 0, {}):
            pass
    assert len(pool) == 3
    with pool.use((b, "cam"), 6, {}) as again:
        assert again is theirs  # b's session lived through a's flood
    pool.close_all()


def test_relative_answer_paths_and_result_downloads(tmp_path):
    """The probe (issue 21): job answers named absolute server paths. With --answer-paths
    relative (the default off loopback) they are relative to --data-dir / --video-root, and
    every answer lists download URLs for its files."""
    import json
    import re

    from serve.access import is_loopback

    pytest.importorskip("mediapipe")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    data = tmp_path / "server-data"
    server = Server(tmp_path, "--model", "mediapipe", "--video-root", str(VIDEOS),
                    "--answer-paths", "relative", data_dir=data)
    try:
        task = server.post("/process", json={"video_filename": "street_short.mp4",
                                             "overlay": True}).json()["task_id"]
        with open(VIDEOS / "posetrack_short.mp4", "rb") as fh:
            job = server.post("/process_video_async", files={"video": fh}).json()["job_id"]
        status = server.wait_for(f"/status/{task}", ("completed", "failed"))
        job_body = server.wait_for(f"/job_status/{job}", ("complete", "failed"))
        answers = json.dumps([status, job_body, server.get("/tasks").json()])
        for server_path in (str(data), str(data.resolve()), str(VIDEOS.resolve())):
            assert server_path not in answers, server_path
        assert not re.search(r'"/(?!files/)', answers)  # no string but a URL starts at the root
        assert status["video_path"] == "street_short.mp4"
        result = status["result"]
        assert result["predictions_file"] == f"jobs/{task}/predictions.json"
        assert result["predictions_dir"] == f"jobs/{task}"
        assert set(result["urls"]) == {"frames_file", "predictions_file", "overlay"}
        preds = server.get(result["urls"]["predictions_file"])
        assert preds.status_code == 200
        assert preds.json() == json.loads((data / result["predictions_file"]).read_text())
        overlay = server.get(result["urls"]["overlay"])
        assert overlay.status_code == 200 and overlay.content[4:8] == b"ftyp"
        lines = server.get(job_body["result"]["urls"]["frames_file"]).text.splitlines()
        assert len(lines) == job_body["result"]["frames"] > 0
        assert job_body["output_path"] == f"jobs/{job}/predictions.json"
        for bad in ("tasks.sqlite3", "..%2Ftasks.sqlite3", "overlay.mp4"):
            assert server.get(f"/files/{job}/{bad}").status_code == 404, bad  # job: no overlay
        assert server.get(f"/files/nope/predictions.json").status_code == 404
    finally:
        server.stop()
