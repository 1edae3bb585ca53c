"""Benchmark 5: the students' frames/s vs the teacher's, on the same machine.

    python -m bench.student_vs_teacher [--video ../shared/videos/running_athlete.mp4]
        [--presets student_s student_effl0] [--batch-sizes 1 32] [--student-frames 320]
        [--max-frames N] [--max-side 640] [--torch-threads N] [--repeats 3] [--warmup 1] [--json]

- student: `train.student.PoseStudent` built from each conf/model/<preset>.yaml (the small
  student of the demo, and the pretrained EfficientNet-Lite0 student of the real-footage recipes,
  with the lifting head they train) at the training crop
  size S (conf/buffer/default.yaml), in eval mode under `torch.inference_mode()`, on uint8 crops
  `[B, 3, S, S]` made float in [0, 1] inside the timed region (as training does on its device);
  `--student-frames` frames per pass at each batch size B.
- exported student: the same network exported by `serve.export` to ONNX (uint8 input) and run by
  ONNX Runtime on the CPU with as many intra-op threads as torch: what a user deploys, and the
  counterpart of MediaPipe, which runs on its own optimised runtime (TFLite with XNNPACK).
- teacher: MediaPipe (conf/labeler/mediapipe.yaml) on whole frames decoded beforehand at the
  training max_side (conf/source/local.yaml), one video in order after a reset: video mode,
  tracking the person from frame to frame, as in training. MediaPipe has no batch mode, so its
  frames/s is the same for every student batch size.

Torch threads are set as training sets them (`stream_pose.runtime.set_torch_threads`: all usable cores
but one, which the producer needs) unless `--torch-threads` is given. Reported: frames/s of each
(median over repeats) and the ratio student/teacher, in wall time and again per CPU second of
the process ([CPU] rows, which other jobs on a shared machine barely change). Target
(docs/architecture.md): >= 10 at batch 1.
The student's time excludes finding the person (a crop needs a box, from the previous frame's
prediction or a detector), which MediaPipe's time includes.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from bench.common import (
    Report,
    Row,
    Timing,
    cores_note,
    emit,
    int_or_none,
    make_parser,
    mediapipe_teacher,
    parse_args,
    positive_int,
    preset_student,
    teacher_pass,
    time_interleaved,
    training_max_side,
)
from stream_pose.runtime import set_torch_threads
from train.student import PoseStudent
from video_sources.local import LocalSource

TEACHER = "MediaPipe teacher (whole frames)"
TARGET = (">=", 10.0)  # student/teacher frames/s at batch 1 (docs/architecture.md)
# The real-footage student (issue 18): ONNX Runtime at batch 1 >= 5x MediaPipe.
PRESET_TARGETS = {"student_effl0": (">=", 5.0)}
PRESETS = ("student_s", "student_effl0")
HEAD3D = {"student_s": None, "student_effl0": "lift"}  # as the recipes train them


def student_pass(net: PoseStudent, crops: torch.Tensor, passes: int) -> int:
    """`passes` forward passes on uint8 crops `[B, 3, S, S]`; returns frames = passes x B."""
    with torch.inference_mode():
        for _ in range(passes):
            net(crops.float().div_(255.0))
    return passes * crops.shape[0]


def run(video: Path, *, batch_sizes: list[int], student_frames: int, max_side: int | None,
        max_frames: int | None, repeats: int = 3, warmup: int = 1,
        presets: tuple[str, ...] = PRESETS) -> Report:
    """Time the student at each batch size and the teacher, interleaved (module docstring).

    Torch threads must already be set (`main` does it); they are recorded in the machine info.

    Raises:
        TeacherUnavailableError: if MediaPipe is not installed.
    """
    nets = {p: preset_student(p, head3d=HEAD3D.get(p)) for p in presets}
    s = next(iter(nets.values())).crop_size
    sides = {}
    for preset, net in nets.items():
        sides.update(_student_sides(preset, net, batch_sizes, student_frames))
    frames = list(LocalSource([video], split="all", max_side=max_side, max_frames=max_frames))
    teacher = mediapipe_teacher()
    try:
        sides[TEACHER] = lambda: teacher_pass(teacher, frames)
        timings = time_interleaved(sides, repeats, warmup)
    finally:
        teacher.close()
    rows = _rows(timings, presets, batch_sizes, s, "items_per_s", "frames/s", "")
    rows += _rows(timings, presets, batch_sizes, s, "items_per_cpu_s", "frames/CPU s", " [CPU]")
    settings = {
        "video": video.name, "frame_size": "x".join(map(str, frames[0].hw[::-1])),
        "teacher_frames": len(frames), "crop_size": s,
        "student_params_M": {p: round(sum(x.numel() for x in n.parameters()) / 1e6, 2)
                             for p, n in nets.items()},
        "student_frames": {b: timings[_student(presets[0], b)].items for b in batch_sizes},
        "onnxruntime_threads": torch.get_num_threads(),
        "torch_threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup,
    }
    return Report("student_vs_teacher", "student frames/s vs teacher frames/s", settings, rows,
                  _NOTES + [cores_note(timings)])


def _student_sides(preset: str, net: PoseStudent, batch_sizes: list[int], frames: int) -> dict:
    """Two timed sides per batch size B, torch and ONNX Runtime: ceil(frames / B) passes each
    on the same fixed random uint8 crops."""
    gen = torch.Generator().manual_seed(0)
    session = onnx_session(net)
    sides = {}
    for b in batch_sizes:
        s = net.crop_size
        crops = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=gen)
        passes = math.ceil(frames / b)
        sides[_student(preset, b)] = lambda crops=crops, passes=passes: student_pass(
            net, crops, passes)
        sides[_student(preset, b, ORT)] = lambda crops=crops.numpy(), passes=passes: onnx_pass(
            session, crops, passes)
    return sides


def onnx_session(net: PoseStudent):
    """An ONNX Runtime CPU session of `net` exported as `serve.export` does (uint8 input),
    using as many intra-op threads as torch. The file lives in a temporary directory only
    while the session is built."""
    import onnxruntime as ort

    from serve.export import ExportableStudent, export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.onnx"
        export_onnx(ExportableStudent(net, "uint8"), path, opset=18, metadata={})
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_pass(session, crops, passes: int) -> int:
    """`passes` ONNX Runtime runs on uint8 crops `[B, 3, S, S]` (numpy); returns frames."""
    name = session.get_inputs()[0].name
    for _ in range(passes):
        session.run(None, {name: crops})
    return passes * crops.shape[0]


ORT = "onnxruntime"


def _student(preset: str, batch_size: int, runtime: str = "torch") -> str:
    return f"{preset} batch {batch_size}" + ("" if runtime == "torch" else f" ({runtime})")


def _rows(timings: dict[str, Timing], presets: tuple[str, ...], batch_sizes: list[int],
          crop_size: int, metric: str, unit: str, suffix: str) -> list[Row]:
    """Each student at each batch size against the teacher, in one `Timing` throughput metric.
    The batch-1 target is 10x for the small student, and `PRESET_TARGETS` for the others."""
    teacher = getattr(timings[TEACHER], metric)
    return [Row(f"batch {b}{suffix}", f"{p} (S={crop_size}, {runtime})",
                getattr(timings[_student(p, b, runtime)], metric), TEACHER, teacher, unit,
                PRESET_TARGETS.get(p, TARGET) if b == 1 else None)
            for p in presets for b in batch_sizes for runtime in ("torch", ORT)]


_NOTES = [
    "student: the network only, on crops already cut; the teacher finds the person itself",
    "MediaPipe has no batch mode: the same teacher frames/s is the baseline of every batch size",
    "MediaPipe's own threads (TFLite XNNPACK) are not set by this script; torch threads are",
    "[CPU] rows: frames per CPU second of the whole process (all threads), which other jobs on "
    "a shared machine barely change; they equal the wall rows when a side keeps one core busy",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 32],
                        help="student batch sizes (default: %(default)s)")
    parser.add_argument("--student-frames", type=positive_int, default=320,
                        help="frames per student pass, rounded up to whole batches "
                             "(default: %(default)s)")
    parser.add_argument("--max-frames", type=int_or_none, default=None,
                        help="video frames the teacher labels per pass; 0: all (default: all)")
    parser.add_argument("--max-side", type=int_or_none, default=training_max_side(),
                        help="decode frames at this longer side, pixels; 0: full size "
                             "(default: %(default)s, as conf/source/local.yaml)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS),
                        help="student presets, conf/model/<name>.yaml (default: %(default)s)")
    parser.add_argument("--torch-threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: as training, cores - 1)")
    args = parse_args(parser, argv)
    set_torch_threads(args.torch_threads)
    batch_sizes = list(dict.fromkeys(args.batch_sizes))  # a repeated size would be timed once
    report = run(args.video, batch_sizes=batch_sizes, student_frames=args.student_frames,
                 max_side=args.max_side, max_frames=args.max_frames,
                 repeats=args.repeats, warmup=args.warmup, presets=tuple(args.presets))
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
