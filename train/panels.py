"""Opt-in W&B image panels: the teacher's and the student's 2D skeletons on validation crops.

This WRITES CROPS TO DISK: wandb saves every logged image as a PNG in the run folder
(`<run>/wandb/<run-id>/files/media/images/`), the one exception to "no frame or crop is ever
written" (docs/architecture.md). It is therefore off by default and on only with `logger.log_images=true`.

Legend: N crops, J = 27 joints, S crop side in pixels. Crop pixels: x right, y down.
Colours follow `serve.overlay`: the person's left side orange, right side blue, midline green
(`stream_pose.skeleton.BONES`, `SIDE`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from stream_pose.batch import Batch
from stream_pose.draw import draw_pose

logger = logging.getLogger(__name__)

KEY = "val/skeletons"
CAPTION = "teacher | student"


def skeleton_panels(
    images: Tensor, teacher_kpts2d: Tensor, visibility: Tensor, student_kpts2d: Tensor
) -> list[np.ndarray]:
    """One `[S, 2S, 3]` uint8 RGB panel per crop: the teacher's skeleton left, the student's right.

    The teacher's skeleton shows its visible joints only (a bone needs both ends); the student's
    shows all J joints, since it predicts every one.

    Args:
        images: `[N, 3, S, S]` crops, uint8 in [0, 255] or float in [0, 1].
        teacher_kpts2d: `[N, J, 2]` crop pixels (the training target).
        visibility: `[N, J]` in {0, 1}.
        student_kpts2d: `[N, J, 2]` crop pixels (the student's output).

    Raises:
        ValueError: if the shapes disagree.
    """
    n, j = teacher_kpts2d.shape[:2]
    if images.ndim != 4 or images.shape[:2] != (n, 3) or student_kpts2d.shape != (n, j, 2) \
            or visibility.shape != (n, j):
        raise ValueError(f"expected [N, 3, S, S], [N, J, 2], [N, J], [N, J, 2]; got "
                         f"{tuple(images.shape)}, {tuple(teacher_kpts2d.shape)}, "
                         f"{tuple(visibility.shape)}, {tuple(student_kpts2d.shape)}")
    crops = _to_uint8_hwc(images)  # [N, S, S, 3]
    teacher, vis = teacher_kpts2d.detach().float().cpu().numpy(), visibility.cpu().numpy() > 0
    student = student_kpts2d.detach().float().cpu().numpy()
    panels = []
    for i in range(n):
        left, right = crops[i].copy(), crops[i].copy()
        draw_pose(left, teacher[i], vis[i])
        draw_pose(right, student[i])
        panels.append(np.concatenate([left, right], axis=1))
    return panels


def _to_uint8_hwc(images: Tensor) -> np.ndarray:
    """`[N, 3, S, S]` uint8 or float in [0, 1] -> `[N, S, S, 3]` uint8, contiguous (for OpenCV)."""
    if images.is_floating_point():
        images = (images.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).cpu().numpy())


class SkeletonPanels(L.Callback):
    """At every validation, logs `num_crops` panels (`skeleton_panels`) to each `WandbLogger`.

    The crops are the first of the first validation batch: the frozen val set keeps its order,
    so every validation shows the same people and the panels compare across steps. Logged under
    `val/skeletons` at the current global step. Without a `WandbLogger` it does nothing.
    Writes crops to disk (see the module docstring): add it only when the user asks.

    Args:
        num_crops: panels per validation (>= 1).

    Raises:
        ValueError: if `num_crops` < 1.
    """

    def __init__(self, num_crops: int = 4) -> None:
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.num_crops = num_crops

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if batch_idx or dataloader_idx or trainer.sanity_checking or not trainer.is_global_zero:
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        n = min(self.num_crops, len(batch))
        with torch.no_grad():  # validation_step returns nothing: predict the few crops again
            student = pl_module(batch.image[:n]).kpts2d
        panels = skeleton_panels(batch.image[:n], batch.kpts2d[:n],
                                 batch.visibility[:n], student)
        for lg in wandb_loggers:
            lg.log_image(KEY, panels, step=trainer.global_step, caption=[CAPTION] * n)
