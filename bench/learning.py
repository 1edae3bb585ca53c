"""Benchmark: how well the student learns 3D pose from real footage, on whole clips it never saw.

    python -m bench.learning --checkpoint runs/<run>/checkpoints/last.ckpt [--json]
    python -m bench.learning --train [hydra overrides ...]      # trains experiment=real_cpu first
    python -m bench.learning --curves runs/<a> runs/<b> --out docs/img/learning_curves.png

The held-out clips are the training run's validation videos (`source.val_videos`; for
`source=real` five diverse clips, see conf/source/real.yaml): the producers never stream them, so
every number here is on people, places and cameras the student never trained on. Each clip is
decoded in memory, every frame is labelled by the teacher on the frame *and* on its mirror image
(`labeler.flip_tta.FlipTTATeacher.label_pairs`), and the person crops are cut exactly as training
cuts them (`stream_pose.codec.crop_sample`, the teacher's box). Labelling, prediction and the
metrics are the evaluation core's (`serve.clips`, which `serve.evaluate` uses too); this module
picks the clips, adds the speed and the targets, and plots the learning curves. Reported per clip
and pooled:

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
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import REPO_ROOT
from serve.checkpoint import LoadedStudent, load_student
from serve.clips import clip_table, label_clip, measure_clips, teacher_pair
from train.module import image_to_float

logger = logging.getLogger("bench.learning")

TARGET_RATIO, TARGET_PA_RATIO = 0.6, 0.7  # issue 10: student / mean pose, pooled
CURVES_PNG, REPORT_JSON = "learning_curves.png", "learning.json"


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


def evaluate_run(loaded: LoadedStudent, ids: list[str]) -> dict[str, Any]:
    """Label the held-out clips, run the student, and build the report (see module docstring).

    The clips are labelled whole by `serve.clips.teacher_pair` (the student is compared with the
    plain teacher) and measured by `serve.clips.measure_clips`.

    Returns:
        checkpoint, step, teacher, `clips` (one `serve.clips.clip_metrics` row per clip), `all`
        (the pooled row), `per_joint_mpjpe_mm`, `student_ms_per_frame`, `teacher_ms_per_frame`,
        `torch_threads` and `targets` (name -> met).
    """
    run = loaded.run_config
    teacher = teacher_pair(run.labeler)
    clips = []
    try:
        for video_id in ids:
            source = clip_source(run, video_id)
            try:
                clips.append(label_clip(source, teacher, video_id, loaded.crop_size))
            finally:
                source.close()
            logger.info("%s: %d people in %d frames", video_id, len(clips[-1]),
                        clips[-1].frames)
    finally:
        teacher.close()
    measured = measure_clips(loaded.net, clips, loaded.mean_pose.mean())
    rows, total = measured.clips, measured.pooled
    return {
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "teacher": teacher.name,
        "clips": rows,
        "all": total,
        "per_joint_mpjpe_mm": measured.per_joint_mpjpe_mm(),
        "student_ms_per_frame": student_ms_per_frame(loaded.net, loaded.crop_size),
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
    lines = [f"checkpoint {report['checkpoint']} (step {report['step']}), teacher "
             f"{report['teacher']}; errors in mm vs the teacher, PCK and swaps in %", "",
             *clip_table([*report["clips"], report["all"]])]
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
