"""`pipeline.py --fetch` as a user runs it, against a fake Pexels on 127.0.0.1 that serves the
API's wire format and the bytes of ../shared/videos (tests/fakes/pexels.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fakes.pexels import FakePexels
from shared_paths import REPO, VIDEOS

KEY = "pipeline-test-key-9f8e7d6c5b4a"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VIDEOS / "street_short.mp4").is_file(), reason=f"no footage: {VIDEOS}"),
]


@pytest.fixture
def fake():
    pytest.importorskip("mediapipe")
    with FakePexels(KEY, VIDEOS) as server:
        server.results["running"] = [server.video(201, "street_short.mp4"),
                                     server.video(202, "posetrack_short.mp4")]
        yield server


def _env(fake) -> dict:
    return {**os.environ, "PEXELS_API_KEY": KEY, "PEXELS_API_URL": fake.base}


def _fetch(fake, run_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "pipeline.py", "--fetch", "--queries", "running", "--n", "2", "--json",
         "--run-dir", str(run_dir), *extra],
        cwd=REPO, env=_env(fake), capture_output=True, text=True, timeout=180,
    )


def _assert_no_key(run_dir, *texts):
    for text in texts:
        assert KEY not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_fetch_labels_n_videos_and_a_restart_fetches_none_again(fake, tmp_path):
    first = _fetch(fake, tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert sorted(report["videos"]) == ["pexels-201", "pexels-202"]
    assert report["total"]["frames_with_person"] >= 5
    assert report["sample"]["pelvis"] == [0.0, 0.0, 0.0]
    manifest = [json.loads(line) for line in (tmp_path / "pexels_manifest.jsonl").open()]
    assert sorted(m["id"] for m in manifest) == [201, 202]
    downloads = [len(fake.file_requests(i)) for i in (201, 202)]

    again = _fetch(fake, tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["total"]["frames"] == 0
    assert [len(fake.file_requests(i)) for i in (201, 202)] == downloads
    _assert_no_key(tmp_path, first.stdout, first.stderr, again.stdout, again.stderr)


def test_loop_stops_cleanly_on_ctrl_c(fake, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "pipeline.py", "--fetch", "--queries", "running", "--n", "1", "--loop",
         "--json", "--run-dir", str(tmp_path)],
        cwd=REPO, env=_env(fake), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    manifest = tmp_path / "pexels_manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        manifest.is_file() and len(manifest.read_text().splitlines()) >= 2
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # both videos are used up: the loop now rests, waiting for new results
    assert proc.poll() is None, "--loop must keep running after the results run out"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5.0
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["total"]["frames"] > 0 and "TOTAL" in out
    _assert_no_key(tmp_path, out, err)
