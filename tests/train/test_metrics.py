"""MPJPE, PA-MPJPE, PCK3D, per-joint MPJPE, their pooled metric and the mean-pose baseline."""

import math

import pytest
import torch

from stream_pose.skeleton import JOINT_INDEX, JOINT_NAMES
from train.metrics import (
    MeanPoseBaseline,
    PoseErrorMetric,
    metric_dict,
    mpjpe,
    pa_mpjpe,
    pck3d,
    per_joint_mpjpe,
    procrustes_align,
)


def _poses(b=4, j=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, j, 3, generator=g, dtype=torch.float64) * 0.3


def _rotation(axis, deg):
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_mpjpe_of_a_pose_with_itself_is_zero():
    gt = _poses()
    assert mpjpe(gt, gt, torch.ones(4, 27)) == 0


def test_mpjpe_of_a_shifted_copy_equals_the_shift():
    gt = _poses()
    shift = torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64)  # 5 cm
    assert mpjpe(gt + shift, gt, torch.ones(4, 27)).item() == pytest.approx(0.05, abs=1e-9)


def test_masked_joints_are_ignored_and_the_mean_is_over_visible_joints():
    gt = _poses(b=2)
    pred = gt.clone()
    pred[0, :5] += torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)  # 10 cm on 5 joints
    pred[1, 7] += 100.0  # a wild error on a joint that is not visible
    vis = torch.ones(2, 27)
    vis[1, 7] = 0
    vis[0, 5:] = 0  # sample 0 counts only its 5 shifted joints
    # 5 joints at 0.1 m and 26 at 0 m: the pooled mean, not the mean of per-sample means (0.05).
    assert mpjpe(pred, gt, vis).item() == pytest.approx(0.5 / 31, abs=1e-9)
    per_joint = mpjpe(pred, gt, vis, reduction="none")
    assert per_joint.shape == (2, 27) and per_joint[1, 7] == 0


def test_no_visible_joint_gives_zero_not_nan():
    gt = _poses()
    assert mpjpe(gt + 1, gt, torch.zeros(4, 27)) == 0


def test_pa_mpjpe_forgives_rotation_scale_and_translation():
    gt = _poses()
    rot = _rotation([0.3, 1.0, -0.2], 70)
    pred = 1.7 * gt @ rot.T + torch.tensor([0.5, -0.2, 3.0], dtype=torch.float64)
    assert mpjpe(pred, gt, torch.ones(4, 27)) > 0.1
    assert pa_mpjpe(pred, gt, torch.ones(4, 27)).item() < 1e-5


def test_pa_mpjpe_aligns_on_visible_joints_only():
    gt = _poses()
    pred = gt @ _rotation([0, 0, 1], 40).T
    pred[:, 3] += 5.0  # an outlier the alignment must not see
    vis = torch.ones(4, 27)
    vis[:, 3] = 0
    assert pa_mpjpe(pred, gt, vis).item() < 1e-5


def test_pa_mpjpe_does_not_undo_a_reflection():
    gt = _poses()
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    # A reflection would fit exactly; a proper rotation cannot, so a clear error remains.
    assert pa_mpjpe(mirrored, gt, torch.ones(4, 27)).item() > 0.05


def test_procrustes_recovers_a_rotated_copy():
    gt = _poses()
    pred = 0.5 * gt @ _rotation([1.0, 0.0, 1.0], -120).T
    torch.testing.assert_close(procrustes_align(pred, gt, torch.ones(4, 27)), gt)


