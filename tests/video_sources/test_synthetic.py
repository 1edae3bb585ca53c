"""Tests for the synthetic source: determinism, the Frame contract, and ground-truth geometry."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

import numpy as np
import pytest

from stream_pose.camera import project
from stream_pose.codec import in_frame
from stream_pose.skeleton import BONES, JOINT_INDEX, NUM_JOINTS, PARENTS
from stream_pose.types import Frame
from video_sources.base import VideoSource
from video_sources.synthetic import SyntheticSource
from video_sources.synthetic.body import KNEE_FLEXION_RANGE_DEG, REST_OFFSETS, forward_kinematics

J = JOINT_INDEX
T = 16


@pytest.fixture(scope="module")
def val_frames() -> list[Frame]:
    """Eight short val videos at random sizes, up to two people each."""
    return list(SyntheticSource(split="val", num_videos=8, frames_per_video=T, seed=3))


def _labels(frames):
    """(frame, label) for every ground-truth person in `frames`."""
    return [(f, lab) for f in frames for lab in f.truth]


def _tracks(frames):
    """{(video id, track id): [label per frame]}."""
    tracks = defaultdict(list)
    for f, lab in _labels(frames):
        tracks[f.video.id, lab.track_id].append(lab)
    return tracks


def _frames_equal(a: Frame, b: Frame) -> bool:
    same_truth = len(a.truth) == len(b.truth) and all(
        np.array_equal(x.kpts2d, y.kpts2d) and np.array_equal(x.kpts3d, y.kpts3d)
        for x, y in zip(a.truth, b.truth)
    )
    return np.array_equal(a.image, b.image) and np.array_equal(a.K, b.K) and same_truth


def test_frames_follow_the_frame_contract(val_frames):
    src = SyntheticSource(split="val")
    assert isinstance(src, VideoSource) and src.kind == "synthetic"
    sizes = set()
    for f in val_frames:
        h, w = f.hw
        sizes.add((h, w))
        assert f.image.dtype == np.uint8 and f.image.shape == (h, w, 3)
        assert 192 <= h <= 384 and 192 <= w <= 384
        assert f.K.dtype == np.float32 and f.K.shape == (3, 3)
        assert f.K[0, 0] == f.K[1, 1] > 0
        np.testing.assert_allclose(f.K[:2, 2], [w / 2, h / 2])
        assert f.time_s == pytest.approx(f.index / 30.0)
        assert f.video.kind == "synthetic" and f.video.id.startswith("synth-val-")
        for lab in f.truth:
            assert lab.teacher == "ground_truth" and lab.confidence == 1.0
            assert lab.kpts2d.shape == (NUM_JOINTS, 2) and lab.kpts2d.dtype == np.float32
            assert lab.kpts3d.shape == (NUM_JOINTS, 3) and lab.kpts3d.dtype == np.float32
            assert lab.visibility.shape == (NUM_JOINTS,) and lab.root_cam.shape == (3,)
        assert len({lab.track_id for lab in f.truth}) == len(f.truth) <= 2
    assert len(sizes) > 1, "image size should vary between videos"
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)
    assert any(len(f.truth) == 2 for f in val_frames), "some videos should have two people"


def test_same_seed_gives_identical_frames():
    kwargs = dict(split="train", num_videos=2, frames_per_video=4, seed=7, loop=False)
    for a, b in zip(SyntheticSource(**kwargs), SyntheticSource(**kwargs), strict=True):
        assert a.video.id == b.video.id and _frames_equal(a, b)


def test_video_k_is_the_same_alone_or_in_the_stream():
    src = SyntheticSource(split="val", num_videos=3, frames_per_video=4, seed=1)
    streamed = [f for f in src if f.video.id == "synth-val-0002"]
    alone = list(src.video(2))
    assert len(streamed) == len(alone) == 4
    assert all(_frames_equal(a, b) for a, b in zip(streamed, alone))


def test_splits_and_seeds_give_different_videos():
    def first(**kw):
        return next(iter(SyntheticSource(frames_per_video=2, image_size=(256, 320), **kw)))

    train, val, other_seed = first(split="train"), first(split="val"), first(seed=1)
    assert train.video.id == "synth-train-0000" and val.video.id == "synth-val-0000"
    assert not np.array_equal(train.image, val.image)
    assert not np.array_equal(train.image, other_seed.image)
    assert not np.array_equal(train.truth[0].kpts3d, val.truth[0].kpts3d)


def test_val_iterates_each_video_once_and_counts_stats():
    src = SyntheticSource(split="val", num_videos=3, frames_per_video=5, loop=True)
    frames = list(src)
    ids = [f.video.id for f in frames]
    assert ids == [f"synth-val-{k:04d}" for k in range(3) for _ in range(5)]
    assert [f.index for f in frames] == list(range(5)) * 3
    assert (src.stats.videos_ok, src.stats.frames, src.stats.videos_skipped) == (3, 15, 0)


def test_train_loop_streams_new_videos_beyond_num_videos():
    src = SyntheticSource(split="train", num_videos=2, frames_per_video=2, image_size=(192, 192))
    frames = list(itertools.islice(src, 10))
    ids = [f.video.id for f in frames[::2]]
    assert ids == [f"synth-train-{k:04d}" for k in range(5)]
    images = [f.image for f in frames[::2]]
    assert not any(np.array_equal(images[0], im) for im in images[1:]), "videos must not repeat"
    src.close()
    assert list(src) == []


def test_shards_partition_the_stream():
    kw = dict(split="val", num_videos=5, frames_per_video=1, image_size=(192, 192))
    ids = [
        {f.video.id for f in SyntheticSource(shard=s, num_shards=2, **kw)} for s in range(2)
    ]
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == {f.video.id for f in SyntheticSource(**kw)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "holdout"},
        {"num_videos": 0},
        {"max_people": 0},
        {"seed": -1},
        {"fps": 0.0},
        {"image_size": (100,)},
        {"size_range": (300, 200)},
        {"shard": 2, "num_shards": 2},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SyntheticSource(**kwargs)


def test_truth_is_pelvis_relative_and_projects_onto_kpts2d(val_frames):
    truncated = 0
    for f, lab in _labels(val_frames):
        vis = lab.visibility > 0
        assert np.all(lab.kpts3d[0] == 0) and vis[0]
        pixels = project(lab.root_cam + lab.kpts3d, f.K)
        np.testing.assert_allclose(pixels[vis], lab.kpts2d[vis], atol=1e-3)
        np.testing.assert_array_equal(vis, in_frame(lab.kpts2d, f.hw))
        assert np.all(lab.kpts3d[~vis] == 0)
        x0, y0, x1, y1 = lab.bbox_xyxy
        assert np.all((lab.kpts2d[vis] >= [x0, y0]) & (lab.kpts2d[vis] <= [x1, y1]))
        assert 2.0 <= lab.root_cam[2] <= 9.0  # placed in [3, 8] m, then drifts a little
        truncated += not vis.all()
    assert truncated < len(_labels(val_frames)) / 2, "most people should be fully in frame"


def test_bones_are_rigid_within_each_track(val_frames):
    thighs = []
    for labels in _tracks(val_frames).values():
        kp = np.stack([lab.kpts3d for lab in labels])  # [T, J, 3]
        vis = np.stack([lab.visibility for lab in labels]) > 0
        for parent, child in BONES:
            both = vis[:, parent] & vis[:, child]
            if both.sum() < 2:
                continue
            length = np.linalg.norm(kp[both, child] - kp[both, parent], axis=-1)
            assert np.ptp(length) < 1e-4, (parent, child)
            if child == J["left_knee"]:
                thighs.append(length[0])
    assert len(thighs) >= 4 and np.std(thighs) > 0.01, "proportions should vary per person"


def _knee_angles(frames, side):
    """Knee bend angles (degrees, 0 = straight), thigh and shin directions, body front."""
    hip, knee, ankle = (J[f"{side}_{n}"] for n in ("hip", "knee", "ankle"))
    out = []
    for _, lab in _labels(frames):
        if lab.visibility[[hip, knee, ankle, J["right_hip"], J["spine1"]]].all():
            k = lab.kpts3d
            thigh, shin = k[knee] - k[hip], k[ankle] - k[knee]
            thigh, shin = thigh / np.linalg.norm(thigh), shin / np.linalg.norm(shin)
            # The pelvis frame's front = its left x its up (a right-handed body frame); spine1
            # hangs rigidly off the pelvis, so pelvis -> spine1 is the pelvis's up.
            front = np.cross(k[J["left_hip"]] - k[J["right_hip"]], k[J["spine1"]] - k[0])
            front /= np.linalg.norm(front)
            angle = np.degrees(np.arccos(np.clip(thigh @ shin, -1, 1)))
            out.append((angle, thigh @ front, shin @ front))
    return np.array(out)


@pytest.mark.parametrize("side", ["left", "right"])
def test_knees_bend_backwards_within_the_sampled_range(val_frames, side):
    a = _knee_angles(val_frames, side)
    lo, hi = KNEE_FLEXION_RANGE_DEG
    assert len(a) > 20
    assert np.all((a[:, 0] >= lo - 0.1) & (a[:, 0] <= hi + 0.1))
    assert a[:, 0].max() > 45, "some knees should be clearly bent"
    bent = a[:, 0] > 30
    # A bent knee puts the shin further back than the thigh relative to the body's front.
    assert np.all(a[bent, 2] < a[bent, 1])


def test_people_stand_upright(val_frames):
    """Camera Y points down, so a standing person's head has smaller Y than the lower ankle."""
    head, ankles = J["head"], [J["left_ankle"], J["right_ankle"]]
    checked = 0
    for _, lab in _labels(val_frames):
        if lab.visibility[[head, *ankles]].all():
            assert lab.kpts3d[head, 1] < lab.kpts3d[ankles, 1].max() - 0.5
            assert lab.kpts3d[head, 1] < 0  # above the pelvis
            checked += 1
    assert checked > 20


