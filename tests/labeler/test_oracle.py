"""Tests for the oracle teacher: it passes synthetic ground truth through, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.base import Teacher, TeacherUnavailableError
from labeler.oracle import OracleTeacher
from stream_pose.types import Frame, VideoRef
from video_sources.synthetic import SyntheticSource


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return list(SyntheticSource(split="val", num_videos=3, frames_per_video=4, seed=5))


def test_implements_the_teacher_protocol():
    teacher = OracleTeacher()
    assert isinstance(teacher, Teacher)
    assert (teacher.name, teacher.device) == ("oracle", "cpu")


def test_labels_equal_the_truth_with_the_teacher_renamed(frames):
    teacher = OracleTeacher()
    teacher.reset()
    assert any(f.truth for f in frames)
    for frame in frames:
        labels = teacher.label(frame)
        assert len(labels) == len(frame.truth)
        for got, truth in zip(labels, frame.truth):
            assert got.teacher == "oracle" and truth.teacher == "ground_truth"
            assert (got.track_id, got.confidence) == (truth.track_id, truth.confidence)
            for name in ("kpts2d", "kpts3d", "visibility", "bbox_xyxy", "root_cam"):
                np.testing.assert_array_equal(getattr(got, name), getattr(truth, name))
    teacher.close()


def test_labels_are_copies_that_cannot_corrupt_the_truth(frames):
    frame = next(f for f in frames if f.truth)
    before = frame.truth[0].kpts3d.copy()
    label = OracleTeacher().label(frame)[0]
    label.kpts3d += 1.0
    label.visibility[:] = 0
    np.testing.assert_array_equal(frame.truth[0].kpts3d, before)
    assert frame.truth[0].visibility.sum() > 0


def test_synthetic_frame_with_nobody_in_view_gives_no_labels(frames):
    empty = Frame(frames[0].image, 0, 0.0, frames[0].video, K=frames[0].K, truth=())
    assert OracleTeacher().label(empty) == []


def test_real_footage_raises_a_clear_error(frames):
    real = Frame(frames[0].image, 0, 0.0, VideoRef(id="clip", kind="local", uri="clip.mp4"))
    with pytest.raises(TeacherUnavailableError, match="use source=synthetic"):
        OracleTeacher().label(real)
