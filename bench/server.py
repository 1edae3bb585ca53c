"""A real `stream-pose serve http` subprocess on a free port of 127.0.0.1, for benchmarks and
tests: start it, wait until `/health` answers, talk to it with requests, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.common import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m serve.cli serve http ...` on a free port of 127.0.0.1, until `stop`.

    Args:
        tmp: folder for the server's log (and its data, unless `data_dir`).
        args: more command-line options (`--model`, `--api`, ...).
        env: extra environment variables.
        data_dir: `--data-dir` (default `<tmp>/data`).

    Raises:
        AssertionError: the server exited or did not answer `/health` in time (with its log).
    """

    def __init__(self, tmp: Path, *args: str, env: dict | None = None,
                 data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tmp / "data"
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / f"server_{self.port}.log"
        cmd = [sys.executable, "-m", "serve.cli", "serve", "http", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
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
