"""A soak of the server under the outside probe's inputs (issue 21) mixed with good traffic:
bounded in count and time, 127.0.0.1 only. Every good request is answered, every bad one gets a
4xx, and the server's memory stays bounded."""

from __future__ import annotations

import base64
import itertools
import os
import time

import pytest
from servetools import clip_frames, png_header_only
from shared_paths import VIDEOS

from bench import procfs
from bench.server import Server
from serve.images import encode_jpeg_base64

pytestmark = [pytest.mark.slow]
ROUNDS = 12


def _rss_mb(pid: int) -> float:
    return procfs.status_kib(pid)["VmRSS"] / 1024


def _bad_requests(server, good_b64: str):
    """(name, request thunk) for each kind of bad or edge input the probe sent."""
    bomb = png_header_only(20000, 20000)
    frame = '{"image_base64": "%s", ' % good_b64
    raw = {"Content-Type": "application/json", "X-Session-Id": "soak-bad"}
    post = server.post
    return [
        ("png bomb", lambda: post("/pose/hybrid", json={
            "image_base64": base64.b64encode(bomb).decode(), "frame_number": 0})),
        ("png bomb raw", lambda: post("/pose/frame", data=bomb,
                                      headers={"Content-Type": "image/png"})),
        ("nan fps", lambda: post("/pose/hybrid", data=frame + '"frame_number": 0, "fps": NaN}',
                                 headers=raw)),
        ("huge fps", lambda: post("/pose/hybrid", data=frame + '"frame_number": 0, "fps": 1e308}',
                                  headers=raw)),
        ("inf frame", lambda: post("/pose/hybrid", data=frame + '"frame_number": 1e309}',
                                   headers=raw)),
        ("nesting", lambda: post("/pose/hybrid", data="[" * 100_000, headers=raw)),
        ("not an image", lambda: post("/pose/frame", data=os.urandom(5000),
                                      headers={"Content-Type": "image/jpeg"})),
        ("text/plain", lambda: post("/pose/hybrid", data=frame + '"frame_number": 0}',
                                    headers={"Content-Type": "text/plain"})),
        ("long session", lambda: post("/pose/hybrid", json={"image_base64": good_b64},
                                      headers={"X-Session-Id": "x" * 5000})),
        ("nul name", lambda: post("/process", json={"video_filename": "a\0b.mp4"})),
        ("long name", lambda: post("/process", json={"video_filename": "n" * 300})),
        ("max_side 1", lambda: post("/process", json={"video_filename": "street_short.mp4",
                                                      "max_side": 1})),
        ("too big", lambda: post("/pose/hybrid", json={"image_base64": "A" * (3 << 20)})),
        ("deleted upload", lambda: _upload_and_delete(server)),
    ]


def _upload_and_delete(server):
    r = server.post("/process_video_async", files={"video": ("x.mp4", os.urandom(8 << 20))})
    if r.status_code == 200:
        server.delete(f"/tasks/{r.json()['job_id']}")
    return r


def test_a_soak_of_bad_inputs_among_good_ones(student_onnx, tmp_path):
    pytest.importorskip("mediapipe")
    server = Server(tmp_path, "--model", str(student_onnx), "--video-root", str(VIDEOS),
                    "--max-frame-mb", "2", "--max-queue", "2")
    try:
        frames = [encode_jpeg_base64(f) for f in clip_frames(VIDEOS / "street_short.mp4", 24)]
        bad = _bad_requests(server, frames[0])
        number = itertools.count()
        good_codes, bad_codes, rss = [], {}, []
        t0 = time.monotonic()
        for round_ in range(ROUNDS):
            for name, send in bad:
                i = next(number)
                good = server.post("/pose/hybrid", headers={"X-Session-Id": "soak"},
                                   json={"image_base64": frames[i % len(frames)],
                                         "frame_number": i})
                good_codes.append(good.status_code)
                bad_codes.setdefault(name, set()).add(send().status_code)
            rss.append(_rss_mb(server.proc.pid))
            if time.monotonic() - t0 > 240:
                break
        assert set(good_codes) == {200}, good_codes  # every good request answered
        for name, codes in bad_codes.items():
            if name == "deleted upload":
                assert codes <= {200, 503}, (name, codes)
            else:
                assert all(400 <= c < 500 for c in codes), (name, codes)
        assert server.get("/health").status_code == 200, server.log()[-2000:]
        # memory: the last rounds hold no more than the first ones did (after warm-up)
        settled = rss[len(rss) // 3]
        assert max(rss[len(rss) // 3:]) - settled < 150, rss
        assert "Traceback" not in server.log()
    finally:
        server.stop()
