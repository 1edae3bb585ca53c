"""serve.jobs worker processes: they outlive no server (issue 21 follow-up: the live page's
browser test left a job worker running for 30 minutes after its server was killed), and a job
is never lost with a worker that dies holding it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import pytest
from shared_paths import REPO, VIDEOS
from videotools import encode_video

from serve.jobs import EngineSpec, JobRunner
from serve.store import TaskStore

# A server that starts its job worker and is killed at once, while the worker still imports.
SERVER = """
import os, sys
from pathlib import Path
from serve.jobs import EngineSpec, JobRunner
from serve.store import TaskStore
data = Path(sys.argv[1])
runner = JobRunner(EngineSpec("mediapipe"), TaskStore(data / "tasks.sqlite3"), data)
runner.start()
print(*runner.worker_pids(), flush=True)
os._exit(0)  # no clean stop: as SIGKILL leaves it
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_worker_whose_server_died_during_its_start_exits(tmp_path):
    pytest.importorskip("mediapipe")
    proc = subprocess.run([sys.executable, "-c", SERVER, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in proc.stdout.split()]
    assert proc.returncode == 0 and len(pids) == 1, proc.stderr[-2000:]
    deadline = time.monotonic() + 60  # its imports, then one check of its parent
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = [p for p in pids if _alive(p)]
    for pid in leftover:
        os.kill(pid, 9)
    assert not leftover, "a job worker outlived its server"


def _short_clip(path, frames: int = 8):
    """The first frames of a real clip, as an H.264 mp4 (a job that takes a second)."""
    with av.open(str(VIDEOS / "posetrack_short.mp4")) as container:
        images = [f.to_ndarray(format="rgb24")
                  for f, _ in zip(container.decode(video=0), range(frames))]
    path.write_bytes(encode_video(images, list(range(frames)), Fraction(1, 30)))
    return path


def _job(runner: JobRunner, store: TaskStore, clip) -> str:
    record = store.create("video", video_path=str(clip), model="mediapipe", params={})
    runner.submit(record, None)
    return record["id"]


def _wait(store: TaskStore, task_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while (record := store.get(task_id))["status"] in ("queued", "processing"):
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    return record


@pytest.fixture
def idle_worker(tmp_path):
    """(clip, store, runner, pid): a runner whose one MediaPipe worker has run a job and said
    it is ready for the next."""
    pytest.importorskip("mediapipe")
    clip = _short_clip(tmp_path / "clip.mp4")
    store = TaskStore(tmp_path / "tasks.sqlite3")
    runner = JobRunner(EngineSpec("mediapipe"), store, tmp_path / "data")
    runner.start()
    try:
        assert _wait(store, _job(runner, store, clip))["status"] == "completed"
        (pid,) = runner.worker_pids()
        time.sleep(2)  # it has said it is ready for the next job
        yield clip, store, runner, pid
    finally:
        runner.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind,outcome", [("path", "completed"), ("upload", "completed"),
                                          ("small upload", "failed")])
def test_a_worker_killed_holding_a_job_it_has_not_started(idle_worker, kind, outcome):
    """A job sent to a worker that dies before starting it was left queued forever. A job on a
    file goes to the next worker. An upload larger than the pipe's buffer (64 KiB on Linux) is
    still being sent when the worker dies, so its bytes are still here and it goes on too; a
    smaller one sat whole in the pipe and died with the worker, so that job fails, saying why."""
    clip, store, runner, pid = idle_worker
    os.kill(pid, signal.SIGSTOP)  # so it receives the job but never starts it
    if kind == "path":
        held = _job(runner, store, clip)
    else:
        data = clip.read_bytes() if kind == "upload" else os.urandom(16 << 10)
        assert (len(data) > 64 << 10) == (kind == "upload")
        held = store.create("video", video_path=None, model="mediapipe", params={})["id"]
        runner.submit(store.get(held), data)
    deadline = time.monotonic() + 10
    while runner._pending:  # handed to the stopped worker
        assert time.monotonic() < deadline, "the job was not handed out"
        time.sleep(0.05)
    assert store.get(held)["status"] == "queued"
    os.kill(pid, signal.SIGKILL)
    record = _wait(store, held, timeout_s=60)  # was queued forever
    assert record["status"] == outcome, record
    if outcome == "failed":
        assert "SIGKILL" in record["error"], record  # not the noise's decoding error
    assert _wait(store, _job(runner, store, clip))["status"] == "completed"


@pytest.mark.slow
def test_a_job_for_a_worker_that_died_after_saying_it_was_ready_goes_to_its_successor(
        idle_worker):
    """A worker killed while idle has its pid on the ready queue already: the job sent to it
    meets a broken pipe (or no pipe, once the monitor noticed) and must wait for the next worker,
    neither lost nor failed."""
    clip, store, runner, pid = idle_worker
    os.kill(pid, signal.SIGKILL)
    task_id = _job(runner, store, clip)  # before the monitor sees the death
    record = _wait(store, task_id)
    assert record["status"] == "completed", record
    assert pid not in runner.worker_pids() and runner.alive_workers() == 1