def test_pose_varies_across_videos(val_frames):
    rel = defaultdict(list)
    for _, lab in _labels(val_frames):
        for j in (J["left_wrist"], J["right_wrist"], J["left_ankle"], J["right_ankle"]):
            if lab.visibility[j]:
                rel[j].append(lab.kpts3d[j])
    for j, points in rel.items():
        assert np.std(points, axis=0).max() > 0.05, j
    # Full-circle yaw: the body's left-right axis points both ways in X across videos.
    hips_x = [lab.kpts3d[J["left_hip"], 0] for _, lab in _labels(val_frames)]
    assert min(hips_x) < -0.03 and max(hips_x) > 0.03


def _pelvis_frame_coords(lab):
    """`[J, 3]` joints in the pelvis's own (left, up, front) axes, metres."""
    k = lab.kpts3d
    left = k[J["left_hip"]] - k[J["right_hip"]]
    left /= np.linalg.norm(left)
    up = k[J["spine1"]] - k[0]
    up -= left * (up @ left)
    up /= np.linalg.norm(up)
    return k @ np.stack([left, up, np.cross(left, up)]).T


def test_right_side_poses_mirror_the_left():
    """Mirrored across the body's midplane, right limbs are distributed like left limbs."""
    src = SyntheticSource(split="val", num_videos=64, frames_per_video=2, max_people=1)
    coords = np.stack(
        [_pelvis_frame_coords(lab) for _, lab in _labels(src) if lab.visibility.all()]
    )  # [N, J, 3]
    assert len(coords) > 60
    mirror = np.array([-1.0, 1.0, 1.0])
    for side in ("knee", "ankle", "elbow", "wrist"):
        left = coords[:, J[f"left_{side}"]].mean(0)
        right = (coords[:, J[f"right_{side}"]] * mirror).mean(0)
        assert left[0] > 0.05, side  # left limbs hang on the person's left
        np.testing.assert_allclose(left, right, atol=0.08, err_msg=side)


