"""Teacher test-time augmentation: mirror a frame, label it, mirror the label back, average."""

import dataclasses

import numpy as np
import pytest

from labeler.flip_tta import (
    FlipTTATeacher,
    average_labels,
    box_iou,
    match_people,
    mirror_frame,
    unmirror_label,
)
from stream_pose.codec import make_label
from stream_pose.skeleton import JOINT_INDEX, NUM_JOINTS
from stream_pose.types import Frame, VideoRef

H, W = 120, 160
RNG = np.random.default_rng(0)


def _label(kpts2d, kpts3d, track_id=0, confidence=0.8):
    label = make_label(kpts2d, kpts3d, np.ones(NUM_JOINTS, bool), (H, W), track_id=track_id,
                       confidence=confidence, teacher="fake")
    assert label is not None
    return label


def _random_label(offset_x=0.0):
    kpts2d = RNG.uniform([10, 10], [60, 100], (NUM_JOINTS, 2)).astype(np.float32)
    kpts2d[:, 0] += offset_x
    return _label(kpts2d, RNG.normal(0, 0.3, (NUM_JOINTS, 3)).astype(np.float32))


def _frame():
    image = RNG.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return Frame(image=image, index=0, time_s=0.0, video=VideoRef("clip", "local"))


class MirrorAwareTeacher:
    """Labels a fixed person; on a mirrored frame it returns that person as the mirror shows it,
    plus `noise` metres on its 3D, so the flip average is checkable by hand."""

    name, device = "fake", "cpu"

    def __init__(self, person, reference_image, noise=0.0):
        self.person, self.reference, self.noise = person, reference_image, noise
        self.resets = 0

    def label(self, frame):
        if np.array_equal(frame.image, self.reference):
            return [self.person]
        mirrored = unmirror_label(self.person, frame.image.shape[1])  # its own inverse
        noisy = mirrored.kpts3d + self.noise
        noisy[0] = 0.0  # labels are pelvis-relative
        return [dataclasses.replace(mirrored, kpts3d=noisy)]

    def reset(self):
        self.resets += 1

    def close(self):
        pass


def test_unmirror_is_an_involution_and_swaps_sides():
    label = _random_label()
    back = unmirror_label(unmirror_label(label, W), W)
    for field in ("kpts2d", "kpts3d", "visibility", "bbox_xyxy"):
        np.testing.assert_allclose(getattr(back, field), getattr(label, field), atol=1e-5)
    once = unmirror_label(label, W)
    left, right = JOINT_INDEX["left_wrist"], JOINT_INDEX["right_wrist"]
    assert once.kpts2d[left, 0] == pytest.approx((W - 1) - label.kpts2d[right, 0])
    assert once.kpts3d[left, 0] == pytest.approx(-label.kpts3d[right, 0])
    assert once.kpts3d[0].tolist() == [0.0, 0.0, 0.0]  # still pelvis-relative


def test_mirror_frame_reverses_columns():
    frame = _frame()
    mirrored = mirror_frame(frame)
    np.testing.assert_array_equal(mirrored.image, frame.image[:, ::-1])
    assert mirrored.image.flags.c_contiguous and mirrored.video == frame.video


def test_match_people_pairs_by_overlap_and_leaves_strangers_alone():
    a, b = _random_label(), _random_label(offset_x=90)  # two people far apart
    pairs = match_people([a, b], [b, a])
    assert pairs[0][1] is a and pairs[1][1] is b
    far = _random_label(offset_x=95)
    assert match_people([a], [far]) == [(a, None)]
    assert box_iou(a.bbox_xyxy, a.bbox_xyxy) == pytest.approx(1.0)


def test_average_keeps_one_sided_joints_and_means_the_rest():
    a = _random_label()
    shift = np.full((NUM_JOINTS, 1), 0.1, np.float32)
    shift[0] = 0.0  # labels are pelvis-relative
    b = dataclasses.replace(a, kpts3d=a.kpts3d + shift, visibility=a.visibility.copy())
    b.visibility[JOINT_INDEX["left_wrist"]] = 0
    mean = average_labels(a, b, (H, W))
    wrist, knee = JOINT_INDEX["left_wrist"], JOINT_INDEX["left_knee"]
    np.testing.assert_allclose(mean.kpts3d[wrist], a.kpts3d[wrist])
    np.testing.assert_allclose(mean.kpts3d[knee], a.kpts3d[knee] + 0.05, atol=1e-6)
    assert mean.kpts3d[0].tolist() == [0.0, 0.0, 0.0]


def test_flip_teacher_averages_the_mirror_pass_after_mirroring_back():
    frame, person = _frame(), _random_label()
    teachers = []

    def factory():
        teachers.append(MirrorAwareTeacher(person, frame.image, noise=0.02))
        return teachers[-1]

    tta = FlipTTATeacher(factory)
    assert tta.name == "fake+flip" and len(teachers) == 2  # one per image stream
    ((plain, mirrored),) = tta.label_pairs(frame)
    np.testing.assert_allclose(mirrored.kpts2d, person.kpts2d, atol=1e-4)  # mirrored back
    (label,) = tta.label(frame)
    # The mirror pass's +2 cm lands as (-2, +2, +2) cm once mirrored back (X is negated).
    expected = person.kpts3d + np.array([-0.01, 0.01, 0.01], np.float32)
    expected[0] = 0.0
    np.testing.assert_allclose(label.kpts3d, expected, atol=1e-5)
    tta.reset()
    assert [t.resets for t in teachers] == [1, 1]


def test_pipeline_labels_with_the_flip_pair(tmp_path):
    pytest.importorskip("mediapipe")
    import json
    import subprocess
    import sys

    from shared_paths import REPO, VIDEOS

    proc = subprocess.run(
        [sys.executable, "pipeline.py", "--dry-run", "--labeler", "mediapipe_flip", "--json",
         "--run-dir", str(tmp_path), "--video", str(VIDEOS / "basketball_single.mp4"),
         "--max-frames", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["teacher"] == "mediapipe+flip"
    assert report["total"]["frames"] == 6 and report["total"]["persons"] >= 5
