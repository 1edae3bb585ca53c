"""Run a trained student on a video: 2D and 3D joints per person and frame, as JSON lines.

    python -m serve.predict --checkpoint runs/<run>/checkpoints/last.ckpt \\
        --video ../shared/videos/running_athlete.mp4 --out preds.jsonl --overlay overlay.mp4
    stream-pose predict --checkpoint ... --video ...

The video is decoded in memory (`video_sources.decode`). The teacher boxes people on the first
frame and when tracking is lost; otherwise the student's own previous keypoints give each next
crop (`serve.tracker.TopDownTracker` documents the rule). These outputs are what the user asked
for, so they are the only files written: the JSON lines (`--out`, default stdout) and, with
`--overlay`, an MP4 of the frames with the skeletons drawn.

One JSON object per frame:
    {"frame": 0, "time_s": 0.0, "student_ms": 4.1, "teacher_ms": 31.0 (null: not run),
     "people": [{"person": 0, "box_from": "teacher" | "student", "crop_xyxy": [x0, y0, x1, y1],
                 "tracked": [joint names that steer the box],
                 "kpts2d": {"pelvis": [x, y], ...},       # 27 joints, frame pixels
                 "kpts3d": {"pelvis": [0, 0, 0], ...}}]}  # 27 joints, metres, pelvis-relative
Pixels: x right, y down, pixel centres at integers, in the decoded frame (see `--max-side`).
3D: camera axes, X right, Y down, Z forward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np

from labeler import TEACHERS, TeacherUnavailableError, teacher_class
from serve.checkpoint import CheckpointError, load_student
from serve.fields import round_or_none, rounded_list
from serve.models import ModelLoadError, OnnxCropModel, TorchCropModel
from serve.overlay import VideoWriter
from serve.tracker import FramePoses, PersonPose, TopDownTracker
from stream_pose.draw import draw_pose
from stream_pose.runtime import set_torch_threads
from stream_pose.skeleton import JOINT_NAMES
from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError
from video_sources.frames import frames_from_bytes

logger = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    """What a prediction run did.

    Attributes:
        frames: frames processed.
        people: person predictions written (summed over frames).
        teacher_frames: frames the teacher ran on.
        student_ms: mean milliseconds per frame of the student's part (crop, forward, unmap).
    """

    frames: int = 0
    people: int = 0
    teacher_frames: int = 0
    student_ms: float = 0.0

    def line(self) -> str:
        fps = 1000.0 / self.student_ms if self.student_ms > 0 else math.inf
        return (f"{self.frames} frames, {self.people} person poses; student {self.student_ms:.1f} "
                f"ms/frame ({fps:.0f} frames/s); teacher ran on {self.teacher_frames} frames")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m serve.predict` and `stream-pose predict`."""
    p = argparse.ArgumentParser(
        prog="stream-pose predict",
        description="Run a trained student on a video: JSON lines of 27 named joints per person "
        "and frame (2D frame pixels, 3D metres pelvis-relative), optionally an overlay video.",
        epilog="Example:\n  python -m serve.predict --checkpoint runs/<run>/checkpoints/last.ckpt"
        " \\\n      --video ../shared/videos/running_athlete.mp4 --out preds.jsonl "
        "--overlay overlay.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a .ckpt from train.train, or an exported .onnx (serve.export)")
    p.add_argument("--video", required=True, type=Path, help="video file (mp4, mov, mkv, ...)")
    p.add_argument("--out", default="-",
                   help="JSON lines output file; '-' writes to stdout (default)")
    p.add_argument("--overlay", type=Path, default=None,
                   help="also write this MP4 with the skeletons drawn")
    p.add_argument("--teacher", default="mediapipe", choices=sorted(TEACHERS),
                   help="model that boxes people when tracking starts or is lost "
                   "(default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale frames so the longer side is at most this (pixels); "
                   "2D output is in the downscaled frame")
    p.add_argument("--redetect-every", type=int, default=30,
                   help="run the teacher at least every N frames (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device of the student (default: cpu)")
    # Measured on a shared 2-core CPU beside MediaPipe (64 px student, 20 frames): 1 thread
    # 2.0 ms/frame, 2 threads 308 ms/frame (OpenMP workers fighting the teacher's threads).
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the student (default: %(default)s; the student is "
                   "small and more threads contend with the teacher's)")
    p.add_argument("--run-config", type=Path, default=None,
                   help="the run's .hydra/config.yaml if it is not beside the checkpoint")
    return p


