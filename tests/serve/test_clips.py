"""The evaluation core (serve/clips.py): clips labelled in memory, grouped by video id, the very
people training validates on, and the per-clip and pooled metrics on them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from data.datamodule import StreamDataModule
from labeler.flip_tta import FlipTTATeacher
from labeler.oracle import OracleTeacher
from serve.clips import (
    clip_metrics,
    clip_teacher,
    concat,
    label_clip,
    label_clips,
    left_right_swapped,
    measure_clips,
    pooled,
    predict,
)
from stream_pose.skeleton import FLIP_PERM, JOINT_NAMES
from video_sources.synthetic import SyntheticSource

CROP = 32


def _synthetic(**kwargs):
    return SyntheticSource(num_videos=3, frames_per_video=3, seed=5, image_size=(160, 120),
                           **kwargs)


def _frozen_val_set(max_samples: int) -> dict[str, torch.Tensor]:
    """Training's frozen val set of the same source and teacher, as `StreamDataModule` builds it."""
    data = StreamDataModule(
        lambda **kw: _synthetic(**kw), OracleTeacher, capacity=max_samples, crop_size=CROP,
        batch_size=4, min_samples=1, val_max_samples=max_samples,
    )
    data.setup("validate")
    batches = list(data.val_dataloader())
    return {k: torch.cat([getattr(b, k) for b in batches])
            for k in ("image", "kpts3d", "kpts2d", "visibility")}


def test_left_right_swaps_are_counted_per_person():
    teacher = torch.rand(4, 27, 2) * 100
    pred = teacher + 0.5
    pred[:3] = pred[:3, torch.as_tensor(FLIP_PERM)]  # three people seen facing the other way
    vis = torch.ones(4, 27)
    assert left_right_swapped(pred, teacher, vis).item() == 0.75
    assert left_right_swapped(teacher, teacher, vis).item() == 0.0


def test_clips_are_whole_videos_in_source_order():
    clips = label_clips(_synthetic(split="val", loop=False), OracleTeacher(), CROP)
    source = _synthetic(split="val", loop=False)
    ids = list(dict.fromkeys(frame.video.id for frame in source))
    assert [c.video_id for c in clips] == ids and len(ids) == 3
    for clip in clips:
        assert clip.frames == 3 and len(clip) >= 1
        assert clip.image.shape == (len(clip), 3, CROP, CROP) and clip.image.dtype == torch.uint8
        assert clip.kpts3d.shape == (len(clip), 27, 3) and clip.kpts3d.dtype == torch.float32
        assert not clip.mirror_vis.any()  # a plain teacher: no mirror pass
        assert torch.all(clip.kpts3d[:, 0] == 0)  # pelvis-relative
    with pytest.raises(ValueError, match="held"):
        label_clip(_synthetic(split="val", loop=False), OracleTeacher(), "x", CROP)


@pytest.mark.parametrize("max_samples", [100, 5, 6, 7])
def test_label_clips_keeps_the_people_training_validates_on(max_samples):
    """Same people, same crops, same labels, same order as the DataModule's frozen val set,
    including where the last frame brings more people than `max_samples` (the ring buffer
    then drops the oldest)."""
    clips = label_clips(_synthetic(split="val", loop=False), OracleTeacher(), CROP,
                        max_people=max_samples)
    everyone = concat(clips)
    frozen = _frozen_val_set(max_samples)
    assert len(everyone) == len(frozen["image"]) <= max_samples
    for key, value in frozen.items():
        torch.testing.assert_close(getattr(everyone, key), value, rtol=0, atol=0, msg=key)


def test_metrics_of_the_teacher_itself_and_of_a_mirrored_prediction():
    clips = label_clips(_synthetic(split="val", loop=False), OracleTeacher(), CROP)
    mean = concat(clips).kpts3d.mean(0)  # [J, 3]
    perfect = [(c.kpts3d, c.kpts2d) for c in clips]
    rows = [clip_metrics(c, *p, mean) for c, p in zip(clips, perfect)]
    total = pooled(clips, perfect, mean)
    assert total["people"] == sum(r["people"] for r in rows) == sum(len(c) for c in clips)
    assert total["frames"] == sum(r["frames"] for r in rows) == 9
    for row in [*rows, total]:
        assert row["mpjpe_mm"] == 0 and row["pa_mpjpe_mm"] < 1e-3
        assert row["pck3d_150"] == row["pck2d_0.05"] == row["pck2d_0.1"] == 100
        assert row["left_right_swapped_pct"] == 0 and row["mpjpe_vs_mean_pose"] == 0
        assert row["mean_pose_mpjpe_mm"] > 0 and row["flip_floor_mpjpe_mm"] is None
    # Everyone predicted with left and right swapped: all counted as facing the other way.
    perm = torch.as_tensor(FLIP_PERM)
    swapped = [(c.kpts3d[:, perm], c.kpts2d[:, perm]) for c in clips]
    assert pooled(clips, swapped, mean)["left_right_swapped_pct"] == pytest.approx(100, abs=1)