def test_motion_is_smooth_within_a_video(val_frames):
    steps, spans = [], []
    for labels in _tracks(val_frames).values():
        kp = np.stack([lab.kpts3d for lab in labels])[:, : J["right_wrist"] + 1]
        if np.stack([lab.visibility for lab in labels])[:, :22].all():
            steps.append(np.linalg.norm(np.diff(kp, axis=0), axis=-1).mean())
            spans.append(np.linalg.norm(kp[-1] - kp[0], axis=-1).mean())
    assert len(steps) >= 3
    assert np.mean(steps) < 0.3 * np.mean(spans)


def _hue_side_votes(frames, side):
    """For each unoccluded visible knee: is the rendered pixel warm (R > B)?"""
    knee = J[f"{side}_knee"]
    votes = []
    for f, lab in _labels(frames):
        if not lab.visibility[knee]:
            continue
        cam = lab.root_cam + lab.kpts3d  # [J, 3], meaningful for visible joints
        px = lab.kpts2d
        near = (lab.visibility > 0) & (cam[:, 2] < cam[knee, 2] - 0.02)
        reach = 0.15 * f.K[0, 0] / cam[knee, 2]  # pixels within ~15 cm of the knee
        if np.any(np.linalg.norm(px[near] - px[knee], axis=-1) < reach):
            continue  # a nearer part may cover the knee
        x, y = np.round(px[knee]).astype(int)
        patch = f.image[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].reshape(-1, 3)
        r, _, b = np.median(patch.astype(float), axis=0)
        votes.append(r > b)
    return np.array(votes)


