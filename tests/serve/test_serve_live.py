"""`WS /ws/pose` and `POST /pose/frame` as their clients use them: a real server subprocess on
127.0.0.1, frames of a real clip as JPEG bytes, `serve.client` (websockets, requests) as the
client; and what bad or too-fast input gets back."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
from servetools import KEYPOINT, SEED_HYBRID, assert_fields, clip_frames
from shared_paths import VIDEOS

from bench.server import Server
from serve.client import PoseStream, StreamClosed, encode_jpeg, post_frame
from serve.live import MAX_DROPPED

pytestmark = [pytest.mark.slow]
pytest.importorskip("websockets")
LIMIT_MB = 1


@pytest.fixture(scope="module")
def server(student_onnx, tmp_path_factory):
    pytest.importorskip("mediapipe")
    server = Server(tmp_path_factory.mktemp("live"), "--model", str(student_onnx),
                    "--max-frame-mb", str(LIMIT_MB), "--max-sessions", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [encode_jpeg(f) for f in clip_frames(VIDEOS / "running_athlete.mp4", 8)]


def _ws(server) -> PoseStream:
    return PoseStream(server.url.replace("http://", "ws://") + "/ws/pose", timeout_s=60)


def _closed_with(stream: PoseStream, payload: bytes | str) -> StreamClosed:
    """Send `payload` and return the close the server answers with."""
    with pytest.raises(StreamClosed) as info:
        if isinstance(payload, str):
            stream.ws.send(payload)
        else:
            stream.send(payload)
        for _ in range(3):
            stream.receive()
    return info.value


def test_each_frame_gets_one_answer_in_order_with_the_seed_fields(server, jpegs):
    with _ws(server) as stream:
        assert stream.hello["type"] == "hello"
        assert stream.hello["model_version"].startswith("stream-pose-student:")
        assert stream.hello["max_frame_bytes"] == LIMIT_MB * 1024 * 1024
        assert len(stream.hello["joint_names"]) == 27 and [0, 1] in stream.hello["bones"]
        answers = [stream.pose(j) for j in jpegs]
    assert [a["type"] for a in answers] == ["pose"] * len(jpegs)
    assert [a["frame_number"] for a in answers] == list(range(len(jpegs)))
    for a in answers:
        assert_fields(a, SEED_HYBRID, "ws answer")
        assert (a["frame_width"], a["frame_height"]) == (640, 363)  # as sent (1920x1088 -> 640)
        assert a["timings_ms"]["pose"] > 0 and a["timings_ms"]["decode"] > 0
    assert_fields(answers[-1]["keypoints"][0], KEYPOINT, "keypoint")
    # one runner, one track through the clip
    assert {a["track_id"] for a in answers} == {answers[0]["track_id"]}


def test_a_non_image_frame_is_rejected_and_the_stream_goes_on(server, jpegs):
    with _ws(server) as stream:
        bad = stream.pose(b"\x00" * 100)
        assert bad == {"type": "error", "frame_number": 0,
                       "error": "not a decodable image (100 bytes; send JPEG or PNG)"}
        good = stream.pose(jpegs[0])
        assert good["type"] == "pose" and good["frame_number"] == 1 and good["people"]


def test_oversized_frames_and_text_get_clear_close_codes(server, jpegs):
    limit = LIMIT_MB * 1024 * 1024
    just_over = jpegs[0] + os.urandom(limit + 1000 - len(jpegs[0]))  # the app's own check
    closed = _closed_with(_ws(server), just_over)
    assert closed.code == 1009 and "--max-frame-mb" in closed.reason
    closed = _closed_with(_ws(server), os.urandom(3 * limit))  # refused by the protocol layer
    assert closed.code == 1009
    closed = _closed_with(_ws(server), "hello?")
    assert closed.code == 1008 and "binary" in closed.reason
    assert server.get("/health").json()["ready"] is True


def test_a_page_of_another_origin_is_refused(server, jpegs):
    """Any web page may open a websocket to 127.0.0.1; only the server's own page is served."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/ws/pose"
    with connect(url, origin="http://evil.example") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1008 and "cross-origin" in ws.close_reason
    with connect(url, origin=server.url) as ws:  # the page's own origin
        assert json.loads(ws.recv(timeout=60))["type"] == "hello"


def test_a_flood_is_answered_by_drops_not_a_queue(server, jpegs):
    """Frames sent without waiting are replaced by newer ones (answered "dropped"), never queued:
    far fewer frames are posed than sent. A client that keeps flooding is closed with 1008."""
    sent, answers, closed = 300, [], None
    stream = _ws(server)
    try:
        for i in range(sent):
            stream.send(jpegs[i % len(jpegs)])
        while len(answers) < sent:
            answers.append(stream.receive())
    except StreamClosed as exc:
        closed = exc
    finally:
        stream.close()
    kinds = [a["type"] for a in answers]
    numbers = [a["frame_number"] for a in answers]
    assert len(set(numbers)) == len(numbers), "a frame was answered twice"
    assert kinds.count("dropped") > 0 and kinds.count("pose") < sent / 4, kinds
    if closed is not None:  # more than serve.live.MAX_DROPPED frames during one frame's pose
        assert closed.code == 1008 and "too fast" in closed.reason
        assert kinds.count("dropped") >= MAX_DROPPED  # the one past the limit closes
    else:
        assert sorted(numbers) == list(range(sent))
    assert server.get("/health").json()["ready"] is True


def test_streams_beyond_max_sessions_are_told_the_server_is_busy(server, jpegs):
    with _ws(server) as a, _ws(server) as b:
        with pytest.raises(StreamClosed) as info:
            _ws(server)
        assert info.value.code == 1013 and "busy" in info.value.reason
        assert a.pose(jpegs[0])["type"] == b.pose(jpegs[0])["type"] == "pose"
    with _ws(server) as c:  # the slots are free again once those two closed
        assert c.pose(jpegs[0])["type"] == "pose"


def test_a_client_gone_mid_frame_leaves_the_server_serving(server, jpegs):
    for _ in range(3):
        stream = _ws(server)
        stream.send(jpegs[0])
        stream.close()
    with _ws(server) as stream:
        assert stream.pose(jpegs[1])["type"] == "pose"


def test_raw_jpeg_frames_share_a_session_and_bad_bodies_get_4xx(server, jpegs):
    http = requests.Session()
    answers = [post_frame(server.url, j, frame_number=i, session_id="raw", http=http)
               for i, j in enumerate(jpegs[:4])]
    for i, a in enumerate(answers):
        assert_fields(a, SEED_HYBRID, "/pose/frame")
        assert a["frame_number"] == i and a["frame_width"] == 640
    assert len({a["track_id"] for a in answers}) == 1
    url = server.url + "/pose/frame"
    r = http.post(url, data=jpegs[0], headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "image/jpeg" in r.json()["detail"]
    r = http.post(url, data=b"garbage", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "not a decodable image" in r.json()["detail"]
    r = http.post(url, data=jpegs[0], params={"frame_number": -1},
                  headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422
    big = np.zeros(LIMIT_MB * 1024 * 1024 + 1, np.uint8).tobytes()
    r = http.post(url, data=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