class TinyNet(torch.nn.Module):
    """A fixed stand-in for the student: `kpts3d` `[B, J, 3]` m (pelvis-relative) and `kpts2d`
    `[B, J, 2]` crop pixels from the mean colour of the crop (`[B, 3, S, S]` float in [0, 1])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 27 * 5)

    def forward(self, image):
        out = self.lin(image.mean((2, 3))).view(-1, 27, 5)
        kpts3d = 0.3 * (out[..., :3] - out[:, :1, :3])  # the pelvis at 0, as a student's
        return SimpleNamespace(kpts3d=kpts3d, kpts2d=CROP / 2 * (out[..., 3:] + 1))


def _without_joint_sums(row):
    return {k: v for k, v in row.items() if not k.startswith("_joint")}


def test_measured_report_is_the_per_clip_rows_and_their_pool():
    clips = label_clips(_synthetic(split="val", loop=False), OracleTeacher(), CROP)
    mean = concat(clips).kpts3d.mean(0)
    net = TinyNet()
    measured = measure_clips(net, clips, mean, batch_size=3)
    preds = [predict(net, c.image, batch_size=1000) for c in clips]  # batching changes nothing
    expected_rows = [clip_metrics(c, *p, mean) for c, p in zip(clips, preds)]
    expected_total = pooled(clips, preds, mean)
    assert len(measured.clips) == len(expected_rows)
    for row, expected in zip(measured.clips, expected_rows):
        assert row == pytest.approx(_without_joint_sums(expected))
    assert measured.pooled == pytest.approx(_without_joint_sums(expected_total))
    assert [r["video_id"] for r in measured.clips] == [c.video_id for c in clips]
    assert measured.pooled["people"] == sum(r["people"] for r in measured.clips)
    assert 0 <= measured.pooled["left_right_swapped_pct"] <= 100
    per_joint = measured.per_joint_mpjpe_mm()
    assert per_joint["pelvis"] == 0 and set(per_joint) == set(JOINT_NAMES)  # the oracle sees all
    for name, total, count in zip(JOINT_NAMES, expected_total["_joint_sum_mm"],
                                  expected_total["_joint_count"]):
        assert per_joint[name] == pytest.approx(total / count, rel=1e-4)
    # The pooled errors are the pooled row's: the figures eval.json writes under val/ keys.
    assert 1000 * float(measured.errors.student.mpjpe) == pytest.approx(
        measured.pooled["mpjpe_mm"])
    assert measured.errors.flip_floor is None


def test_the_evaluation_teacher_follows_the_labeler_config():
    oracle = OmegaConf.create({"_target_": "labeler.oracle.OracleTeacher", "_partial_": True})
    teacher, averaged = clip_teacher(oracle)
    assert isinstance(teacher, OracleTeacher) and not averaged  # exact truth: no mirror pass
    pytest.importorskip("mediapipe")
    mediapipe = OmegaConf.create({"_target_": "labeler.mediapipe_teacher.MediaPipeTeacher",
                                  "_partial_": True})
    flip = OmegaConf.create({"_target_": "labeler.flip_tta.FlipTTATeacher", "_partial_": True,
                             "teacher": mediapipe})
    for node, mirror, kind, want_averaged in ((mediapipe, True, FlipTTATeacher, False),
                                              (flip, False, FlipTTATeacher, True)):
        teacher, averaged = clip_teacher(node, mirror=mirror)
        try:
            assert isinstance(teacher, kind) and averaged == want_averaged
        finally:
            teacher.close()
    teacher, _ = clip_teacher(mediapipe, mirror=False)
    try:
        assert not isinstance(teacher, FlipTTATeacher)
    finally:
        teacher.close()
