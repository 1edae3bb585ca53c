"""CoMotion's real code through our adapter, in CoMotion's own environment (`make comotion-env`).

Runs `comotion_demo` (the ml-comotion checkout, or ../shared/ml-comotion) with random weights
(`pretrained=False`) and the two model files its checkpoint tarball and the SMPL site would give,
written by the tests with the real keys and shapes and random values (tests/fakes/smpl.py), on
frames of basketball_multi.mp4 decoded in memory: detection (ConvNeXtV2-L, 512 x 512), tracking and
SMPL kinematics run for real, and the detection stage converts to Core ML.

The main suite's CPU torch has no torchvision, so these tests are not collected there
(tests/conftest.py); tests/labeler/test_comotion_integration.py runs them with .venv-comotion's
python. By hand:
    STREAM_POSE_COMOTION_TESTS=1 .venv-comotion/bin/python -m pytest tests/comotion_env -s

The package is copied to a temporary directory so the generated model files never land in the
checkout, where they could be mistaken for the real ones.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes.smpl import write_fake_extra_reference, write_fake_smpl
from shared_paths import VIDEOS

from data.producer import label_stream
from data.ring_buffer import RingBuffer
from stream_pose.camera import default_K
from stream_pose.codec import project
from stream_pose.skeleton import NUM_JOINTS, PELVIS
from video_sources.local import LocalSource

pytestmark = pytest.mark.slow

VIDEO = VIDEOS / "basketball_multi.mp4"  # 1920 x 1080, three players
FRAMES = 2  # the second frame updates the first frame's tracks (about 40 s a frame on 2 cores)


def _installed_source() -> Path:
    spec = importlib.util.find_spec("comotion_demo")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "models" / "comotion.py").is_file():
            return Path(root)
    pytest.fail("comotion_demo is not importable: run `make comotion-env`")


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def comotion_package(tmp_path_factory):
    """The installed comotion_demo, copied without weights, with generated SMPL files."""
    site = tmp_path_factory.mktemp("site")
    dst = site / "comotion_demo"
    shutil.copytree(_installed_source(), dst, ignore=shutil.ignore_patterns(
        "comotion_*checkpoint.pt", "*.mlpackage", "SMPL_NEUTRAL.pkl", "extra_smpl_reference.pt",
        "__pycache__"))
    write_fake_smpl(dst / "data" / "smpl" / "SMPL_NEUTRAL.pkl")
    write_fake_extra_reference(dst / "data" / "smpl" / "extra_smpl_reference.pt")
    _forget(("comotion_demo", "chumpy"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        yield dst
    _forget(("comotion_demo", "chumpy"))


@pytest.fixture(scope="module")
def comotion_model(comotion_package):
    """CoMotion built by our loader on the CPU with seeded random weights."""
    import torch

    from labeler.comotion import load_comotion, locate_package

    assert locate_package().package_dir == comotion_package
    torch.manual_seed(0)
    model, plan = load_comotion("cpu", pretrained=False)
    assert plan.name == "cpu" and not plan.use_coreml
    return model, plan


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


class _LabelSpy:
    """The teacher, keeping each frame's labels (the producer hands them to the buffer only)."""

    def __init__(self, teacher):
        self.teacher, self.frames = teacher, []

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def label(self, frame):
        labels = self.teacher.label(frame)
        self.frames.append((frame, labels))
        return labels


