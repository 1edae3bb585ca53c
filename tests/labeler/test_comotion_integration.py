"""CoMotion's real code, run by the main suite in CoMotion's own environment.

The CPU torch of .venv has no torchvision, so CoMotion's code cannot import here; `make test`
builds .venv-comotion (`make comotion-env`) in the background while the suite runs, and this
test, which tests/conftest.py runs last, waits for that build, then runs tests/comotion_env with
its python: the real CoMotion model with random weights on frames of a real clip through our
adapter into the buffer, and its Core ML conversion. It skips, with the build's own error, only
where that environment could not be built. `STREAM_POSE_COMOTION_PYTHON` points it at another.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from shared_paths import REPO

from data.shared import _pid_alive

pytestmark = pytest.mark.slow

VENV = REPO / ".venv-comotion"
BUILD_LOG = REPO / ".comotion-env.log"
BUILD_PID, BUILD_STATUS = REPO / ".comotion-env.pid", REPO / ".comotion-env.status"  # make test's
BUILD_WAIT_S = 1200  # the build takes ~5 minutes alone, longer beside the suite
IN_ENV_TESTS = 2  # tests/comotion_env/test_comotion_real.py


def _wait_for_the_build() -> None:
    """Wait while `make test`'s background `make comotion-env` is still running."""
    try:
        pid = int(BUILD_PID.read_text())
    except (OSError, ValueError):
        return  # not started by make test: the stamp alone decides
    deadline = time.monotonic() + BUILD_WAIT_S
    while not BUILD_STATUS.exists() and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(2)


def _comotion_python() -> Path:
    """The interpreter of CoMotion's environment, or a skip that says why there is none."""
    configured = os.environ.get("STREAM_POSE_COMOTION_PYTHON")
    if configured:
        return Path(configured)
    _wait_for_the_build()
    if (VENV / ".installed").is_file():
        return VENV / "bin" / "python"
    why = "never built"
    if BUILD_LOG.is_file():
        lines = [ln for ln in BUILD_LOG.read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        errors = [ln for ln in lines if re.search(r"error|no CoMotion code", ln, re.I)]
        why = (errors or lines or ["empty log"])[-1].strip()[:300]
    pytest.skip(f"CoMotion's environment could not be built (`make comotion-env`: {why})")


@pytest.mark.timeout(BUILD_WAIT_S + 900)
def test_real_comotion_labels_real_frames_and_converts_in_its_own_environment():
    python = _comotion_python()
    proc = subprocess.run(
        [str(python), "-m", "pytest", "tests/comotion_env", "-q", "-s", "-rs",
         "-p", "no:cacheprovider"],
        cwd=REPO, env={**os.environ, "STREAM_POSE_COMOTION_TESTS": "1"},
        capture_output=True, text=True, timeout=1700)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    print(report)
    assert proc.returncode == 0, report
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(rf"\b{IN_ENV_TESTS} passed\b", summary), summary
    assert not re.search(r"skipped|failed|error", summary), summary
