"""The LightningModule that distils a teacher's labels into the student.

Legend: B batch, J = 27 joints, S crop side in pixels. Batches are `stream_pose.batch.Batch`es:
`image` `[B, 3, S, S]` (uint8 from the loaders, float in [0, 1] after `on_after_batch_transfer`),
`kpts2d` `[B, J, 2]` crop pixels, `kpts3d` `[B, J, 3]` metres pelvis-relative (camera axes:
X right, Y down, Z forward), `visibility` `[B, J]` in {0, 1} and `K_crop` `[B, 3, 3]`; the ids
pass through.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import lightning as L
import torch
from torch import Tensor

from stream_pose.batch import Batch
from train.losses import heatmap_cross_entropy, masked_l1
from train.metrics import MeanPoseBaseline, PoseErrorMetric, metric_dict, mpjpe
from train.student import HEATMAP_STRIDE, PoseStudent, StudentOutput

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def image_to_float(image: Tensor) -> Tensor:
    """Crops as the student takes them: uint8 `[B, 3, S, S]` in [0, 255] -> float32 in [0, 1].

    Float input is assumed to be in [0, 1] already and passes through unchanged. Training,
    `serve.evaluate`, `serve.predict` and the exported models all go through here.
    """
    return image if image.is_floating_point() else image.float().div_(255.0)


class PoseDistillModule(L.LightningModule):
    """Trains a `PoseStudent` on teacher labels and validates it against held-out videos.

    Loss: `loss_3d_weight` x masked L1 on 3D (metres) + `loss_2d_weight` x masked L1 on 2D divided
    by S (so it is a fraction of the crop and does not depend on the crop size), and optionally
    `loss_heatmap_weight` x `train.losses.heatmap_cross_entropy` and, for a student with
    head3d="lift", `loss_lift_weight` x masked L1 of `net.lift(teacher 2D + noise)` against the
    teacher's 3D: the lifter also learns from the teacher's clean 2D-3D pairs, with Gaussian
    noise of `lift_noise` x S pixels so that it tolerates the student's 2D errors (joints the
    teacher does not see take the student's own 2D, detached).

    Validation logs, each pooled over every visible joint of the whole val set
    (`train.metrics.metric_dict`, the keys `serve.evaluate` writes too): `val/mpjpe_mm`,
    `val/pa_mpjpe_mm`, `val/pck3d_150` (percent within 150 mm), `val/mpjpe_mm/<joint>` for
    every joint seen visible, `val/mean_pose_mpjpe_mm`, the error of always predicting the mean
    training target (the bar the student has to clear), and `val/mpjpe_vs_mean_pose`; and
    `time/minutes`, wall-clock minutes since this fit started (for learning curves vs time).

    Args:
        net: the student.
        optimizer: factory from parameters to an optimizer (a Hydra `_partial_` of AdamW);
            only needed to train (None is fine for loading a checkpoint for inference).
        scheduler: optional factory from the optimizer to a per-step LR scheduler.
        loss_3d_weight, loss_2d_weight, loss_heatmap_weight, loss_lift_weight: loss weights
            (>= 0).
        heatmap_sigma: Gaussian of the heatmap target, in heatmap cells.
        lift_noise: standard deviation of the noise added to the teacher's 2D for the lift
            loss, as a fraction of the crop side.
        augment: optional batch augmentation (`data.augment.BatchAugment`), applied on the device
            to training batches only.
        trunk_lr_mult: learning rate of the student's trunk (`net.trunk`) relative to the rest;
            below 1 fine-tunes a pretrained trunk more gently than the freshly initialised heads.

    Raises:
        ValueError: on negative loss weights or a trunk_lr_mult <= 0.
    """

    def __init__(
        self,
        net: PoseStudent,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        loss_3d_weight: float = 1.0,
        loss_2d_weight: float = 1.0,
        augment: torch.nn.Module | None = None,
        loss_heatmap_weight: float = 0.0,
        heatmap_sigma: float = 1.0,
        loss_lift_weight: float = 0.0,
        lift_noise: float = 0.03,
        trunk_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        weights = (loss_3d_weight, loss_2d_weight, loss_heatmap_weight, loss_lift_weight)
        if min(weights) < 0 or lift_noise < 0 or heatmap_sigma <= 0 or trunk_lr_mult <= 0:
            raise ValueError(f"loss weights and lift_noise must be >= 0, heatmap_sigma and "
                             f"trunk_lr_mult > 0, got {weights}, {lift_noise}, {heatmap_sigma}, "
                             f"{trunk_lr_mult}")
        if loss_lift_weight > 0 and getattr(net, "head3d_kind", None) != "lift":
            raise ValueError("loss_lift_weight > 0 needs a student with head3d=lift "
                             "(model.net.head3d=lift)")
        # Only plain numbers go into the checkpoint: partials and modules would not load with
        # torch.load(weights_only=True) (docs/pitfalls.md).
        self.save_hyperparameters(logger=False, ignore=["net", "augment", "optimizer", "scheduler"])
        self.net, self.augment = net, augment
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.mean_pose = MeanPoseBaseline()
        self.val_student, self.val_mean_pose = PoseErrorMetric(), PoseErrorMetric()
        self._fit_start: float | None = None

    def on_fit_start(self) -> None:
        self._fit_start = time.monotonic()

    def forward(self, image: Tensor) -> StudentOutput:
        """`[B, 3, S, S]` floats in [0, 1] -> `StudentOutput` (`[B, J, 3]` m, `[B, J, 2]` px)."""
        return self.net(image)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """uint8 crops become float in [0, 1] here, on the device (docs/architecture.md, data contracts)."""
        return batch.replace(image=image_to_float(batch.image))

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Forward `batch` and return `loss`, its terms, and `mpjpe` (metres)."""
        out, logits = self.net.forward_with_heatmaps(batch.image)
        vis = batch.visibility
        hp = self.hparams
        loss_3d = masked_l1(out.kpts3d, batch.kpts3d, vis)
        size = self.net.crop_size
        loss_2d = masked_l1(out.kpts2d / size, batch.kpts2d / size, vis)
        terms = {"loss_3d": loss_3d, "loss_2d": loss_2d}
        loss = hp.loss_3d_weight * loss_3d + hp.loss_2d_weight * loss_2d
        if hp.loss_heatmap_weight > 0:
            terms["loss_heatmap"] = heatmap_cross_entropy(
                logits, batch.kpts2d, vis, HEATMAP_STRIDE, hp.heatmap_sigma)
            loss = loss + hp.loss_heatmap_weight * terms["loss_heatmap"]
        if hp.loss_lift_weight > 0:
            noisy = batch.kpts2d + hp.lift_noise * size * torch.randn_like(batch.kpts2d)
            teacher_2d = torch.where(vis.unsqueeze(-1) > 0, noisy, out.kpts2d.detach())
            terms["loss_lift"] = masked_l1(self.net.lift(teacher_2d), batch.kpts3d, vis)
            loss = loss + hp.loss_lift_weight * terms["loss_lift"]
        with torch.no_grad():
            err = mpjpe(out.kpts3d, batch.kpts3d, vis)
        return {"loss": loss, **terms, "mpjpe": err}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        # The baseline sees the targets before augmentation: flips would make it left-right
        # symmetric, i.e. a weaker bar than the true mean of the stream.
        self.mean_pose.update(batch.kpts3d, batch.visibility)
        if self.augment is not None:
            batch = self.augment(batch)
        out = self.losses(batch)
        b = len(batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in out.items() if k.startswith("loss")},
            batch_size=b, prog_bar=False,
        )
        self.log("train/mpjpe_mm", 1000.0 * out["mpjpe"], batch_size=b, prog_bar=True)
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        gt, vis = batch.kpts3d, batch.visibility
        pred = self.net(batch.image).kpts3d
        self.val_student.update(pred, gt, vis)
        self.val_mean_pose.update(self.mean_pose.mean().to(gt).expand_as(gt), gt, vis)

    def on_validation_epoch_end(self) -> None:
        values = metric_dict(self.val_student.compute(), self.val_mean_pose.compute(), "val")
        headline = ("val/mpjpe_mm", "val/pa_mpjpe_mm", "val/pck3d_150", "val/mean_pose_mpjpe_mm")
        self.log_dict({k: values.pop(k) for k in headline}, prog_bar=True)
        self.log_dict(values)  # ratio and per-joint errors: logs only, not the progress bar
        if self._fit_start is not None:
            self.log("time/minutes", (time.monotonic() - self._fit_start) / 60.0)
        self.val_student.reset()
        self.val_mean_pose.reset()

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups, the trunk's and the rest, each with `lr_mult`
        (the trunk's is `trunk_lr_mult`); frozen parameters are left out."""
        trunk = {id(p) for p in self.net.trunk.parameters()}
        mine = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in mine if id(p) in trunk],
                   "lr_mult": self.hparams.trunk_lr_mult},
                  {"params": [p for p in mine if id(p) not in trunk], "lr_mult": 1.0}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters (`param_groups`, each group's learning
        rate the factory's times its `lr_mult`), and the scheduler stepped every step.

        Raises:
            RuntimeError: if the module was built without an optimizer factory.
        """
        if self.optimizer_factory is None:
            raise RuntimeError("PoseDistillModule needs an optimizer factory to train")
        groups = self.param_groups()
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if base_lr is not None:
            for group in groups:
                group["lr"] = base_lr * group["lr_mult"]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        peak = getattr(self.scheduler_factory, "keywords", {}).get("max_lr")
        if isinstance(peak, (int, float)):  # OneCycleLR: one scalar peak would undo the groups
            kwargs["max_lr"] = [peak * g["lr_mult"] for g in optimizer.param_groups]
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
