"""Session fixtures of the inference-side tests (test_evaluate, test_export, test_predict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shared_paths import REPO

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