def test_pa_mpjpe_is_at_most_mpjpe():
    gt = _poses(b=16, seed=1)
    pred = gt + 0.1 * _poses(b=16, seed=2)
    vis = (torch.rand(16, 27, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    pa = pa_mpjpe(pred, gt, vis, reduction="none").sum(1)
    plain = mpjpe(pred, gt, vis, reduction="none").sum(1)
    assert torch.all(pa <= plain + 1e-9)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        mpjpe(torch.zeros(2, 27, 3), torch.zeros(2, 26, 3), torch.ones(2, 27))
    with pytest.raises(ValueError):
        mpjpe(torch.zeros(2, 27, 3), torch.zeros(2, 27, 3), torch.ones(2, 26))
    with pytest.raises(ValueError):
        mpjpe(torch.zeros(2, 27, 3), torch.zeros(2, 27, 3), torch.ones(2, 27), reduction="sum")


def test_mean_pose_baseline_weights_by_visibility():
    base = MeanPoseBaseline()
    a = torch.zeros(2, 27, 3)
    a[0, 4] = torch.tensor([1.0, 2.0, 3.0])
    a[1, 4] = torch.tensor([100.0, 100.0, 100.0])  # invisible: must not enter the mean
    vis = torch.ones(2, 27)
    vis[1, 4] = 0
    base.update(a, vis)
    base.update(torch.full((1, 27, 3), 3.0), torch.ones(1, 27))
    mean = base.mean()
    assert mean.shape == (27, 3) and mean.dtype == torch.float32
    torch.testing.assert_close(mean[4], torch.tensor([2.0, 2.5, 3.0]))
    torch.testing.assert_close(mean[0], torch.full((3,), 1.0))  # (0 + 0 + 3) / 3


def test_mean_pose_baseline_state_is_saved():
    base = MeanPoseBaseline()
    base.update(torch.ones(3, 27, 3), torch.ones(3, 27))
    restored = MeanPoseBaseline()
    restored.load_state_dict(base.state_dict())
    torch.testing.assert_close(restored.mean(), base.mean())
    with pytest.raises(ValueError):
        base.update(torch.ones(3, 26, 3), torch.ones(3, 26))


def _with_errors(gt, errors_m):
    """A copy of `gt` [B, J, 3] moved along x by `errors_m` [B, J] metres per joint."""
    pred = gt.clone()
    pred[..., 0] += errors_m
    return pred


def test_pck3d_counts_visible_joints_under_150_mm():
    gt = _poses(b=2)
    errors = torch.zeros(2, 27, dtype=torch.float64)
    errors[0, :4] = 0.149  # just inside
    errors[0, 4:10] = 0.151  # just outside
    errors[1, 0] = 5.0  # outside, but not visible
    vis = torch.ones(2, 27)
    vis[1, 0] = 0
    pred = _with_errors(gt, errors)
    # 53 visible joints, of which 6 miss.
    assert pck3d(pred, gt, vis).item() == pytest.approx(47 / 53)
    hits = pck3d(pred, gt, vis, reduction="none")
    assert hits[0, :4].eq(1).all() and hits[0, 4:10].eq(0).all() and hits[1, 0] == 0
    assert pck3d(pred, gt, vis, threshold_m=0.2).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pck3d(pred, gt, vis, threshold_m=0.0)


def test_per_joint_mpjpe_averages_each_joint_over_its_visible_samples():
    gt = _poses(b=3)
    errors = torch.zeros(3, 27, dtype=torch.float64)
    errors[:, 4] = torch.tensor([0.1, 0.3, 9.0])  # left_knee; the 9 m one is invisible
    errors[:, 7] = 0.05
    vis = torch.ones(3, 27)
    vis[2, 4] = 0
    vis[:, 12] = 0  # neck: never visible
    err, count = per_joint_mpjpe(_with_errors(gt, errors), gt, vis)
    assert err.shape == count.shape == (27,)
    assert err[4].item() == pytest.approx(0.2) and count[4] == 2
    assert err[7].item() == pytest.approx(0.05) and err[0] == 0
    assert math.isnan(err[12]) and count[12] == 0


def test_pooled_metric_equals_the_metrics_of_the_concatenated_set():
    gt = _poses(b=11, seed=4).float()
    pred = gt + 0.1 * _poses(b=11, seed=5).float()
    vis = (torch.rand(11, 27, generator=torch.Generator().manual_seed(6)) > 0.3).float()
    metric = PoseErrorMetric()
    for sl in (slice(0, 8), slice(8, 11)):  # unequal batches: a mean of batch means differs
        metric.update(pred[sl], gt[sl], vis[sl])
    out = metric.compute()
    assert out.mpjpe.item() == pytest.approx(mpjpe(pred, gt, vis).item(), rel=1e-5)
    assert out.pa_mpjpe.item() == pytest.approx(pa_mpjpe(pred, gt, vis).item(), rel=1e-5)
    assert out.pck3d.item() == pytest.approx(pck3d(pred, gt, vis).item(), rel=1e-5)
    per_joint, count = per_joint_mpjpe(pred, gt, vis)
    torch.testing.assert_close(out.per_joint, per_joint)
    torch.testing.assert_close(out.count, count)
    metric.reset()
    assert math.isnan(metric.compute().mpjpe)  # nothing measured is NaN, not 0


def test_pooled_pa_mpjpe_of_a_rotated_scaled_shifted_copy_is_zero():
    gt = _poses(b=5, seed=7)
    rot = _rotation([1.0, -0.5, 0.2], 130)
    pred = (0.6 * gt @ rot.T + torch.tensor([0.3, 1.0, -2.0], dtype=torch.float64)).float()
    metric = PoseErrorMetric()
    metric.update(pred, gt.float(), torch.ones(5, 27))
    out = metric.compute()
    assert out.pa_mpjpe.item() < 1e-5
    assert out.mpjpe.item() > 0.5 and out.pck3d.item() < 0.1


def test_metric_dict_names_the_keys_training_logs():
    gt = _poses(b=2).float()
    errors = torch.zeros(2, 27)
    errors[:, JOINT_INDEX["left_wrist"]] = 0.2
    vis = torch.ones(2, 27)
    vis[:, JOINT_INDEX["spine1"]] = 0  # a joint the teacher lacks gets no per-joint key
    student, baseline = PoseErrorMetric(), PoseErrorMetric()
    student.update(_with_errors(gt, errors), gt, vis)
    baseline.update(torch.zeros_like(gt), gt, vis)
    out = metric_dict(student.compute(), baseline.compute(), prefix="val")
    per_joint = {k for k in out if k.startswith("val/mpjpe_mm/")}
    assert per_joint == {f"val/mpjpe_mm/{n}" for n in JOINT_NAMES if n != "spine1"}
    assert out["val/mpjpe_mm/left_wrist"] == pytest.approx(200.0, rel=1e-5)
    assert out["val/mpjpe_mm"] == pytest.approx(2 * 200.0 / 52, rel=1e-5)
    assert out["val/pck3d_150"] == pytest.approx(100.0 * 50 / 52, rel=1e-5)
    assert out["val/pa_mpjpe_mm"] > 0  # one bad joint: the best similarity fit spreads it
    base = 1000.0 * mpjpe(torch.zeros_like(gt), gt, vis).item()
    assert out["val/mean_pose_mpjpe_mm"] == pytest.approx(base, rel=1e-5)
    assert out["val/mpjpe_vs_mean_pose"] == pytest.approx(out["val/mpjpe_mm"] / base, rel=1e-5)
