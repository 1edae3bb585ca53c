"""MediaPipe teacher on real frames of ../shared/videos, decoded in memory (nothing written).

One teacher serves the whole module. Frames are not consecutive, so each test calls `reset()`
before labelling: the teacher then detects afresh instead of tracking from an unrelated frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from shared_paths import VIDEOS

from labeler.base import Teacher, TeacherUnavailableError
from stream_pose.skeleton import JOINT_INDEX, NUM_JOINTS, PELVIS
from stream_pose.types import Frame, VideoRef

UNDEFINED = ("spine1", "spine2", "spine3", "neck", "left_collar", "right_collar", "head")
RUN_FRAMES = (0, 60, 120)
FRONTAL_FRAME = 24  # basketball_single: player faces the camera (see the teacher's docstring)
J = JOINT_INDEX


def _decode(name: str, indices: set[int]) -> dict[int, np.ndarray]:
    """Frames `indices` of a test video as `[H, W, 3]` uint8 RGB, decoded in memory."""
    frames = {}
    with av.open(str(VIDEOS / name)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                frames[i] = frame.to_ndarray(format="rgb24")
            if len(frames) == len(indices):
                break
    return frames


def _shrink(image: np.ndarray, longer_side: int = 640) -> np.ndarray:
    s = longer_side / max(image.shape[:2])
    return cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)


def _frame(image: np.ndarray, video: str = "clip", index: int = 0) -> Frame:
    return Frame(image=image, index=index, time_s=0.0, video=VideoRef(id=video, kind="local"))


def _label_fresh(teacher, image: np.ndarray, video: str = "clip"):
    """Label one frame as the first of a new video."""
    teacher.reset()
    return teacher.label(_frame(image, video))


@pytest.fixture(scope="module")
def teacher():
    pytest.importorskip("mediapipe")
    from labeler.mediapipe_teacher import MediaPipeTeacher

    t = MediaPipeTeacher()
    yield t
    t.close()


@pytest.fixture(scope="module")
def running() -> dict[int, np.ndarray]:
    """Full-size (1088x1920) side-view frames of one runner."""
    return _decode("running_athlete.mp4", set(RUN_FRAMES))


@pytest.fixture(scope="module")
def frontal() -> np.ndarray:
    """A portrait (1920x1080) frame of basketball_single, shrunk to 360x640."""
    return _shrink(_decode("basketball_single.mp4", {FRONTAL_FRAME})[FRONTAL_FRAME])


@pytest.fixture(scope="module")
def run_labels(teacher, running):
    """One label per shrunk running frame: {index: (image, PersonLabel)}."""
    out = {}
    for i, image in running.items():
        small = _shrink(image)
        people = _label_fresh(teacher, small, "running")
        assert len(people) == 1, f"no person found in running_athlete frame {i}"
        out[i] = (small, people[0])
    return out


def test_implements_teacher_protocol(teacher):
    assert isinstance(teacher, Teacher)
    assert (teacher.name, teacher.device) == ("mediapipe", "cpu")


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_label_fields(run_labels, index):
    _, person = run_labels[index]
    assert person.track_id == 0 and person.teacher == "mediapipe" and person.root_cam is None
    assert person.kpts2d.shape == (NUM_JOINTS, 2) and person.kpts2d.dtype == np.float32
    assert person.kpts3d.shape == (NUM_JOINTS, 3) and person.kpts3d.dtype == np.float32
    assert person.visibility.shape == (NUM_JOINTS,) and person.visibility.dtype == np.float32
    assert np.array_equal(person.kpts3d[PELVIS], np.zeros(3, np.float32))
    assert person.visibility[PELVIS] == 1
    assert 0.5 < person.confidence <= 1.0


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_joints_mediapipe_lacks_are_invisible_and_zero(run_labels, index):
    _, person = run_labels[index]
    idx = [J[n] for n in UNDEFINED]
    assert np.all(person.visibility[idx] == 0)
    assert np.all(person.kpts2d[idx] == 0) and np.all(person.kpts3d[idx] == 0)
    # Every joint MediaPipe does map is there: the runner is fully in frame.
    assert person.visibility.sum() >= NUM_JOINTS - len(UNDEFINED) - 3


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_visible_joints_and_box_lie_in_frame(run_labels, index):
    image, person = run_labels[index]
    h, w = image.shape[:2]
    pts = person.kpts2d[person.visibility > 0]
    assert np.all((pts >= 0) & (pts <= [w - 1, h - 1]))
    x0, y0, x1, y1 = person.bbox_xyxy
    assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
    assert 0.3 * h < y1 - y0 < h  # a full-body runner, not a speck or the whole image


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_leg_bones_have_plausible_lengths_in_metres(run_labels, index):
    _, person = run_labels[index]
    for side in ("left", "right"):
        hip, knee, ankle = (person.kpts3d[J[f"{side}_{b}"]] for b in ("hip", "knee", "ankle"))
        assert 0.25 < np.linalg.norm(knee - hip) < 0.6
        assert 0.25 < np.linalg.norm(ankle - knee) < 0.6


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_ankles_below_head_in_3d_y_down(run_labels, index):
    _, person = run_labels[index]
    y = person.kpts3d[:, 1]
    top = max(y[J["nose"]], y[J["left_shoulder"]], y[J["right_shoulder"]])
    assert min(y[J["left_ankle"]], y[J["right_ankle"]]) > top + 0.5


@pytest.mark.parametrize("index", RUN_FRAMES)
def test_side_view_near_side_has_smaller_z(run_labels, index):
    # The runner faces image-right (nose ahead of the ears), so their right side is nearer.
    _, person = run_labels[index]
    ears_x = person.kpts2d[[J["left_ear"], J["right_ear"]], 0].mean()
    assert person.kpts2d[J["nose"], 0] > ears_x
    z = person.kpts3d[:, 2]
    assert z[J["right_shoulder"]] < z[J["left_shoulder"]]
    assert z[J["right_hip"]] < z[J["left_hip"]]


def test_frontal_view_left_is_persons_own_left(teacher, frontal):
    (person,) = _label_fresh(teacher, frontal, "basketball")
    lh, rh = J["left_hip"], J["right_hip"]
    # Facing the camera, the person's own left appears on the image right, in 2D and in 3D.
    assert person.kpts2d[lh, 0] > person.kpts2d[rh, 0]
    assert person.kpts3d[lh, 0] > person.kpts3d[rh, 0]
    assert person.kpts3d[J["nose"], 2] < 0  # the face is toward the camera


def test_2d_scales_with_image_size(teacher, running):
    full = running[0]
    small = _shrink(full)
    (big,) = _label_fresh(teacher, full)
    (little,) = _label_fresh(teacher, small)
    scale = full.shape[1] / small.shape[1]
    both = (big.visibility > 0) & (little.visibility > 0)
    # Pixel centres at integers: x_full + 0.5 = scale * (x_small + 0.5).
    upscaled = (little.kpts2d[both] + 0.5) * scale - 0.5
    person_height = big.bbox_xyxy[3] - big.bbox_xyxy[1]
    assert np.abs(upscaled - big.kpts2d[both]).max() < 0.05 * person_height
    assert np.abs(little.kpts3d - big.kpts3d).max() < 0.1  # metres do not depend on pixels


def test_joints_outside_the_image_are_invisible(teacher, running):
    image = _shrink(running[0])
    upper = image[: int(0.55 * image.shape[0])]  # cut off below the knees
    (person,) = _label_fresh(teacher, upper)
    h, w = upper.shape[:2]
    assert person.visibility[[J["left_ankle"], J["right_ankle"]]].sum() == 0
    pts = person.kpts2d[person.visibility > 0]
    assert np.all((pts >= 0) & (pts <= [w - 1, h - 1]))


def test_visibility_threshold_drops_unsure_joints(teacher, running, monkeypatch):
    image = _shrink(running[0])
    (loose,) = _label_fresh(teacher, image)
    monkeypatch.setattr(teacher, "visibility_threshold", 0.95)
    (strict,) = _label_fresh(teacher, image)
    assert np.all(strict.visibility <= loose.visibility)
    assert strict.visibility.sum() < loose.visibility.sum()


def test_reset_forgets_the_previous_video(teacher, running, frontal):
    image = _shrink(running[60])
    (first,) = _label_fresh(teacher, image, "running")
    assert len(teacher.label(_frame(frontal, "basketball"))) == 1
    (again,) = _label_fresh(teacher, image, "running")
    np.testing.assert_allclose(again.kpts2d, first.kpts2d, atol=1e-3)
    np.testing.assert_allclose(again.kpts3d, first.kpts3d, atol=1e-4)


def test_tracks_consecutive_frames(teacher):
    frames = _decode("basketball_single.mp4", set(range(12)))
    teacher.reset()
    found = [len(teacher.label(_frame(_shrink(frames[i]), "basketball", i))) for i in range(12)]
    assert found == [1] * 12


def test_no_person_gives_empty_list(teacher):
    assert _label_fresh(teacher, np.full((480, 640, 3), 128, np.uint8)) == []


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
    ],
    ids=["float", "gray", "rgba"],
)
def test_rejects_non_rgb_uint8_images(teacher, image):
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        teacher.label(_frame(image))


def test_rejects_bad_arguments():
    from labeler.mediapipe_teacher import MediaPipeTeacher

    with pytest.raises(ValueError, match="model_complexity"):
        MediaPipeTeacher(model_complexity=3)
    with pytest.raises(ValueError, match="visibility_threshold"):
        MediaPipeTeacher(visibility_threshold=1.5)


def test_heavy_model_is_unavailable_offline():
    mp = pytest.importorskip("mediapipe")
    from labeler.mediapipe_teacher import MediaPipeTeacher

    heavy = Path(mp.__file__).parent / "modules/pose_landmark/pose_landmark_heavy.tflite"
    if heavy.exists():
        pytest.skip("the heavy model was downloaded into this mediapipe install")
    with pytest.raises(TeacherUnavailableError) as err:
        MediaPipeTeacher(model_complexity=2)
    message = str(err.value)
    assert "model_complexity=2" in message and "pose_landmark_heavy.tflite" in message
    assert "offline" in message and "model_complexity=1" in message
    assert not heavy.exists()  # and nothing was downloaded


def test_missing_mediapipe_gives_install_hint(monkeypatch):
    from labeler.mediapipe_teacher import MediaPipeTeacher

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(TeacherUnavailableError, match=r'pip install -e "\.\[mediapipe\]"'):
        MediaPipeTeacher()


def test_close_releases_and_is_idempotent():
    pytest.importorskip("mediapipe")
    from labeler.mediapipe_teacher import MediaPipeTeacher

    with MediaPipeTeacher() as t:
        pass
    t.close()
    with pytest.raises(RuntimeError, match="close"):
        t.label(_frame(np.zeros((64, 64, 3), np.uint8)))


def test_package_import_does_not_load_mediapipe():
    import subprocess

    code = "import sys, labeler; labeler.TEACHERS; assert 'mediapipe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_teacher_class_resolves_registered_names():
    import labeler
    from labeler.mediapipe_teacher import MediaPipeTeacher

    assert labeler.teacher_class("mediapipe") is MediaPipeTeacher
    assert labeler.MediaPipeTeacher is MediaPipeTeacher
    with pytest.raises(KeyError, match="mediapipe"):
        labeler.teacher_class("no-such-teacher")
