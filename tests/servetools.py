"""Shared helpers of the serving tests: a real `stream-pose serve http` subprocess on 127.0.0.1,
frames of the real clips as a client sends them (JPEG, base64), and polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from shared_paths import REPO

from video_sources.decode import decode_video_bytes

# Seed 000 (stdio), 001 (/pose/hybrid), 002 (jobs, health) and 003 (tasks): the fields each names.
SEED_STDIO = {"frameNumber": int, "keypoints": list, "has3d": bool, "jointAngles3d": dict,
              "mesh_vertices_data": list, "mesh_faces_data": list, "processingTimeMs": float}
SEED_HYBRID = {"frame_number": int, "frame_width": int, "frame_height": int, "keypoints": list,
               "keypoint_count": int, "has_3d": bool, "joints_3d_raw": list,
               "joint_angles_3d": dict, "mesh_vertices": int, "mesh_vertices_data": list,
               "mesh_faces_data": list, "tracking_confidence": float,
               "processing_time_ms": float, "model_version": str,
               "track_id": int, "predicted": bool}
SEED_HEALTH_HYBRID = {"status": str, "models": dict, "ready": bool}
SEED_JOB_STATUS = {"job_id": str, "status": str, "result": dict, "output_path": str,
                   "processing_time": float}
SEED_PROCESS = {"task_id": str, "status": str, "message": str}
SEED_TASK_STATUS = {"task_id": str, "status": str, "video_path": str, "model": str,
                    "created_at": str, "started_at": str, "completed_at": str, "result": dict}
SEED_TASK_RESULT = {"visualization_dir": str, "predictions_dir": str, "predictions_file": str}
SEED_HEALTH_TASKS = {"status": str, "timestamp": str, "active_tasks": int, "queued_tasks": int,
                     "total_tasks": int}
KEYPOINT = {"name": str, "x": float, "y": float, "z": float, "confidence": float}


def assert_fields(body: dict, fields: dict[str, type], where: str = "") -> None:
    """Every field is present with its type (ints count as floats, as JSON has one number)."""
    for name, kind in fields.items():
        assert name in body, f"{where}: missing {name!r} in {sorted(body)}"
        ok = (int, float) if kind is float else kind
        assert isinstance(body[name], ok) and not (kind is int and isinstance(body[name], bool)), \
            f"{where}: {name!r} is {type(body[name]).__name__}, expected {kind.__name__}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clip_frames(path: Path, n: int | None = None) -> list[np.ndarray]:
    """The first `n` frames of a clip, `[H, W, 3]` uint8 RGB, decoded in memory."""
    frames = [image for _, _, image in decode_video_bytes(path.read_bytes(), max_frames=n)]
    assert frames, path
    return frames


class Server:
    """`python -m serve.cli serve http ...` on a free port of 127.0.0.1, until `stop`."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None,
                 data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tmp / "data"
        self.log_path = tmp / f"server_{self.port}.log"
        cmd = [sys.executable, "-m", "serve.cli", "serve", "http", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-6000:]

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=600, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, timeout=60, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Signal the server (and, on SIGKILL, nothing else: its workers must notice)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def wait_for(self, path: str, done: tuple[str, ...], timeout_s: float = 300.0,
                 key: str = "status") -> dict:
        """Poll `path` until its `key` is one of `done`; returns the last body."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.get(path).json()
            if body.get(key) in done:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{path} not in {done} after {timeout_s} s: {body}\n{self.log()}")
