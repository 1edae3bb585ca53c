"""Evaluate a trained student on held-out videos: `evaluate(cfg)` and its Hydra CLI.

    python -m serve.evaluate checkpoint=runs/<run>/checkpoints/last.ckpt
    python -m serve.evaluate checkpoint=... source=local labeler=mediapipe max_samples=256

The held-out people are, by default, those training validated on: the source's split (default
"val", split by video id) labelled by the run's teacher, in video order, at most `max_samples`
people, cut by the crop code training uses. Labelling, prediction and the metrics are the
evaluation core's (`serve.clips`, which the benchmarks use too), so eval.json holds, per clip
(video id) and pooled: the student vs the teacher (MPJPE, PA-MPJPE, PCK3D@150 mm, 2D PCK), the
mean-pose baseline, the teacher's flip floor (its mirror pass vs itself, `flip_floor=true`) and
the share of people seen facing the wrong way (left/right swapped). The pooled 3D figures are also
written under the keys validation logs (`train.metrics.metric_dict`), and equal them on the same
set. Labels are the teacher's on real video and the ground truth on synthetic video with the
oracle teacher. Prints a table and writes `eval.json` (metrics and metadata only, never images).

Legend: B batch, J = 27 joints, S crop side. 3D in metres, pelvis-relative, camera axes.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from data.datamodule import EmptyValidationSetError
from labeler.flip_tta import FlipTTATeacher
from serve.checkpoint import (
    CheckpointError,
    LoadedStudent,
    MissingCheckpointError,
    load_student,
    required_checkpoint,
)
from serve.clips import (
    ClipReport,
    ClipSet,
    clip_table,
    clip_teacher,
    label_clips,
    measure_clips,
)
from stream_pose.runtime import CONF_DIR
from stream_pose.skeleton import JOINT_NAMES
from train.metrics import metric_dict

logger = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Label the held-out split, compare the student with the labels, write `eval.json`.

    Args:
        cfg: conf/evaluate.yaml: `checkpoint`, optional `run_config`, `source` / `labeler`
            (None: the training run's), `split`, `max_samples` (None: the run's
            `buffer.val_max_samples`, so that the defaults rebuild the very set training
            validated on), `flip_floor` (also label the mirror images, for the teacher's flip
            floor), `batch_size`, `device`, `seed` (None: the run's), `out` (None:
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
    clips, mirror_pass = held_out_clips(
        source_cfg, labeler_cfg, split=cfg.split, crop_size=loaded.crop_size,
        max_samples=cfg.get("max_samples") or run.buffer.val_max_samples,
        flip_floor=cfg.get("flip_floor", True),
    )
    measured = measure_clips(loaded.net, clips, loaded.mean_pose.mean(),
                             batch_size=cfg.batch_size, device=torch.device(cfg.device))
    report = build_report(
        loaded, measured, split=cfg.split, source=_class_attr(source_cfg, "kind"),
        teacher=_class_attr(labeler_cfg, "name"), mirror_pass=mirror_pass,
    )
    out = Path(cfg.out or cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", out / "eval.json")
    return report


def held_out_clips(
    source_cfg: DictConfig, labeler_cfg: DictConfig, *, split: str, crop_size: int,
    max_samples: int, flip_floor: bool = True,
) -> tuple[list[ClipSet], bool]:
    """The evaluation set, one `serve.clips.ClipSet` per video: the people training validates on.

    The source's `split` (not looped) is labelled by the teacher and cropped to `crop_size` in
    memory, in video order, at most `max_samples` people, kept as training's frozen val set
    keeps them (`serve.clips.label_clips`).

    Args:
        source_cfg, labeler_cfg: conf/source and conf/labeler nodes.
        flip_floor: run the teacher's mirror pass too (see `serve.clips.clip_teacher`).

    Returns:
        `(clips, mirror_pass)`: the clips, and whether they carry the mirror pass.

    Raises:
        data.datamodule.EmptyValidationSetError: the split gave no labelled person.
    """
    source = instantiate(source_cfg)(split=split, loop=False)
    try:
        teacher, averaged = clip_teacher(labeler_cfg, mirror=flip_floor)
        try:
            clips = label_clips(source, teacher, crop_size, max_people=max_samples,
                                averaged=averaged)
            mirror_pass = isinstance(teacher, FlipTTATeacher)
        finally:
            teacher.close()
    finally:
        source.close()
    if not clips:
        raise EmptyValidationSetError(
            f"the teacher found nobody in the {split!r} split of the source: give it videos "
            "with people in that split (e.g. source.val_videos / val_fraction, or split=all)")
    logger.info("evaluation set: %d people from %d videos: %s", sum(len(c) for c in clips),
                len(clips), ", ".join(f"{c.video_id} ({len(c)})" for c in clips))
    return clips, mirror_pass


def build_report(
    loaded: LoadedStudent, measured: ClipReport, *, split: str, source: str, teacher: str,
    mirror_pass: bool,
) -> dict[str, Any]:
    """eval.json: metadata, the `train.metrics.metric_dict` keys prefixed with the split, then
    the per-clip and pooled rows of the evaluation core.

    Keys: checkpoint, step, source, teacher, split, samples (people), videos, video_ids; the
    metric keys (for split "val" exactly those training logs: `val/mpjpe_mm`, `val/pa_mpjpe_mm`,
    `val/pck3d_150`, `val/mean_pose_mpjpe_mm`, `val/mpjpe_vs_mean_pose`, `val/mpjpe_mm/<joint>`);
    `visible_samples` (joint name -> count, joints with any); `mirror_pass` (whether the flip
    floor was measured); `clips` (one `serve.clips.clip_metrics` row per video, without the
    per-joint sums) and `all` (the same row pooled over every person: `video_id` "all").
    Errors in millimetres, PCK and the left/right swap share in percent.
    """
    student = measured.errors.student
    counts = {name: int(n) for name, n in zip(JOINT_NAMES, student.count.tolist()) if n > 0}
    video_ids = [row["video_id"] for row in measured.clips]
    return {
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "source": source,
        "teacher": teacher,
        "split": split,
        "samples": measured.pooled["people"],
        "videos": len(video_ids),
        "video_ids": video_ids,
        **metric_dict(student, measured.errors.mean_pose, prefix=split),
        "visible_samples": counts,
        "mirror_pass": mirror_pass,
        "clips": measured.clips,
        "all": measured.pooled,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as plain text: headline metrics, the per-clip table (`serve.clips.clip_table`,
    then all clips pooled), then one row per joint."""
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
        "per clip (errors in mm vs the teacher, PCK and swaps in %):",
        *clip_table([*report["clips"], report["all"]]),
        "",
        f"{'joint':<16}{'MPJPE mm':>10}{'visible':>9}",
    ]
    for name, count in report["visible_samples"].items():
        lines.append(f"{name:<16}{report[f'{p}/mpjpe_mm/{name}']:>10.1f}{count:>9d}")
    return "\n".join(lines)


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