def predict_video(
    checkpoint: Path,
    video: Path,
    out: IO[str],
    *,
    overlay: Path | None = None,
    teacher: str = "mediapipe",
    max_frames: int | None = None,
    max_side: int | None = None,
    redetect_every: int = 30,
    device: str = "cpu",
    run_config: Path | None = None,
) -> PredictSummary:
    """Predict every frame of `video`, writing one JSON line per frame to `out`.

    Raises:
        FileNotFoundError: a missing checkpoint or video.
        serve.checkpoint.CheckpointError: a checkpoint that cannot be loaded.
        VideoDecodeError: a video without a single decodable frame.
        labeler.TeacherUnavailableError: the teacher cannot run here or on this video.
        ValueError: invalid options.
    """
    if not video.is_file():  # before loading models: fail fast on a typo
        raise FileNotFoundError(f"video not found: {video}")
    if Path(checkpoint).suffix == ".onnx":
        model = OnnxCropModel(checkpoint)
    else:
        student = load_student(checkpoint, run_config)
        model = TorchCropModel(student.net, device, defined=student.supervised)
    tracker = TopDownTracker(model, teacher_class(teacher)(),
                             redetect_every=redetect_every, device=device)
    summary, total_ms = PredictSummary(), 0.0
    with contextlib.ExitStack() as stack:
        stack.callback(tracker.teacher.close)
        writer = stack.enter_context(VideoWriter(overlay)) if overlay is not None else None
        for frame in read_frames(video, max_frames=max_frames, max_side=max_side):
            poses = tracker.step(frame)
            out.write(json.dumps(frame_record(frame, poses)) + "\n")
            if writer is not None:
                writer.write(draw_people(frame, poses.people), frame.time_s)
            summary.frames += 1
            summary.people += len(poses.people)
            total_ms += poses.student_ms
    summary.teacher_frames = tracker.teacher_frames
    summary.student_ms = total_ms / max(summary.frames, 1)
    return summary


def read_frames(video: Path, *, max_frames: int | None = None,
                max_side: int | None = None) -> Iterator[Frame]:
    """Frames of a video file, decoded in memory (`[H, W, 3]` uint8 RGB).

    Raises:
        FileNotFoundError: no such file.
        VideoDecodeError: not a single frame could be decoded.
    """
    if not video.is_file():
        raise FileNotFoundError(f"video not found: {video}")
    ref = VideoRef(id=video.stem, kind="local", uri=str(video))
    yield from frames_from_bytes(video.read_bytes(), ref, SourceStats(), max_frames=max_frames,
                                 max_side=max_side)


def frame_record(frame: Frame, poses: FramePoses) -> dict[str, Any]:
    """The JSON object of one frame (see the module docstring)."""
    return {
        "frame": frame.index,
        "time_s": round_or_none(frame.time_s, 4),
        "student_ms": round(poses.student_ms, 2),
        "teacher_ms": None if poses.teacher_ms is None else round(poses.teacher_ms, 2),
        "people": [person_record(p) for p in poses.people],
    }


def person_record(person: PersonPose) -> dict[str, Any]:
    """One person: id, crop, tracked joints, named 2D (0.01 px) and 3D (0.1 mm) joints."""
    return {
        "person": person.person,
        "box_from": person.box_from,
        "crop_xyxy": [round(float(v), 2) for v in person.crop_xyxy],
        "tracked": [n for n, t in zip(JOINT_NAMES, person.tracked) if t],
        "kpts2d": dict(zip(JOINT_NAMES, rounded_list(person.kpts2d, 2))),
        "kpts3d": dict(zip(JOINT_NAMES, rounded_list(person.kpts3d, 4))),
    }


def draw_people(frame: Frame, people: list[PersonPose]) -> np.ndarray:
    """A copy of the frame (`[H, W, 3]` uint8 RGB) with each person's tracked joints and crop."""
    image = frame.image.copy()
    for person in people:
        draw_pose(image, person.kpts2d, person.tracked, person.crop_xyxy)
    return image



def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (errors are one line on stderr)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_torch_threads(args.threads)
    try:
        with contextlib.ExitStack() as stack:
            out = sys.stdout if args.out == "-" else stack.enter_context(open(args.out, "w"))
            summary = predict_video(
                args.checkpoint, args.video, out, overlay=args.overlay, teacher=args.teacher,
                max_frames=args.max_frames, max_side=args.max_side,
                redetect_every=args.redetect_every, device=args.device,
                run_config=args.run_config,
            )
    except (FileNotFoundError, CheckpointError, ModelLoadError, VideoDecodeError,
            TeacherUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("%s", summary.line())
    for path in (args.out if args.out != "-" else None, args.overlay):
        if path is not None:
            logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
