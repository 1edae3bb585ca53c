"""serve.jobs worker processes outlive no server (issue 21 follow-up: the live page's browser
test left a job worker running for 30 minutes after its server was killed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from shared_paths import REPO

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
