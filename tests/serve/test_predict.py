"""serve.predict and serve.tracker: boxes from the teacher, then from the student's own joints.

The tracker tests use a stand-in student that really reads its crop: every joint is drawn as a
disc of its own colour, and the stand-in returns the centroid of that colour in the crop. It is
exact where the crop shows the joint and blind where it does not, which is what the tracking
rule has to cope with. Nothing here writes frames except the overlay the user asks for.
"""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from shared_paths import VIDEOS
from torch import nn

from labeler.oracle import OracleTeacher
from serve.predict import main
from serve.tracker import TopDownTracker
from stream_pose.codec import make_label
from stream_pose.skeleton import JOINT_NAMES, NUM_JOINTS
from stream_pose.types import Frame, VideoRef
from train.student import StudentOutput
from video_sources.decode import decode_video_bytes

H, W, S = 480, 640, 128
# A 3 x 9 grid of joints, 20 px apart: a 40 x 160 px "person".
LAYOUT = np.array([(20.0 * (j % 3) - 20, 20.0 * (j // 3) - 80) for j in range(NUM_JOINTS)])


def _marker_rgb(j):
    return (8 * (j + 1), 255, 0)


class MarkerStudent(nn.Module):
    """Finds each joint's coloured disc in the crop; predicts the crop centre where it sees none."""

    crop_size = S

    def forward(self, image):
        rgb = (image * 255).round()  # [B, 3, S, S]
        ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        kpts2d = torch.full((image.shape[0], NUM_JOINTS, 2), (S - 1) / 2)
        for b in range(image.shape[0]):
            for j in range(NUM_JOINTS):
                mask = (rgb[b, 1] >= 250) & ((rgb[b, 0] - _marker_rgb(j)[0]).abs() <= 2)
                if mask.any():
                    kpts2d[b, j] = torch.stack([xs[mask].float().mean(), ys[mask].float().mean()])
        return StudentOutput(kpts3d=torch.zeros(image.shape[0], NUM_JOINTS, 3), kpts2d=kpts2d)


class CountingOracle(OracleTeacher):
    """The project's oracle teacher (it returns each frame's truth), counting its calls."""

    def __init__(self):
        self.calls = []

    def label(self, frame):
        self.calls.append(frame.index)
        return super().label(frame)


def _frame(t, centre, scale=1.0):
    kpts2d = scale * LAYOUT + np.asarray(centre, dtype=np.float64)
    image = np.zeros((H, W, 3), np.uint8)
    for j, (x, y) in enumerate(kpts2d):
        cv2.circle(image, (round(x), round(y)), 4, _marker_rgb(j), -1)
    label = make_label(kpts2d, np.zeros((NUM_JOINTS, 3)), np.ones(NUM_JOINTS, bool), (H, W),
                       track_id=0, confidence=1.0, teacher="ground_truth")
    video = VideoRef(id="markers", kind="synthetic")
    return Frame(image=image, index=t, time_s=t / 30, video=video, truth=(label,)), kpts2d


def _run(centres, scales=None, **kw):
    teacher = CountingOracle()
    tracker = TopDownTracker(MarkerStudent(), teacher, **kw)
    results = []
    for t, centre in enumerate(centres):
        frame, truth = _frame(t, centre, 1.0 if scales is None else scales[t])
        results.append((tracker.step(frame), truth))
    return teacher, results


def test_the_box_follows_a_moving_person_from_the_students_own_joints():
    # 12 px per frame: after 15 frames the person is 170 px away, most of a crop side (200 px).
    centres = [(150 + 12 * t, 240 + 3 * t) for t in range(15)]
    teacher, results = _run(centres, redetect_every=100)
    assert teacher.calls == [0]  # only the first frame needed the teacher
    assert [r.people[0].box_from for r, _ in results] == ["teacher"] + ["student"] * 14
    for poses, truth in results:
        (person,) = poses.people
        assert person.person == 0
        np.testing.assert_allclose(person.kpts2d, truth, atol=1.5)  # image pixels
    assert results[0][0].teacher_ms is not None and results[1][0].teacher_ms is None


def test_a_lost_person_is_re_boxed_by_the_teacher_on_the_same_frame():
    centres = [(150 + 10 * t, 240) for t in range(6)] + [(520, 300), (525, 300)]  # jump at 6
    teacher, results = _run(centres, redetect_every=100)
    assert teacher.calls == [0, 6]
    lost, truth = results[6]
    assert lost.teacher_ms is not None and lost.people[0].box_from == "teacher"
    np.testing.assert_allclose(lost.people[0].kpts2d, truth, atol=1.5)
    assert lost.people[0].person == 1  # no overlap with the old box: a new track id
    assert results[7][0].people[0].box_from == "student"


def test_a_person_who_shrinks_to_half_the_teachers_box_is_re_boxed():
    # 10% smaller every frame: 0.9^7 = 0.48 is the first size below half the teacher's box.
    scales = [0.9**t for t in range(9)]
    teacher, results = _run([(300, 240)] * 9, scales, redetect_every=100, max_scale_change=2.0)
    assert teacher.calls == [0, 7]
    for poses, truth in results:
        np.testing.assert_allclose(poses.people[0].kpts2d, truth, atol=1.5)
        assert poses.people[0].person == 0  # the re-boxed person overlaps its track: same id


def test_the_teacher_runs_every_n_frames_and_ids_survive_it():
    teacher, results = _run([(200 + 4 * t, 240) for t in range(12)], redetect_every=5)
    assert teacher.calls == [0, 5, 10]
    assert {r.people[0].person for r, _ in results} == {0}


def test_frames_without_people_ask_the_teacher_again():
    teacher = CountingOracle()
    tracker = TopDownTracker(MarkerStudent(), teacher)
    empty = Frame(image=np.zeros((H, W, 3), np.uint8), index=0, time_s=0.0,
                  video=VideoRef(id="empty", kind="synthetic"))
    for t in range(3):
        empty.index = t
        assert tracker.step(empty).people == []
    assert teacher.calls == [0, 1, 2]


def test_tracker_rejects_bad_options():
    with pytest.raises(ValueError):
        TopDownTracker(MarkerStudent(), CountingOracle(), max_scale_change=1.0)


def test_a_missing_video_is_one_line_on_stderr(tmp_path, capsys):
    code = main(["--checkpoint", str(tmp_path / "x.ckpt"), "--video", str(tmp_path / "no.mp4")])
    assert code == 2 and "video not found" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_real_video_writes_joints_and_an_overlay(trained_run, tmp_path):
    pytest.importorskip("mediapipe")
    from labeler.mediapipe_teacher import MediaPipeTeacher

    video, frames = VIDEOS / "running_athlete.mp4", 20
    out, overlay = tmp_path / "preds.jsonl", tmp_path / "overlay.mp4"
    code = main(["--checkpoint", str(trained_run / "checkpoints" / "last.ckpt"),
                 "--video", str(video), "--max-frames", str(frames),
                 "--out", str(out), "--overlay", str(overlay)])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(frames))
    for r in records:
        assert math.isfinite(r["student_ms"]) and r["student_ms"] > 0
        (person,) = r["people"]  # one runner, found by MediaPipe in every frame
        for key in ("kpts2d", "kpts3d"):
            assert list(person[key]) == list(JOINT_NAMES)
            assert all(v is not None and math.isfinite(v) for xy in person[key].values()
                       for v in xy)
        assert person["kpts3d"]["pelvis"] == [0.0, 0.0, 0.0]

    decoded = list(decode_video_bytes(overlay.read_bytes()))
    assert len(decoded) == frames
    assert decoded[0][2].shape == (1088, 1920, 3)
    np.testing.assert_allclose([t for _, t, _ in decoded], [r["time_s"] for r in records],
                               atol=1e-3)

    # The box is on the runner: the teacher's own joints on the last frame lie in its crop.
    source = list(decode_video_bytes(video.read_bytes(), max_frames=frames))[-1][2]
    with MediaPipeTeacher() as mp:
        (label,) = mp.label(Frame(source, frames - 1, 0.0, VideoRef("running_athlete", "local")))
    x0, y0, x1, y1 = records[-1]["people"][0]["crop_xyxy"]
    visible = label.kpts2d[label.visibility > 0]
    inside = (visible[:, 0] >= x0) & (visible[:, 0] <= x1) & (visible[:, 1] >= y0) & (
        visible[:, 1] <= y1)
    assert inside.mean() >= 0.9
    student = np.array(list(records[-1]["people"][0]["kpts2d"].values()))
    assert np.all((student >= [x0 - 1, y0 - 1]) & (student <= [x1 + 1, y1 + 1]))
