"""Evaluate a trained student on held-out videos: `evaluate(cfg)` and its Hydra CLI.

    python -m serve.evaluate checkpoint=runs/<run>/checkpoints/last.ckpt
    python -m serve.evaluate checkpoint=... source=local labeler=mediapipe max_samples=256

The crops and labels come from the same code as training's validation set: the source's split
(default "val", split by video id) is labelled by the teacher and cropped by
`StreamDataModule` into a frozen in-memory set. The student is compared with those labels
(teacher labels on real video, ground truth on synthetic video with the oracle teacher) through
`train.metrics.PoseErrorMetric`, the metric that validation logs, and under the same keys.
Prints a table and writes `eval.json` (metrics and metadata only, never images).

Legend: B batch, J = 27 joints, S crop side. 3D in metres, pelvis-relative, camera axes.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from data.datamodule import StreamDataModule
from serve.checkpoint import (
    CheckpointError,
    LoadedStudent,
    MissingCheckpointError,
    load_student,
    required_checkpoint,
)
from stream_pose.runtime import CONF_DIR
from stream_pose.skeleton import JOINT_NAMES
from train.metrics import MeanPoseBaseline, PoseErrorMetric, PoseErrors, metric_dict
from train.module import image_to_float
from train.student import PoseStudent

logger = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Label the held-out split, compare the student with the labels, write `eval.json`.

    Args:
        cfg: conf/evaluate.yaml: `checkpoint`, optional `run_config`, `source` / `labeler`
            (None: the training run's), `split`, `max_samples` (None: the run's
            `buffer.val_max_samples`, so that the defaults rebuild the very set training
            validated on), `batch_size`, `device`, `seed` (None: the run's), `out` (None:
            `paths.output_dir`).

    Returns:
        The report (see `build_report`), as written to `<out>/eval.json`.

    Raises:
        MissingCheckpointError: no `checkpoint=`.
        FileNotFoundError, CheckpointError: see `serve.checkpoint.load_student`.
        data.datamodule.EmptyValidationSetError: the split gave no labelled person.
    """
    loaded = load_student(required_checkpoint(cfg), cfg.get("run_config"))
    run = loaded.run_config
    if cfg.get("seed") is None:
        cfg.seed = run.seed  # the source groups interpolate ${seed}
    source_cfg = cfg.source if cfg.get("source") else run.source
    labeler_cfg = cfg.labeler if cfg.get("labeler") else run.labeler
    data = held_out_set(source_cfg, labeler_cfg, split=cfg.split, crop_size=loaded.crop_size,
                        max_samples=cfg.get("max_samples") or run.buffer.val_max_samples,
                        batch_size=cfg.batch_size)
    loader = data.val_dataloader()
    student, baseline = measure(loaded.net, loaded.mean_pose, loader, torch.device(cfg.device))
    report = build_report(
        loaded, student, baseline, split=cfg.split, samples=len(loader.dataset),
        video_ids=data.val_video_ids, source=_class_attr(source_cfg, "kind"),
        teacher=_class_attr(labeler_cfg, "name"),
    )
    out = Path(cfg.out or cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", out / "eval.json")
    return report


def held_out_set(
    source_cfg: DictConfig, labeler_cfg: DictConfig, *, split: str, crop_size: int,
    max_samples: int, batch_size: int,
) -> StreamDataModule:
    """The frozen evaluation set, built by the DataModule that builds training's val set.

    The source's `split` is labelled by the teacher and cropped to `crop_size` in memory, at
    most `max_samples` people in video order; `val_dataloader()` then yields its batches.

    Raises:
        data.datamodule.EmptyValidationSetError: the split gave no labelled person.
    """
    data = StreamDataModule(
        _split_source(instantiate(source_cfg), split), instantiate(labeler_cfg),
        capacity=max_samples, crop_size=crop_size, batch_size=batch_size, min_samples=1,
        val_max_samples=max_samples,
    )
    data.setup("validate")  # no training stream: only the frozen set is built
    return data


@torch.no_grad()
def measure(
    net: PoseStudent, mean_pose: MeanPoseBaseline, loader: DataLoader, device: torch.device
) -> tuple[PoseErrors, PoseErrors]:
    """Pooled errors of the student and of the mean-pose baseline over every batch of `loader`.

    Args:
        net: the student, in eval mode.
        mean_pose: the training run's mean target pose (the baseline).
        loader: batches with `image` uint8 `[B, 3, S, S]`, `kpts3d` `[B, J, 3]` metres,
            `visibility` `[B, J]`.
        device: where the student runs.

    Returns:
        `(student, baseline)` `PoseErrors`.
    """
    net = net.to(device).eval()
    mean = mean_pose.mean()  # [J, 3]
    student, baseline = PoseErrorMetric(), PoseErrorMetric()
    for batch in loader:
        gt, vis = batch.kpts3d, batch.visibility
        pred = net(image_to_float(batch.image.to(device))).kpts3d.cpu()
        student.update(pred, gt, vis)
        baseline.update(mean.expand_as(gt), gt, vis)
    return student.compute(), baseline.compute()


def build_report(
    loaded: LoadedStudent, student: PoseErrors, baseline: PoseErrors, *, split: str,
    samples: int, video_ids: list[str], source: str, teacher: str,
) -> dict[str, Any]:
    """eval.json: metadata, then `train.metrics.metric_dict` keys prefixed with the split.

    Keys: checkpoint, step, source, teacher, split, samples, videos, video_ids, the metric keys
    (for split "val" exactly those training logs: `val/mpjpe_mm`, `val/pa_mpjpe_mm`,
    `val/pck3d_150`, `val/mean_pose_mpjpe_mm`, `val/mpjpe_vs_mean_pose`,
    `val/mpjpe_mm/<joint>`), and `visible_samples` (joint name -> count, joints with any).
    Errors in millimetres, PCK in percent.
    """
    counts = {name: int(n) for name, n in zip(JOINT_NAMES, student.count.tolist()) if n > 0}
    return {
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "source": source,
        "teacher": teacher,
        "split": split,
        "samples": samples,
        "videos": len(video_ids),
        "video_ids": video_ids,
        **metric_dict(student, baseline, prefix=split),
        "visible_samples": counts,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned plain-text table (headline metrics, then one row per joint)."""
    p = report["split"]
    lines = [
        f"checkpoint {report['checkpoint']} (step {report['step']})",
        f"{report['samples']} people from {report['videos']} {report['source']} videos "
        f"({p} split), labelled by {report['teacher']}",
        "",
        f"{'MPJPE':<24}{report[f'{p}/mpjpe_mm']:>9.1f} mm",
        f"{'PA-MPJPE':<24}{report[f'{p}/pa_mpjpe_mm']:>9.1f} mm",
        f"{'PCK3D@150mm':<24}{report[f'{p}/pck3d_150']:>9.1f} %",
        f"{'mean-pose MPJPE':<24}{report[f'{p}/mean_pose_mpjpe_mm']:>9.1f} mm",
        f"{'student / mean pose':<24}{report[f'{p}/mpjpe_vs_mean_pose']:>9.2f}",
        "",
        f"{'joint':<16}{'MPJPE mm':>10}{'visible':>9}",
    ]
    for name, count in report["visible_samples"].items():
        lines.append(f"{name:<16}{report[f'{p}/mpjpe_mm/{name}']:>10.1f}{count:>9d}")
    return "\n".join(lines)


def _split_source(factory: Callable[..., Any], split: str) -> Callable[..., Any]:
    """The source factory with `split` fixed: the DataModule asks for "val", evaluate may not."""
    return lambda **kwargs: factory(**{**kwargs, "split": split})


def _class_attr(node: DictConfig, attr: str) -> str:
    """A class attribute (`kind` of a source, `name` of a teacher) of a config's `_target_`."""
    target = node.get("_target_", "")
    try:
        return str(getattr(get_object(target), attr))
    except Exception:  # not importable, or without the attribute
        return target


def main() -> None:
    """CLI: `python -m serve.evaluate checkpoint=... [overrides]`; bad input exits with a line."""
    _hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg)
    except (MissingCheckpointError, CheckpointError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    print(format_report(report))
    print(f"wrote {Path(cfg.out or cfg.paths.output_dir) / 'eval.json'}")


if __name__ == "__main__":
    main()