def test_left_limbs_are_warm_and_right_limbs_cool():
    frames = list(SyntheticSource(split="val", num_videos=8, frames_per_video=8, max_people=1))
    left, right = _hue_side_votes(frames, "left"), _hue_side_votes(frames, "right")
    assert len(left) > 15 and len(right) > 15
    assert left.mean() > 0.9 and right.mean() < 0.1


def test_forward_kinematics_moves_only_descendants_and_keeps_bone_lengths():
    rng = np.random.default_rng(0)
    rest = forward_kinematics(
        REST_OFFSETS, np.tile(np.eye(3), (1, NUM_JOINTS, 1, 1)), np.eye(3)[None], np.zeros((1, 3))
    )[0]
    np.testing.assert_allclose(rest[1:] - rest[PARENTS[1:]], REST_OFFSETS[1:], atol=1e-12)
    local = np.tile(np.eye(3), (1, NUM_JOINTS, 1, 1))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local[0, J["left_elbow"]] = q * np.sign(np.linalg.det(q))  # a proper rotation
    posed = forward_kinematics(REST_OFFSETS, local, np.eye(3)[None], np.zeros((1, 3)))[0]
    moved = np.flatnonzero(np.linalg.norm(posed - rest, axis=-1) > 1e-9)
    assert moved.tolist() == [J["left_wrist"]]
    np.testing.assert_allclose(
        np.linalg.norm(posed[1:] - posed[PARENTS[1:]], axis=-1),
        np.linalg.norm(REST_OFFSETS[1:], axis=-1),
    )
    with pytest.raises(ValueError):
        forward_kinematics(REST_OFFSETS[:22], local, np.eye(3)[None], np.zeros((1, 3)))


def test_render_throughput_report():
    """Prints frames/s at 256x320 (run with -s); the design targets >= 300 per core."""
    src = SyntheticSource(split="val", num_videos=4, frames_per_video=32, image_size=(256, 320))
    start = time.perf_counter()
    n = sum(1 for _ in src)
    fps = n / (time.perf_counter() - start)
    print(f"\nsynthetic source: {fps:.0f} frames/s at 256x320")
    assert n == src.stats.frames == 128
