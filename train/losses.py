"""The student's training losses.

Legend: B batch, J = 27 joints, S crop side in pixels, h x w heatmap cells of `stride` pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_l1(pred: Tensor, target: Tensor, vis: Tensor) -> Tensor:
    """Mean absolute error over the coordinates of visible joints.

    Args:
        pred, target: `[B, J, D]`.
        vis: `[B, J]` weights, usually visibility in {0, 1}.

    Returns:
        Scalar: sum of vis * |pred - target| / (sum of vis x D); 0 if nothing is visible.
    """
    w = vis.to(pred.dtype).unsqueeze(-1)
    return ((pred - target).abs() * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


def heatmap_cross_entropy(logits: Tensor, kpts2d: Tensor, vis: Tensor, stride: int,
                          sigma_cells: float = 1.0) -> Tensor:
    """Cross-entropy of the heatmaps' softmax against a Gaussian around each target joint.

    The soft-argmax coordinate loss alone lets a heatmap stay wide or split in two as long as
    its mean lands right; a dense target (as in the heatmap regression of Tompson et al., NIPS
    2014, and the distribution view of Nibali et al., "Numerical Coordinate Regression with
    Convolutional Neural Networks", 2018) asks for one sharp peak.

    Args:
        logits: `[B, J, h, w]` heatmap logits; cell i has its centre at (i + 0.5) stride - 0.5.
        kpts2d: `[B, J, 2]` target crop pixels (x, y).
        vis: `[B, J]` weights in [0, 1].
        stride: crop pixels per cell.
        sigma_cells: the Gaussian's standard deviation, in cells.

    Returns:
        Scalar: the visibility-weighted mean over joints (nats); 0 if nothing is visible.
    """
    b, j, h, w = logits.shape
    centres = lambda n: (torch.arange(n, device=logits.device, dtype=logits.dtype) + 0.5  # noqa: E731
                         ) * stride - 0.5
    sigma = sigma_cells * stride
    gx = torch.exp(-0.5 * ((centres(w) - kpts2d[..., :1]) / sigma) ** 2)  # [B, J, w]
    gy = torch.exp(-0.5 * ((centres(h) - kpts2d[..., 1:]) / sigma) ** 2)  # [B, J, h]
    target = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).flatten(2)  # [B, J, h * w]
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    ce = -(target * logits.flatten(2).log_softmax(-1)).sum(-1)  # [B, J]
    weight = vis.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)
