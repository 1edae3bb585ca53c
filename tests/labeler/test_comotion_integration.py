"""CoMotion's real code (the ml-comotion/ checkout) through the teacher protocol into the buffer.

Runs `comotion_demo` with random weights (`pretrained=False`) and an SMPL file this test writes
(real keys and shapes, random values), on frames of basketball_multi.mp4 decoded in memory. It
needs CoMotion's dependencies (torchvision, timm, ...), which the CPU torch of the default
environment lacks, so it skips there; the README ("CoMotion teacher") shows how to run it in an
environment with CoMotion's pins.

The package is copied to a temporary directory so the generated SMPL file never lands in the
checkout, where it could be mistaken for the real model.
"""

from __future__ import annotations

import importlib
import shutil
import sys

import numpy as np
import pytest
from fakes.smpl import write_fake_smpl
from shared_paths import REPO, VIDEOS

from data.producer import label_stream
from data.ring_buffer import RingBuffer
from stream_pose.skeleton import NUM_JOINTS, PELVIS
from video_sources.local import LocalSource

pytestmark = pytest.mark.slow

CHECKOUT = REPO / "ml-comotion" / "src" / "comotion_demo"
DEPENDENCIES = ("torchvision", "timm", "einops", "pypose", "tensordict", "scenedetect",
                "transformers")
FRAMES = 4


def _require_comotion() -> None:
    if not (CHECKOUT / "models" / "comotion.py").is_file():
        pytest.skip("ml-comotion submodule not checked out (git submodule update --init ml-comotion)")
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing module, or a torchvision built for another torch
            pytest.skip(f"CoMotion needs {name}, which does not import here "
                        f"({type(exc).__name__}: {exc}); see README, 'CoMotion teacher'")


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


@pytest.fixture
def comotion_package(tmp_path, monkeypatch):
    """The checkout's comotion_demo, copied without weights, with a generated SMPL file."""
    _require_comotion()
    dst = tmp_path / "site" / "comotion_demo"
    shutil.copytree(CHECKOUT, dst, ignore=shutil.ignore_patterns(
        "comotion_*checkpoint.pt", "*.mlpackage", "SMPL_NEUTRAL.pkl", "__pycache__"))
    write_fake_smpl(dst / "data" / "smpl" / "SMPL_NEUTRAL.pkl")
    _forget(("comotion_demo", "chumpy"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield dst
    _forget(("comotion_demo", "chumpy"))


class _TrackSpy:
    """Records CoMotion's raw track state for each frame, passing calls through unchanged."""

    def __init__(self, model):
        self.model, self.tracks = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __setattr__(self, name, value):
        if name in ("model", "tracks"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.model, name, value)

    def __call__(self, image, K, **kwargs):
        detections, tracks = self.model(image, K, **kwargs)
        self.tracks.append(tracks)
        return detections, tracks


def test_comotion_code_labels_frames_from_memory_into_the_buffer(comotion_package):
    import torch

    from labeler.comotion import CoMotionTeacher, locate_package

    torch.manual_seed(0)
    assert locate_package().package_dir == comotion_package
    teacher = CoMotionTeacher(device="cpu", pretrained=False)
    assert teacher.device == "cpu"
    spy = _TrackSpy(teacher.model)
    teacher.model = spy
    source = LocalSource([VIDEOS / "basketball_multi.mp4"], split="all", max_frames=FRAMES)
    buffer = RingBuffer(capacity=256, crop_size=64)

    stats = label_stream(source, teacher, buffer)
    teacher.close()

    assert stats.total.frames == FRAMES and stats.total.errors == 0
    assert len(spy.tracks) == FRAMES
    first = spy.tracks[0]
    assert tuple(first.pred_3d.shape[-2:]) == (NUM_JOINTS, 3)
    assert first.pred_3d.shape[:2] == first.pred_2d.shape[:2] == first.id.shape[:2]
    assert spy.handler.res == (1920, 1080)  # tracks initialised at the video's (H, W)
    live = sum(int((t.id > 0).sum()) for t in spy.tracks)
    assert stats.total.persons <= live
    print(f"\nCoMotion (random weights) on {FRAMES} frames: {live} live track slots, "
          f"{stats.total.persons} labels, {len(buffer)} crops, "
          f"teacher {stats.total.teacher_fps:.2f} frames/s on {teacher.device}")
    if len(buffer):
        snap = buffer.snapshot()
        assert np.all(snap["kpts3d"][:, PELVIS] == 0)
        assert np.all(snap["track_id"] > 0)
