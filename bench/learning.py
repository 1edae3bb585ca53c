"""Benchmark: how well the student learns 3D pose from real footage, on whole clips it never saw.

    python -m bench.learning --checkpoint runs/<run>/checkpoints/last.ckpt [--json]
    python -m bench.learning --train [hydra overrides ...]      # trains experiment=real_cpu first
    python -m bench.learning --curves runs/<a> runs/<b> --out docs/img/learning_curves.png

The held-out clips are the training run's validation videos (`source.val_videos`; for
`source=real` five diverse clips, see conf/source/real.yaml): the producers never stream them, so
every number here is on people, places and cameras the student never trained on. Each clip is
decoded in memory, every frame is labelled by the teacher on the frame *and* on its mirror image
(`labeler.flip_tta.FlipTTATeacher.label_pairs`), and the person crops are cut exactly as training
cuts them (`stream_pose.codec.crop_sample`, the teacher's box). Reported per clip and pooled:

- student vs teacher: MPJPE, PA-MPJPE, PCK3D@150 mm (pelvis-relative 3D, visible joints), 2D PCK
  in crop pixels at 0.05 and 0.1 of the crop side (what serving draws), per-joint MPJPE;
- the mean-pose baseline: always predicting the mean training target (the checkpoint's
  `MeanPoseBaseline`), MPJPE and PA-MPJPE, and the student's ratio to each (targets: <= 0.6 and
  <= 0.7 pooled, < 1 on every clip);
- the teacher's noise floor: the teacher on the mirror image (mirrored back) vs the teacher on the
  frame. The student is judged against the plain teacher, so it cannot be expected to get closer
  to it than the teacher gets to itself;
- left/right: the share of people whose predicted 2D fits the teacher better with left and
  right swapped, i.e. seen facing the other way (front for back): the error that dominates on
  unseen clips;
- speed: student ms/frame (batch 1, torch, this machine's threads) beside the teacher's ms/frame
  (one pass), measured in the same run.

Writes `learning.json` and, when the run logged validation curves (`<run>/csv/metrics.csv`),
`learning_curves.png` (val MPJPE and PA-MPJPE vs step and vs minutes, with the mean-pose
baseline, the 0.6x target and the flip floor) into the run folder, or `--out`.
No frame or crop is written anywhere.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import REPO_ROOT
from labeler.flip_tta import FlipTTATeacher
from serve.checkpoint import LoadedStudent, load_student
from stream_pose.camera import apply_affine
from stream_pose.codec import box_crop_affine, crop_sample
from stream_pose.skeleton import FLIP_PERM, JOINT_NAMES
from train.metrics import mpjpe, pa_mpjpe, pck3d
from train.module import image_to_float

logger = logging.getLogger("bench.learning")

PCK2D_FRACTIONS = (0.05, 0.1)  # of the crop side
TARGET_RATIO, TARGET_PA_RATIO = 0.6, 0.7  # issue 10: student / mean pose, pooled
CURVES_PNG, REPORT_JSON = "learning_curves.png", "learning.json"
CLIP_FIELDS = ("image", "kpts2d", "kpts3d", "visibility", "K_crop", "mirror2d", "mirror3d",
               "mirror_vis")


@dataclass
class ClipSet:
    """One held-out clip, labelled and cropped in memory.

    Attributes:
        video_id: the clip's id.
        image: `[N, 3, S, S]` uint8 crops, one per labelled person.
        kpts2d: `[N, J, 2]` float32 crop pixels (the teacher's).
        kpts3d: `[N, J, 3]` float32 metres, pelvis-relative (the teacher's).
        visibility: `[N, J]` float32 in {0, 1}.
        K_crop: `[N, 3, 3]` float32 crop intrinsics.
        mirror2d: `[N, J, 2]` the teacher on the mirror image, mirrored back, in crop pixels.
        mirror3d: `[N, J, 3]` the same in 3D (0 where the mirror pass missed the person).
        mirror_vis: `[N, J]` visibility of `mirror2d`/`mirror3d` (all 0 where it missed).
        frames: frames decoded.
        teacher_s: seconds in the teacher, both passes.
    """

    video_id: str
    image: torch.Tensor
    kpts2d: torch.Tensor
    kpts3d: torch.Tensor
    visibility: torch.Tensor
    K_crop: torch.Tensor
    mirror2d: torch.Tensor
    mirror3d: torch.Tensor
    mirror_vis: torch.Tensor
    frames: int
    teacher_s: float


def label_clip(source: Any, teacher: FlipTTATeacher, video_id: str, crop_size: int) -> ClipSet:
    """Label every frame of one clip (plain and mirrored) and cut the crops.

    Args:
        source: a finite `VideoSource` over this one clip.
        teacher: the flip pair teacher; reset here first.
        video_id: the clip's id (for the report).
        crop_size: S, the student's crop side.
    """
    rows: dict[str, list[np.ndarray]] = {k: [] for k in CLIP_FIELDS}
    teacher.reset()
    frames, teacher_s = 0, 0.0
    for frame in source:
        frames += 1
        start = time.perf_counter()
        pairs = teacher.label_pairs(frame)
        teacher_s += time.perf_counter() - start
        for plain, mirrored in pairs:
            try:
                sample = crop_sample(frame, plain, crop_size)
            except ValueError:  # degenerate box: training skips it too
                continue
            rows["image"].append(sample.image)
            rows["kpts2d"].append(sample.kpts2d)
            rows["kpts3d"].append(sample.kpts3d)
            rows["visibility"].append(sample.visibility)
            rows["K_crop"].append(sample.K_crop)
            if mirrored is None:
                mirrored = dataclasses.replace(plain, visibility=np.zeros_like(plain.visibility))
            affine = box_crop_affine(plain.bbox_xyxy, crop_size)  # the plain crop's
            rows["mirror2d"].append(apply_affine(mirrored.kpts2d, affine))
            rows["mirror3d"].append(mirrored.kpts3d)
            rows["mirror_vis"].append(mirrored.visibility)
    if not rows["image"]:
        raise RuntimeError(f"the teacher found nobody in held-out clip {video_id!r}")
    arrays = {k: torch.from_numpy(np.stack(v)) for k, v in rows.items()}
    return ClipSet(video_id=video_id, frames=frames, teacher_s=teacher_s, **arrays)


@torch.no_grad()
def predict(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 128
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student `(kpts3d [N, J, 3] m, kpts2d [N, J, 2] crop px)` for uint8 crops `[N, 3, S, S]`."""
    net.eval()
    out3, out2 = [], []
    for i in range(0, len(images), batch_size):
        out = net(image_to_float(images[i:i + batch_size]))
        out3.append(out.kpts3d)
        out2.append(out.kpts2d)
    return torch.cat(out3), torch.cat(out2)


def clip_metrics(clip: ClipSet, pred3d: torch.Tensor, pred2d: torch.Tensor,
                 mean_pose: torch.Tensor) -> dict[str, Any]:
    """Student, mean-pose and flip-floor errors on one clip (mm, %), plus per-joint sums.

    Per-joint entries (`_joint_sum_mm`, `_joint_count`) let clips be pooled exactly.
    """
    gt, vis = clip.kpts3d, clip.visibility
    mean = mean_pose.to(gt).expand_as(gt)
    side = clip.image.shape[-1]
    d2 = torch.linalg.vector_norm(pred2d - clip.kpts2d, dim=-1)  # [N, J] crop px
    both = vis * clip.mirror_vis
    err = torch.linalg.vector_norm(pred3d - gt, dim=-1) * vis  # [N, J] m
    out: dict[str, Any] = {
        "video_id": clip.video_id,
        "frames": clip.frames,
        "people": len(gt),
        "mpjpe_mm": 1000 * mpjpe(pred3d, gt, vis).item(),
        "pa_mpjpe_mm": 1000 * pa_mpjpe(pred3d, gt, vis).item(),
        "pck3d_150": 100 * pck3d(pred3d, gt, vis).item(),
        "mean_pose_mpjpe_mm": 1000 * mpjpe(mean, gt, vis).item(),
        "mean_pose_pa_mpjpe_mm": 1000 * pa_mpjpe(mean, gt, vis).item(),
        "flip_floor_mpjpe_mm": 1000 * mpjpe(clip.mirror3d, gt, both).item() if both.any() else None,
        "flip_floor_pa_mpjpe_mm": (1000 * pa_mpjpe(clip.mirror3d, gt, both).item()
                                   if both.any() else None),
        "teacher_ms_per_frame": 1000 * clip.teacher_s / max(clip.frames, 1) / 2,
        "_joint_sum_mm": (1000 * err.sum(0)).tolist(),
        "_joint_count": vis.sum(0).tolist(),
    }
    for frac in PCK2D_FRACTIONS:
        hit = ((d2 < frac * side).float() * vis).sum() / vis.sum().clamp_min(1)
        out[f"pck2d_{frac:g}"] = 100 * hit.item()
    out["left_right_swapped_pct"] = 100 * left_right_swapped(pred2d, clip.kpts2d, vis).item()
    out["mpjpe_vs_mean_pose"] = out["mpjpe_mm"] / out["mean_pose_mpjpe_mm"]
    out["pa_mpjpe_vs_mean_pose"] = out["pa_mpjpe_mm"] / out["mean_pose_pa_mpjpe_mm"]
    return out


def left_right_swapped(pred2d: torch.Tensor, kpts2d: torch.Tensor, vis: torch.Tensor
                       ) -> torch.Tensor:
    """Fraction of people whose predicted 2D fits the teacher better with left and right swapped.

    A person's left/right decides which way they face (front or back), and the lifted 3D turns
    with it: a swapped person is roughly mirrored in depth. Mean 2D error over visible joints,
    as predicted vs with `FLIP_PERM` applied to the prediction.

    Args:
        pred2d, kpts2d: `[N, J, 2]` crop pixels; vis: `[N, J]`.

    Returns:
        Scalar in [0, 1].
    """
    perm = torch.as_tensor(FLIP_PERM)
    weight = vis / vis.sum(1, keepdim=True).clamp_min(1)
    err = (torch.linalg.vector_norm(pred2d - kpts2d, dim=-1) * weight).sum(1)
    swapped = (torch.linalg.vector_norm(pred2d[:, perm] - kpts2d, dim=-1) * weight).sum(1)
    return (swapped < err).float().mean()


def pooled(clips: list[ClipSet], preds: list[tuple[torch.Tensor, torch.Tensor]],
           mean_pose: torch.Tensor) -> dict[str, Any]:
    """`clip_metrics` over every person of every clip together (the headline row)."""
    cat = ClipSet(
        video_id="all", frames=sum(c.frames for c in clips),
        teacher_s=sum(c.teacher_s for c in clips),
        **{k: torch.cat([getattr(c, k) for c in clips]) for k in CLIP_FIELDS},
    )
    return clip_metrics(cat, torch.cat([p[0] for p in preds]), torch.cat([p[1] for p in preds]),
                        mean_pose)


def student_ms_per_frame(net: torch.nn.Module, crop_size: int, repeats: int = 50) -> float:
    """Median ms of one batch-1 forward pass (uint8 crop made float inside), after warm-up."""
    crop = torch.randint(0, 256, (1, 3, crop_size, crop_size), dtype=torch.uint8)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            start = time.perf_counter()
            net(image_to_float(crop))
            if i >= 5:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def held_out_ids(run: DictConfig, clips: list[str] | None) -> list[str]:
    """The clips to evaluate: `clips`, else the run's `source.val_videos`.

    Raises:
        SystemExit: with a one-line fix when neither names any clip.
    """
    ids = clips or list(run.source.get("val_videos") or [])
    if not ids:
        sys.exit("error: the run has no source.val_videos (held-out clips); name them with "
                 "--clips ID [ID ...] or train with source=real")
    return ids


def clip_source(run: DictConfig, video_id: str) -> Any:
    """A finite source over one clip, decoded as the run decoded (its paths and max_side)."""
    factory = instantiate(run.source)
    return factory(split="val", val_videos=[video_id], loop=False, frameskip=1,
                   max_frames=None)


def teacher_pair(run: DictConfig) -> FlipTTATeacher:
    """The plain/mirror pair over the run's teacher (unwrapped if it was flip-averaged already).

    The student is compared with the plain teacher, as a user would run it.
    """
    node = run.labeler
    inner = node.get("teacher") if "flip_tta" in str(node.get("_target_", "")) else node
    return FlipTTATeacher(instantiate(inner))


def evaluate_run(loaded: LoadedStudent, ids: list[str]) -> dict[str, Any]:
    """Label the held-out clips, run the student, and build the report (see module docstring)."""
    run = loaded.run_config
    net, mean_pose = loaded.net.eval(), loaded.mean_pose.mean()
    teacher = teacher_pair(run)
    clips, preds, rows = [], [], []
    try:
        for video_id in ids:
            source = clip_source(run, video_id)
            try:
                clip = label_clip(source, teacher, video_id, loaded.crop_size)
            finally:
                source.close()
            pred = predict(net, clip.image)
            clips.append(clip)
            preds.append(pred)
            rows.append(clip_metrics(clip, *pred, mean_pose))
            logger.info("%s: %d people, MPJPE %.1f mm (mean pose %.1f mm)", video_id,
                        rows[-1]["people"], rows[-1]["mpjpe_mm"], rows[-1]["mean_pose_mpjpe_mm"])
    finally:
        teacher.close()
    total = pooled(clips, preds, mean_pose)
    per_joint = {
        name: s / n for name, s, n in zip(JOINT_NAMES, total.pop("_joint_sum_mm"),
                                           total.pop("_joint_count")) if n > 0
    }
    for row in rows:
        row.pop("_joint_sum_mm")
        row.pop("_joint_count")
    student_ms = student_ms_per_frame(net, loaded.crop_size)
    return {
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "teacher": teacher.name,
        "clips": rows,
        "all": total,
        "per_joint_mpjpe_mm": per_joint,
        "student_ms_per_frame": student_ms,
        "teacher_ms_per_frame": total["teacher_ms_per_frame"],
        "torch_threads": torch.get_num_threads(),
        "targets": {
            "mpjpe_vs_mean_pose<=0.6": total["mpjpe_vs_mean_pose"] <= TARGET_RATIO,
            "pa_mpjpe_vs_mean_pose<=0.7": total["pa_mpjpe_vs_mean_pose"] <= TARGET_PA_RATIO,
            "every_clip_beats_mean_pose": all(r["mpjpe_vs_mean_pose"] < 1 for r in rows),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (one row per clip, then all clips pooled) and notes."""
    head = ("| clip | people | MPJPE | PA-MPJPE | PCK3D@150 | 2D PCK@0.05 / @0.1 | L/R swapped "
            "| mean pose (PA) | ratio (PA ratio) | flip floor (PA) |")
    lines = [f"checkpoint {report['checkpoint']} (step {report['step']}), teacher "
             f"{report['teacher']}; errors in mm vs the teacher, PCK and swaps in %", "", head,
             "|" + "---|" * 10]
    for row in [*report["clips"], report["all"]]:
        floor = row["flip_floor_mpjpe_mm"]
        floor_text = "n/a" if floor is None else f"{floor:.0f} ({row['flip_floor_pa_mpjpe_mm']:.0f})"
        lines.append(
            f"| {row['video_id']} | {row['people']} | {row['mpjpe_mm']:.1f} | "
            f"{row['pa_mpjpe_mm']:.1f} | {row['pck3d_150']:.1f} | {row['pck2d_0.05']:.1f} / "
            f"{row['pck2d_0.1']:.1f} | {row['left_right_swapped_pct']:.0f} | "
            f"{row['mean_pose_mpjpe_mm']:.1f} "
            f"({row['mean_pose_pa_mpjpe_mm']:.1f}) | {row['mpjpe_vs_mean_pose']:.2f} "
            f"({row['pa_mpjpe_vs_mean_pose']:.2f}) | {floor_text} |")
    joints = ", ".join(f"{k} {v:.0f}" for k, v in report["per_joint_mpjpe_mm"].items())
    ok = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in report["targets"].items())
    lines += ["", f"per-joint MPJPE (mm): {joints}",
              f"student {report['student_ms_per_frame']:.2f} ms/frame (batch 1, "
              f"{report['torch_threads']} threads) vs teacher {report['teacher_ms_per_frame']:.1f}"
              f" ms/frame: {report['teacher_ms_per_frame'] / report['student_ms_per_frame']:.0f}x",
              f"targets: {ok}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- learning curves


def read_curve(run_dir: Path) -> dict[str, list[float]]:
    """Validation rows of `<run>/csv/metrics.csv`: step, minutes and the val metrics.

    Returns:
        Lists keyed `step`, `minutes` (None-free only if the run logged `time/minutes`),
        `mpjpe`, `pa_mpjpe`, `mean_pose`; empty lists when the file has no validation row.

    Raises:
        FileNotFoundError: the run has no CSV log (logger=csv is the default).
    """
    path = run_dir / "csv" / "metrics.csv"
    keys = {"step": "step", "minutes": "time/minutes", "mpjpe": "val/mpjpe_mm",
            "pa_mpjpe": "val/pa_mpjpe_mm", "mean_pose": "val/mean_pose_mpjpe_mm"}
    curve: dict[str, list[float]] = {k: [] for k in keys}
    with path.open() as f:
        for row in csv.DictReader(f):
            if not row.get("val/mpjpe_mm"):
                continue
            for key, column in keys.items():
                value = row.get(column)
                curve[key].append(float(value) if value not in (None, "") else math.nan)
    return curve


def plot_curves(runs: dict[str, Path], out: Path, floor_mm: float | None = None) -> Path:
    """Val MPJPE and PA-MPJPE vs step and vs minutes for each run, in one PNG.

    Args:
        runs: label -> run folder.
        out: the PNG to write.
        floor_mm: the teacher's flip floor (MPJPE), drawn as a dotted line when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mean_pose = None
    for (label, run_dir), colour in zip(runs.items(), colours):
        curve = read_curve(run_dir)
        if not curve["step"]:
            continue
        mean_pose = curve["mean_pose"][-1]
        for ax, x in zip(axes, ("step", "minutes")):
            ax.plot(curve[x], curve["mpjpe"], "-o", ms=3, color=colour, label=f"{label} MPJPE")
            ax.plot(curve[x], curve["pa_mpjpe"], "--", color=colour, label=f"{label} PA-MPJPE")
    for ax, xlabel in zip(axes, ("optimizer step", "minutes of training (wall clock)")):
        if mean_pose is not None:
            ax.axhline(mean_pose, color="grey", lw=1.5, label="mean pose MPJPE")
            ax.axhline(TARGET_RATIO * mean_pose, color="grey", ls=":", lw=1.5,
                       label=f"{TARGET_RATIO}x mean pose (target)")
        if floor_mm is not None:
            ax.axhline(floor_mm, color="black", ls="-.", lw=1, label="teacher flip floor")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out error vs teacher (mm)")
    axes[1].legend(fontsize=8, loc="center right")
    fig.suptitle("student vs teacher on held-out real clips")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- command line


def train_run(overrides: list[str]) -> Path:
    """Run `python -m train.train experiment=real_cpu <overrides>` in a fresh run folder.

    Returns:
        The run folder.

    Raises:
        SystemExit: training failed (its exit code).
    """
    run_dir = REPO_ROOT / "runs" / f"learning_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    has_experiment = any(o.split("=")[0].lstrip("+~") == "experiment" for o in overrides)
    cmd = [sys.executable, "-m", "train.train", *([] if has_experiment else
                                                   ["experiment=real_cpu"]),
           *overrides, f"hydra.run.dir={run_dir}"]
    logger.info("training: %s", " ".join(cmd[1:]))
    code = subprocess.call(cmd, cwd=REPO_ROOT)
    if code != 0:
        sys.exit(code)
    return run_dir


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.learning",
        description="Evaluate a student on whole held-out real clips against the mean-pose "
                    "baseline and the teacher's flip floor; plot its learning curves.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="a run's checkpoints/<name>.ckpt")
    what.add_argument("--train", nargs="*", metavar="OVERRIDE",
                      help="train experiment=real_cpu (plus Hydra overrides) first, then "
                           "evaluate its last.ckpt")
    what.add_argument("--curves", nargs="+", type=Path, metavar="RUN",
                      help="only plot the learning curves of these run folders")
    parser.add_argument("--clips", nargs="+", metavar="ID",
                        help="held-out clip ids (default: the run's source.val_videos)")
    parser.add_argument("--out", type=Path,
                        help="output folder (or .png with --curves); default: the run folder")
    parser.add_argument("--floor", type=float, help="flip floor (mm) to draw with --curves")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
    if args.curves:
        out = args.out or args.curves[0] / CURVES_PNG
        print(f"wrote {plot_curves({r.name: r for r in args.curves}, out, args.floor)}")
        return 0
    checkpoint = args.checkpoint
    if args.train is not None:
        checkpoint = train_run(args.train) / "checkpoints" / "last.ckpt"
    loaded = load_student(checkpoint)
    run_dir = Path(loaded.run_config.paths.output_dir)
    report = evaluate_run(loaded, held_out_ids(loaded.run_config, args.clips))
    out = args.out or run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    try:
        png = plot_curves({run_dir.name: run_dir}, out / CURVES_PNG,
                          report["all"]["flip_floor_mpjpe_mm"])
        print(f"wrote {png}")
    except FileNotFoundError:
        logger.info("no csv/metrics.csv in %s: no learning curves", run_dir)
    print(json.dumps(report) if args.json else format_report(report))
    print(f"wrote {out / REPORT_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
