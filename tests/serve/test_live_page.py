"""The live page (`GET /`) in a real browser: Debian's Chromium, driven by Playwright, against a
real server with a real trained student (the pretrained one, fine-tuned on real footage in
tests/conftest.py, shared with test_learning_real), a fake camera made from a real clip.

Chromium is the system's (`/usr/bin/chromium`; `.ci/run` installs it with apt-get); Playwright
never downloads a browser here. Set STREAM_POSE_SCREENSHOT=<png> to keep the page's screenshot
(the README's docs/img/live_page.png is one, from `--model` = the pretrained student).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_paths import VIDEOS

from bench.server import Server
from stream_pose.types import Frame, VideoRef

pytestmark = [pytest.mark.slow]
CAMERA_CLIP = VIDEOS / "running_athlete.mp4"  # one person, in view throughout
FILE_CLIP = VIDEOS / "basketball_single.mp4"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUIET = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs it (apt-get install chromium)")
    pytest.skip("no Chromium here: apt-get install chromium (CI installs it)")


def write_y4m(clip: Path, out: Path, frames: int = 90, width: int = 640) -> Path:
    """The first `frames` of `clip` as a raw .y4m (Chromium's fake camera reads only that),
    scaled to `width` (even sides, as yuv420p needs), written by PyAV."""
    import av

    with av.open(str(clip)) as src, av.open(str(out), "w", format="yuv4mpegpipe") as dst:
        stream = None
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            if stream is None:
                height = 2 * round(frame.height * width / frame.width / 2)
                stream = dst.add_stream("rawvideo", rate=30)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for packet in stream.encode(frame.reformat(width, height, "yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


@pytest.fixture(scope="module")
def playwright():
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    _chromium_or_skip()
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def camera(tmp_path_factory) -> Path:
    return write_y4m(CAMERA_CLIP, tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest.fixture(scope="module")
def browser(playwright, camera):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[*QUIET, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={camera}"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def student_server(real_student_onnx, tmp_path_factory):
    """The pretrained student fine-tuned on real footage (tests/conftest.py `real_run`)."""
    server = Server(tmp_path_factory.mktemp("live_student"), "--model", str(real_student_onnx))
    yield server
    server.stop()


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1060, "height": 620})
    page.goto(server.url + "/")
    page.wait_for_function("window.streamPose.model !== null", timeout=30_000)
    return page


def _canvas_rgba(page, canvas_id: str) -> np.ndarray:
    """A canvas's pixels, `[H, W, 4]` uint8 RGBA (read back as PNG)."""
    url = page.evaluate(f"document.getElementById('{canvas_id}').toDataURL('image/png')")
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    bgra = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def _teacher_boxes(image_rgb: np.ndarray) -> list[np.ndarray]:
    """The people MediaPipe finds in an image (an independent look at where they are)."""
    from labeler.mediapipe_teacher import MediaPipeTeacher

    with MediaPipeTeacher() as mp:
        return [p.bbox_xyxy for p in mp.label(Frame(image_rgb, 0, 0.0, VideoRef("page", "local")))]


def test_webcam_stream_draws_the_skeleton_on_the_person(browser, student_server, tmp_path):
    page = _open(browser, student_server)
    assert page.text_content("#model").startswith("stream-pose-student:")
    page.click("#camera")
    page.wait_for_function("window.streamPose.answered >= 25", timeout=120_000)
    page.click("#pause")
    page.wait_for_function("!window.streamPose.inFlight", timeout=30_000)
    stats = page.evaluate("({sent: streamPose.sent, answered: streamPose.answered, "
                          "rejected: streamPose.rejected, dropped: streamPose.dropped})")
    # one frame in flight: every frame sent got its answer, none was queued or refused
    assert stats["answered"] == stats["sent"] and stats["rejected"] == stats["dropped"] == 0, stats
    assert float(page.text_content("#fps")) > 0 and float(page.text_content("#latency")) > 0
    assert "tracked" in page.text_content("#status")
    shot = os.environ.get("STREAM_POSE_SCREENSHOT")
    page.screenshot(path=shot or str(tmp_path / "live_page.png"))

    frame, overlay = _canvas_rgba(page, "frame"), _canvas_rgba(page, "overlay")
    drawn = overlay[..., 3] > 0
    assert drawn.sum() > 300, "no skeleton drawn"
    boxes = _teacher_boxes(np.ascontiguousarray(frame[..., :3]))
    assert boxes, "the teacher finds nobody in the frame the page shows"
    inside = np.zeros_like(drawn)
    for x0, y0, x1, y1 in boxes:
        pad = 0.15 * max(x1 - x0, y1 - y0)
        inside[max(0, int(y0 - pad)):int(y1 + pad), max(0, int(x0 - pad)):int(x1 + pad)] = True
    assert (drawn & inside).sum() / drawn.sum() > 0.8, "the skeleton is not on the person"
    angles = page.text_content("#angles")
    assert "knee" in angles and "\u00b0" in angles

    # the 3D view turns under a mouse drag (the stream is paused: only the drag changes it)
    before, yaw = _canvas_rgba(page, "view3d"), page.evaluate("streamPose.yaw")
    box = page.locator("#view3d").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 30, steps=8)
    page.mouse.up()
    after = _canvas_rgba(page, "view3d")
    assert page.evaluate("streamPose.yaw") == pytest.approx(yaw + 1.2, abs=0.05)
    changed = np.abs(after.astype(int) - before.astype(int)).sum(-1) > 60
    assert changed.sum() > 200, "the 3D view did not move"

    page.close()


def test_a_picked_video_file_is_streamed(browser, student_server):
    page = _open(browser, student_server)
    page.set_input_files("#file", str(FILE_CLIP))
    page.wait_for_function("window.streamPose.answered >= 10", timeout=120_000)
    assert page.text_content("#status").startswith("Streaming")
    last = page.evaluate("streamPose.last")
    assert last["type"] == "pose" and last["frame_width"] <= 640 and last["people"]
    page.close()


def test_a_refused_camera_says_so(playwright, student_server):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[*QUIET, "--use-fake-device-for-media-stream", "--deny-permission-prompts"])
    try:
        page = _open(browser, student_server)
        page.click("#camera")
        page.wait_for_function("document.getElementById('status').dataset.kind === 'error'",
                               timeout=30_000)
        assert "Camera refused" in page.text_content("#status")
    finally:
        browser.close()


def test_mediapipe_server_then_killed_server_shows_the_error(browser, tmp_path):
    pytest.importorskip("mediapipe")
    server = Server(tmp_path, "--model", "mediapipe")
    try:
        page = _open(browser, server)
        assert page.text_content("#model") == "stream-pose-mediapipe"
        page.click("#camera")
        page.wait_for_function("window.streamPose.answered >= 5", timeout=120_000)
        assert page.evaluate("streamPose.last.people.length") >= 1
        server.stop(signal.SIGKILL)
        page.wait_for_function("document.getElementById('status').dataset.kind === 'error'",
                               timeout=30_000)
        assert "Server unreachable" in page.text_content("#status")
        assert page.text_content("#model") == "disconnected"
    finally:
        server.stop()
