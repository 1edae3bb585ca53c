"""The serving core without a server: One Euro filter, derived fields, session tracking and gap
filling, response shapes. The session tests script the teacher (who is seen in which frame), the
one thing a real detector cannot be told; everything else is the real code."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from servetools import KEYPOINT, SEED_HYBRID, SEED_STDIO, assert_fields
from shared_paths import REPO

from serve.fields import camera_translation, joint_angles
from serve.filters import OneEuroConfig, OneEuroFilter
from serve.schemas import hybrid_response, mmpose_predictions, stdio_record
from serve.session import Session
from stream_pose.camera import default_K, project
from stream_pose.codec import make_label
from stream_pose.skeleton import JOINT_INDEX, NUM_JOINTS

H, W = 480, 640


def test_one_euro_smooths_jitter_at_rest_and_follows_fast_motion():
    rng = np.random.default_rng(0)
    dt, n = 1 / 30, 300
    noisy = 100 + rng.normal(0, 2.0, (n, NUM_JOINTS, 2))
    f = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    out = np.stack([f.update(x, dt) for x in noisy])
    assert out[50:].std() < 0.35 * noisy[50:].std()  # jitter at rest is cut by > 3x

    ramp = 1000.0 * np.arange(60)[:, None, None] * dt * np.ones((1, NUM_JOINTS, 2))  # 1000 px/s
    lag = {}
    for beta in (0.0, 0.5):
        f = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=beta))
        last = [f.update(x, dt) for x in ramp][-1]
        lag[beta] = float(np.abs(last - ramp[-1]).mean())
    assert lag[0.5] < 0.2 * lag[0.0]  # the speed term removes most of the lag


def test_one_euro_reset_and_nan_joints():
    f = OneEuroFilter()
    f.update(np.zeros((2, 2)), 1 / 30)
    x = np.array([[10.0, 10.0], [np.nan, 5.0]])
    y = f.update(x, 1 / 30)
    assert 0 < y[0, 0] < 10 and np.isnan(y[1, 0])  # NaN passes, the rest is filtered
    f.reset()
    assert np.array_equal(f.update(np.full((2, 2), 7.0), 1 / 30), np.full((2, 2), 7.0))
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroConfig(min_cutoff=0)


def _pose():
    """A standing person, pelvis-relative metres (camera axes, Y down), knees bent 90 deg."""
    k = np.zeros((NUM_JOINTS, 3), np.float32)
    for name, p in {"left_hip": (0.1, 0, 0), "left_knee": (0.1, 0.45, 0),
                    "left_ankle": (0.1, 0.45, 0.45), "right_hip": (-0.1, 0, 0),
                    "right_knee": (-0.1, 0.45, 0), "right_ankle": (-0.1, 0.9, 0),
                    "left_shoulder": (0.2, -0.5, 0), "right_shoulder": (-0.2, -0.5, 0),
                    "left_elbow": (0.45, -0.5, 0), "left_wrist": (0.45, -0.25, 0),
                    "spine2": (0, -0.25, 0), "neck": (0, -0.55, 0)}.items():
        k[JOINT_INDEX[name]] = p
    return k


def test_joint_angles_are_included_angles_and_null_for_missing_joints():
    k = _pose()
    angles = joint_angles(k)
    assert angles["left_knee"] == pytest.approx(90.0, abs=0.1)
    assert angles["right_knee"] == pytest.approx(180.0, abs=0.1)
    assert angles["left_elbow"] == pytest.approx(90.0, abs=0.1)
    assert angles["spine"] == pytest.approx(180.0, abs=0.1)
    defined = np.ones(NUM_JOINTS, bool)
    defined[JOINT_INDEX["spine2"]] = False  # MediaPipe has no spine joint
    partial = joint_angles(k, defined)
    assert partial["spine"] is None and partial["left_knee"] == angles["left_knee"]


def test_camera_translation_recovers_the_pelvis_position():
    rng = np.random.default_rng(1)
    K = default_K(H, W)
    k3 = _pose() + rng.normal(0, 0.05, (NUM_JOINTS, 3)).astype(np.float32)
    k3[0] = 0
    t_true = np.array([0.4, -0.2, 6.0], np.float32)
    k2 = project(k3 + t_true, K)
    assert camera_translation(k3, k2, K) == pytest.approx(t_true.tolist(), abs=1e-3)
    few = np.zeros(NUM_JOINTS)
    few[:3] = 1
    assert camera_translation(k3, k2, K, few) is None  # 3 joints cannot fix it


class ScriptedTeacher:
    """A detector whose answer per frame is scripted: `people[frame]` is a list of
    (x offset px, y offset px) of each person seen; frames not listed see nobody."""

    name, device = "scripted", "cpu"

    def __init__(self, people):
        self.people, self.calls, self.closed = people, 0, False
        self.k3 = _pose()

    def label(self, frame):
        self.calls += 1
        labels = []
        for dx, dy in self.people.get(frame.index, []):
            k2 = project(self.k3 + np.array([0, 0, 5.0], np.float32), default_K(H, W))
            k2 = k2 + np.array([dx, dy], np.float32)
            defined = np.zeros(NUM_JOINTS, bool)
            defined[[JOINT_INDEX[n] for n in ("pelvis", "left_hip", "right_hip", "left_knee",
                                             "right_knee", "left_ankle", "right_ankle",
                                             "left_shoulder", "right_shoulder")]] = True
            labels.append(make_label(k2, self.k3, defined, (H, W), track_id=0,
                                     confidence=0.9, teacher="scripted"))
        return labels

    def reset(self):
        pass

    def close(self):
        self.closed = True


def _run(people, frames, **kw):
    teacher = ScriptedTeacher(people)
    session = Session(None, teacher, **kw)
    out = [session.step(np.zeros((H, W, 3), np.uint8), frame_number=i) for i in range(frames)]
    session.close()
    assert teacher.closed
    return out


def test_gaps_are_filled_with_the_same_track_and_decaying_confidence():
    # One person walking right at 4 px/frame, missed in frames 10-13, back at frame 14.
    people = {i: [(4.0 * i, 0.0)] for i in range(20) if not 10 <= i <= 13}
    out = _run(people, 20)
    assert all(len(f.people) == 1 for f in out)  # every frame answered
    ids = {f.people[0].track_id for f in out}
    assert ids == {0}
    gap = [f.people[0] for f in out[10:14]]
    assert all(p.predicted for p in gap) and not out[9].people[0].predicted
    conf = [p.tracking_confidence for p in gap]
    assert conf == sorted(conf, reverse=True)
    assert conf[-1] < 0.7 * out[9].people[0].tracking_confidence
    # predicted from motion: the gap's poses keep moving right
    xs = [f.people[0].kpts2d[JOINT_INDEX["pelvis"], 0] for f in out[9:14]]
    assert all(b > a for a, b in zip(xs, xs[1:]))
    assert not out[14].people[0].predicted


def test_tracks_end_after_max_gap_and_a_new_person_gets_a_new_id():
    people = {0: [(0, 0)], 1: [(0, 0)], 9: [(250, 0)]}  # far away: not the first person
    out = _run(people, 10, max_gap=3, smoothing=False)
    assert [len(f.people) for f in out] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    assert out[9].people[0].track_id == 1


def test_two_people_keep_their_ids_when_one_is_missed():
    people = {i: [(-150, 0), (150, 0)] for i in range(8)}
    people[4] = [(150, 0)]  # the left one is missed
    out = _run(people, 8)
    left_ids = {min(f.people, key=lambda p: p.kpts2d[0, 0]).track_id for f in out}
    assert len(left_ids) == 1 and all(len(f.people) == 2 for f in out)
    assert [p.predicted for p in out[4].people] == [True, False] or \
        [p.predicted for p in out[4].people] == [False, True]


def test_responses_have_the_seed_fields():
    out = _run({0: [(0, 0)]}, 2)
    body = hybrid_response(out[0], "test")
    assert_fields(body, SEED_HYBRID, "hybrid")
    assert body["keypoint_count"] == NUM_JOINTS and body["mesh_vertices"] == 0
    for kp in body["keypoints"]:
        assert_fields(kp, KEYPOINT, "keypoint")
    assert body["joint_angles_3d"]["spine"] is None  # the teacher has no spine joint
    assert body["camera_translation"][2] == pytest.approx(5.0, abs=0.05)
    record = stdio_record(out[1])
    assert_fields(record, SEED_STDIO, "stdio")
    assert record["predicted"] is True and record["trackId"] == 0
    empty = hybrid_response(_run({}, 1)[0], "test")
    assert empty["keypoints"] == [] and empty["track_id"] is None
    assert empty["tracking_confidence"] == 0.0
    preds = mmpose_predictions([{"frame_id": 0, "instances": []}], "test")
    assert preds["meta_info"]["num_keypoints"] == NUM_JOINTS
    assert math.isfinite(body["processing_time_ms"])


def test_a_job_answers_in_the_upright_frame_of_a_rotated_phone_video(tmp_path):
    """A portrait phone clip stored landscape with a display matrix: the job decodes it upright
    (downscaled) and reports sizes and 2D in the upright full-size frame."""
    import json

    import videotools
    from serve.engine import Engine
    from serve.jobs import process_video
    from shared_paths import VIDEOS

    pytest.importorskip("mediapipe")
    data = (VIDEOS / "street_short.mp4").read_bytes()  # 960 x 540, 5 frames
    rotated = videotools.with_display_matrix(data, 0, 1, -1, 0)
    result = process_video(Engine("mediapipe"), rotated, tmp_path / "job")
    first = json.loads((tmp_path / "job" / "frames.jsonl").read_text().splitlines()[0])
    assert result["frames"] == 5
    assert (first["frame_width"], first["frame_height"]) == (540, 960)
    xs = [k["x"] for p in first["people"] for k in p["keypoints"] if k["confidence"]]
    assert all(0 <= x <= 540 for x in xs)


def test_crop_models_sit_below_the_sessions_and_the_tracker():
    """engine -> session -> tracker -> models, one way: importing the tracker or a session does
    not import the engine (the import circle of issue 19 is gone)."""
    code = ("import sys, serve.session, serve.tracker, serve.models; "
            "print(sorted(m for m in sys.modules if m.startswith('serve.')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serve.engine" not in proc.stdout and "serve.models" in proc.stdout
