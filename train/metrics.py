"""3D pose metrics, batched and visibility-masked, in torch.

Legend: B batch, J = 27 joints. Poses are `[B, J, 3]` metres (pelvis-relative, camera axes);
visibility `[B, J]` is 1 where the joint counts and 0 where it does not. Every mean is over the
visible joints only: sum of errors / number of visible joints, never a mean of per-sample means.

Validation (`train.module`) and `serve.evaluate` both pool through `PoseErrorMetric` and name
their numbers with `metric_dict`, so training logs and eval.json hold the same keys.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from stream_pose.skeleton import JOINT_NAMES, NUM_JOINTS

# MPI-INF-3DHP's PCK threshold: a joint is correct within 150 mm (Mehta et al., "Monocular 3D
# Human Pose Estimation In The Wild Using Improved CNN Supervision", 3DV 2017).
PCK3D_THRESHOLD_M = 0.150


def _check(pred: Tensor, gt: Tensor, vis: Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"need pred and gt [B, J, 3], got {tuple(pred.shape)}, {tuple(gt.shape)}")
    if vis.shape != pred.shape[:2]:
        raise ValueError(f"need visibility [B, J] = {tuple(pred.shape[:2])}, got {vis.shape}")


def _reduce(err: Tensor, vis: Tensor, reduction: str) -> Tensor:
    """`[B, J]` per-joint errors -> masked errors (`"none"`) or their visible mean (`"mean"`)."""
    err = err * vis
    if reduction == "none":
        return err
    if reduction == "mean":
        return err.sum() / vis.sum().clamp_min(1.0)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def mpjpe(pred: Tensor, gt: Tensor, vis: Tensor, reduction: str = "mean") -> Tensor:
    """Mean per-joint position error (Ionescu et al., Human3.6M, TPAMI 2014).

    Args:
        pred, gt: `[B, J, 3]` metres.
        vis: `[B, J]` visibility in {0, 1} (float or bool).
        reduction: `"mean"`: scalar, Euclidean error averaged over all visible joints of the
            batch (0 when none is visible); `"none"`: `[B, J]` errors, 0 at invisible joints.

    Returns:
        Metres, in pred's dtype.

    Raises:
        ValueError: on mismatched shapes or an unknown reduction.
    """
    _check(pred, gt, vis)
    return _reduce(torch.linalg.vector_norm(pred - gt, dim=-1), vis.to(pred.dtype), reduction)


def procrustes_align(pred: Tensor, gt: Tensor, vis: Tensor) -> Tensor:
    """Similarity transform of each `pred` onto its `gt` that best fits the visible joints.

    Weighted least squares over scale s > 0, rotation R (det R = +1, no reflection) and
    translation t, minimising sum_j vis_j |s R pred_j + t - gt_j|^2 (Umeyama, "Least-squares
    estimation of transformation parameters between two point patterns", TPAMI 1991; Gower,
    "Generalized Procrustes analysis", Psychometrika 1975). Computed in float64 on the CPU:
    the 3x3 SVDs are cheap there, and MPS has neither float64 nor a native SVD.

    Args:
        pred, gt: `[B, J, 3]` metres.
        vis: `[B, J]` weights in {0, 1}; a sample needs 3 non-collinear visible joints for a
            unique rotation (fewer still gives a finite, arbitrary-rotation answer).

    Returns:
        `[B, J, 3]` aligned pred, in pred's dtype.
    """
    _check(pred, gt, vis)
    p, g, w = (t.to("cpu", torch.float64) for t in (pred, gt, vis))
    w = (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).unsqueeze(-1)  # [B, J, 1], sums to 1
    mu_p, mu_g = (w * p).sum(1, keepdim=True), (w * g).sum(1, keepdim=True)  # [B, 1, 3]
    x, y = p - mu_p, g - mu_g
    cov = (w * y).transpose(1, 2) @ x  # [B, 3, 3], Umeyama's Sigma_xy (target x source)
    u, sig, vt = torch.linalg.svd(cov)
    d = torch.ones_like(sig)
    # Flip the weakest axis where U V^T is a reflection, so that det R = +1.
    d[:, -1] = torch.where(torch.linalg.det(u @ vt) < 0, -1.0, 1.0)
    rot = u @ torch.diag_embed(d) @ vt  # [B, 3, 3]
    var_p = (w * x.square()).sum((1, 2))  # [B]
    scale = (sig * d).sum(-1) / var_p.clamp_min(1e-12)  # [B]
    aligned = scale[:, None, None] * x @ rot.transpose(1, 2) + mu_g
    return aligned.to(pred.device, pred.dtype)


def pa_mpjpe(pred: Tensor, gt: Tensor, vis: Tensor, reduction: str = "mean") -> Tensor:
    """MPJPE after per-sample Procrustes alignment on the visible joints (`procrustes_align`).

    Scale, rotation and translation errors are forgiven; what is left is the pose's shape error.
    Args, returns and errors as for `mpjpe`.
    """
    return mpjpe(procrustes_align(pred, gt, vis), gt, vis, reduction)


def pck3d(
    pred: Tensor, gt: Tensor, vis: Tensor, threshold_m: float = PCK3D_THRESHOLD_M,
    reduction: str = "mean",
) -> Tensor:
    """3D PCK: the fraction of visible joints whose error is below `threshold_m` (MPI-INF-3DHP).

    Poses are pelvis-relative already, so no root alignment is applied here.

    Args:
        pred, gt: `[B, J, 3]` metres.
        vis: `[B, J]` visibility in {0, 1}.
        threshold_m: metres; 0.150 is the standard PCK3D@150 mm.
        reduction: `"mean"`: scalar fraction in [0, 1] over all visible joints (0 when none is
            visible); `"none"`: `[B, J]` hits in {0, 1}, 0 at invisible joints.

    Raises:
        ValueError: on mismatched shapes, a non-positive threshold or an unknown reduction.
    """
    if threshold_m <= 0:
        raise ValueError(f"threshold_m must be > 0 metres, got {threshold_m}")
    err = mpjpe(pred, gt, vis, reduction="none")
    return _reduce((err < threshold_m).to(pred.dtype), vis.to(pred.dtype), reduction)


def per_joint_mpjpe(pred: Tensor, gt: Tensor, vis: Tensor) -> tuple[Tensor, Tensor]:
    """MPJPE of each joint over the samples where it is visible.

    Args:
        pred, gt: `[B, J, 3]` metres.
        vis: `[B, J]` visibility in {0, 1}.

    Returns:
        `([J] metres, NaN for a joint never visible, [J] visible-sample counts)`.

    Raises:
        ValueError: on mismatched shapes.
    """
    total = mpjpe(pred, gt, vis, reduction="none").sum(0)
    count = vis.to(pred.dtype).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1.0), math.nan), count


class PoseErrors(NamedTuple):
    """Errors pooled over a whole set (see `PoseErrorMetric`).

    Attributes:
        mpjpe: scalar metres over all visible joints (NaN if none was visible).
        pa_mpjpe: scalar metres after per-sample Procrustes alignment (NaN if none).
        pck3d: scalar fraction in [0, 1] of visible joints within the PCK threshold (NaN if none).
        per_joint: `[J]` metres, the MPJPE of each joint (NaN where never visible).
        count: `[J]` visible samples of each joint.
    """

    mpjpe: Tensor
    pa_mpjpe: Tensor
    pck3d: Tensor
    per_joint: Tensor
    count: Tensor


class PoseErrorMetric(Metric):
    """MPJPE, PA-MPJPE, PCK3D@150 mm and per-joint MPJPE, pooled over all visible joints.

    The state is four `[J]` sums (errors, aligned errors, PCK hits, visible counts), summed across
    processes under DDP, so every figure is a sum over the visible joints of the whole set divided
    by their number, however the set was batched. The states are not saved in checkpoints.

    Args:
        num_joints: J.
    """

    full_state_update = False

    def __init__(self, num_joints: int = NUM_JOINTS) -> None:
        super().__init__()
        for name in ("err", "pa_err", "hits", "count"):
            self.add_state(name, default=torch.zeros(num_joints), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, vis: Tensor) -> None:
        """Add a batch: `pred`, `gt` `[B, J, 3]` metres, `vis` `[B, J]` in {0, 1}.

        Raises:
            ValueError: on mismatched shapes.
        """
        pred, gt, vis = pred.detach().float(), gt.float(), vis.float()
        self.err += mpjpe(pred, gt, vis, reduction="none").sum(0)
        self.pa_err += pa_mpjpe(pred, gt, vis, reduction="none").sum(0)
        self.hits += pck3d(pred, gt, vis, reduction="none").sum(0)
        self.count += vis.sum(0)

    def compute(self) -> PoseErrors:
        """The pooled `PoseErrors` of everything added since the last `reset()`."""
        n = self.count.sum()
        pooled = (t.sum() / n if n > 0 else t.new_tensor(math.nan)
                  for t in (self.err, self.pa_err, self.hits))
        per_joint = torch.where(self.count > 0, self.err / self.count.clamp_min(1.0), math.nan)
        return PoseErrors(*pooled, per_joint=per_joint, count=self.count.clone())


def metric_dict(
    student: PoseErrors, baseline: PoseErrors | None = None, prefix: str = "val"
) -> dict[str, float]:
    """The metric keys that training logs and eval.json share, as plain floats.

    Keys (P = prefix): `P/mpjpe_mm`, `P/pa_mpjpe_mm`, `P/pck3d_150` (percent of visible joints
    within 150 mm), `P/mpjpe_mm/<joint>` for every joint with a visible sample; with a baseline
    also `P/mean_pose_mpjpe_mm` and `P/mpjpe_vs_mean_pose` (student / baseline MPJPE: below 1
    beats always predicting the mean pose). NaN where nothing was measured.
    """
    out = {
        f"{prefix}/mpjpe_mm": 1000.0 * float(student.mpjpe),
        f"{prefix}/pa_mpjpe_mm": 1000.0 * float(student.pa_mpjpe),
        f"{prefix}/pck3d_150": 100.0 * float(student.pck3d),
    }
    if baseline is not None:
        out[f"{prefix}/mean_pose_mpjpe_mm"] = 1000.0 * float(baseline.mpjpe)
        ratio = float(student.mpjpe) / float(baseline.mpjpe) if baseline.mpjpe > 0 else math.nan
        out[f"{prefix}/mpjpe_vs_mean_pose"] = ratio
    for name, err, n in zip(JOINT_NAMES, student.per_joint.tolist(), student.count.tolist()):
        if n > 0:
            out[f"{prefix}/mpjpe_mm/{name}"] = 1000.0 * err
    return out


class MeanPoseBaseline(nn.Module):
    """Running visibility-weighted mean of 3D targets: the "always predict the mean pose" baseline.

    Its state is in buffers, so it moves with the LightningModule's device and is saved in
    checkpoints. They are float32, not float64, because MPS has no float64; float32 counts stay
    exact up to 2^24 samples per joint and the mean's rounding error is negligible beyond.
    Joints never seen visible have mean 0 (the pelvis position).
    """

    def __init__(self, num_joints: int = NUM_JOINTS) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(num_joints, 3))
        self.register_buffer("count", torch.zeros(num_joints))

    @torch.no_grad()
    def update(self, kpts3d: Tensor, vis: Tensor) -> None:
        """Add a batch of targets: `kpts3d` `[B, J, 3]` metres, `vis` `[B, J]` in {0, 1}.

        Raises:
            ValueError: on shapes other than `[B, J, 3]` and `[B, J]` with this J.
        """
        shape_ok = kpts3d.ndim == 3 and kpts3d.shape[1:] == self.total.shape
        if not shape_ok or vis.shape != kpts3d.shape[:2]:
            raise ValueError(
                f"need kpts3d [B, {len(self.count)}, 3] and vis [B, {len(self.count)}], "
                f"got {tuple(kpts3d.shape)}, {tuple(vis.shape)}"
            )
        w = vis.to(self.total)
        self.total += (w.unsqueeze(-1) * kpts3d.to(self.total)).sum(0)
        self.count += w.sum(0)

    def mean(self) -> Tensor:
        """`[J, 3]` float32 metres: the mean visible target per joint (0 where none was seen)."""
        return self.total / self.count.clamp_min(1.0).unsqueeze(-1)