def test_comotion_detects_tracks_and_labels_frames_into_the_buffer(comotion_model):
    from labeler.comotion import CoMotionTeacher

    model, plan = comotion_model
    spy = _TrackSpy(model)
    teacher = CoMotionTeacher.from_model(spy, plan)
    labels_seen = _LabelSpy(teacher)
    buffer = RingBuffer(capacity=512, crop_size=64)
    start = time.perf_counter()
    stats = label_stream(LocalSource([VIDEO], split="all", max_frames=FRAMES), labels_seen, buffer)
    seconds = time.perf_counter() - start

    assert stats.total.frames == FRAMES and stats.total.errors == 0
    # CoMotion's own state: 27 joints per track slot, tracks opened at the video's (H, W).
    assert len(spy.tracks) == FRAMES and spy.handler.res == (1920, 1080)
    for tracks in spy.tracks:
        assert tuple(tracks.pred_3d.shape[-2:]) == (NUM_JOINTS, 3)
        assert tuple(tracks.pred_2d.shape[-2:]) == (NUM_JOINTS, 2)
        assert tracks.pred_3d.shape[:2] == tracks.pred_2d.shape[:2] == tracks.id.shape[:2]
    # Random weights still detect: every frame yields people, and the second frame updates the
    # first frame's tracks instead of opening new ones for everybody.
    per_frame = [labels for _, labels in labels_seen.frames]
    assert all(per_frame), [len(labels) for labels in per_frame]
    ids = [{label.track_id for label in labels} for labels in per_frame]
    assert ids[0] & ids[1], ids
    live = {int(i) for i in spy.tracks[-1].id.flatten().tolist() if i > 0}
    assert ids[-1] <= live
    for frame, labels in labels_seen.frames:
        _check_labels(labels, frame.hw, frame.K if frame.K is not None else default_K(*frame.hw))
    # The buffer holds crops with pelvis-relative labels of CoMotion's tracks.
    assert stats.total.persons == sum(map(len, per_frame)) and len(buffer) > 0
    snap = buffer.snapshot()
    assert snap["image"].shape[1:] == (3, 64, 64) and snap["image"].dtype == np.uint8  # CHW crops
    assert np.all(snap["kpts3d"][:, PELVIS] == 0)
    assert set(snap["track_id"].tolist()) <= set().union(*ids)
    print(f"\nCoMotion (random weights) on {FRAMES} frames of {VIDEO.name}: "
          f"{[len(p) for p in per_frame]} people, {len(ids[0] & ids[1])} tracks kept, "
          f"{len(buffer)} crops in {seconds:.0f} s on {teacher.device}")


def _check_labels(labels, hw: tuple[int, int], K: np.ndarray) -> None:
    """The data contract of docs/architecture.md for one frame's CoMotion labels."""
    h, w = hw
    for label in labels:
        assert label.teacher == "comotion" and label.track_id > 0
        assert label.kpts3d.shape == (NUM_JOINTS, 3) and label.kpts3d.dtype == np.float32
        assert label.kpts2d.shape == (NUM_JOINTS, 2) and label.kpts2d.dtype == np.float32
        assert np.all(label.kpts3d[PELVIS] == 0)
        # Camera frame, metres: the pelvis in front of the camera, and a visible joint's
        # pelvis-relative 3D plus the root projects through the frame's K onto CoMotion's own 2D
        # (its pred_2d); joints outside the frame are invisible, their 3D zero (masked).
        assert label.root_cam is not None and label.root_cam[2] > 0
        visible = label.visibility > 0
        assert visible.sum() >= 2
        reprojected = project(label.kpts3d + label.root_cam, K)
        np.testing.assert_allclose(reprojected[visible], label.kpts2d[visible], atol=0.5)
        inside = ((label.kpts2d >= 0) & (label.kpts2d <= [w - 1, h - 1])).all(axis=1)
        assert np.all(label.visibility[~inside] == 0)
        assert np.all(label.kpts3d[~visible] == 0)
        x0, y0, x1, y1 = label.bbox_xyxy
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.0 <= label.confidence <= 1.0


def test_the_detection_stage_converts_to_core_ml(comotion_model, tmp_path):
    import torch
    from comotion_demo.models.detect import DetectionOutput
    from comotion_demo.utils.dataloading import prepare_network_inputs

    from labeler.comotion_coreml import INPUTS, convert_detection, describe

    model, _ = comotion_model
    frame = next(iter(LocalSource([VIDEO], split="all", max_frames=1)))
    image = torch.from_numpy(frame.image).permute(2, 0, 1)
    crop, crop_K = prepare_network_inputs(image, torch.as_tensor(default_K(*frame.hw)[:2]))
    with torch.inference_mode():
        expected = model.detection_model(crop, crop_K)

    start = time.perf_counter()
    out = convert_detection(model.detection_model, tmp_path / "comotion_detection.mlpackage")
    seconds = time.perf_counter() - start

    assert (out / "Manifest.json").is_file()
    spec = describe(out)
    # What CoMotionDetectCoreML feeds and what DetectionOutput(**outputs) rebuilds.
    assert spec["inputs"] == {"image": list(crop.shape), "K": list(crop_K.shape)}
    assert list(spec["inputs"]) == list(INPUTS)
    assert list(spec["outputs"]) == list(DetectionOutput._fields)
    for name in DetectionOutput._fields:
        assert spec["outputs"][name] == list(getattr(expected, name).shape), name
    weights = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    params = sum(p.numel() for p in model.detection_model.parameters())
    assert weights > params  # float16 weights: about two bytes a parameter
    print(f"\nCore ML: {params / 1e6:.0f} M parameters converted in {seconds:.0f} s, "
          f"{weights / 2**20:.0f} MiB")
