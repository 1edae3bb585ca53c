"""Benchmark 2: the producer's time per frame vs the teacher's own (MediaPipe, CPU).

    python -m bench.producer_overhead [--video ../shared/videos/running_athlete.mp4]
        [--max-frames N] [--max-side 640] [--capacity 256] [--storage raw|jpeg]
        [--repeats 3] [--warmup 1] [--json]

Four passes over the same frames, interleaved round by round, each timed in ms per frame:

- producer: `data.producer.label_stream` end to end, as training runs it: a `LocalSource`
  (file bytes into memory, `decode_video_bytes` at `--max-side`), the MediaPipe teacher of
  conf/labeler/mediapipe.yaml, `crop_sample` and `RingBuffer.push` (crop side and storage,
  raw or JPEG, from conf/buffer/default.yaml; `--capacity` slots, filled during the warm-up
  round);
- teacher: `teacher.label` alone, on the same frames decoded beforehand and held in memory;
- decode: the same `LocalSource` iterated alone (read, decode, `Frame`);
- decode+teacher: the source and the teacher in a plain loop, no crop and no push.

Overhead per frame = producer - decode - teacher: the time that is neither the teacher nor
decoding. Target (DESIGN.md): overhead / teacher < 0.10. It splits into
- interleaving = (decode+teacher) - decode - teacher: how much decoding and the teacher slow
  each other down when they alternate frame by frame, with no producer code involved;
- producer code = producer - (decode+teacher): the loop, crop and push. Crop + push is also
  timed inside `label_stream` (`LabelStats.crop_s`), a direct, less noisy measure.
Differences are taken within each round (its four passes run back to back); the table gives
their median over rounds. Every row is given in wall time and again in CPU time of the process
([CPU] rows), which other jobs on a shared machine barely change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench.common import (
    Report,
    Row,
    Timing,
    cores_note,
    emit,
    int_or_none,
    load_conf,
    make_parser,
    mediapipe_teacher,
    parse_args,
    positive_int,
    teacher_pass,
    time_interleaved,
    training_max_side,
)
from data.producer import LabelStats, label_stream
from data.ring_buffer import RingBuffer
from labeler.base import Teacher
from stream_pose.types import Frame
from video_sources.local import LocalSource

PRODUCER, TEACHER, DECODE, LOOP = "producer", "teacher", "decode", "decode+teacher"
TEACHER_NAME = "teacher alone (pre-decoded frames)"
TARGET = ("<", 0.10)  # overhead / teacher time per frame (DESIGN.md)


def training_buffer(capacity: int, storage: str) -> RingBuffer:
    """A `RingBuffer` of `capacity` slots with the training crop size and JPEG settings
    (conf/buffer/default.yaml), storing crops as `storage` ("raw" or "jpeg").

    The capacity is smaller than training's, so that the warm-up round fills the ring and the
    timed rounds overwrite slots, as a full buffer does.

    Raises:
        ValueError: on a non-positive capacity or bad storage settings.
    """
    cfg = load_conf("buffer", "default")
    return RingBuffer(capacity, int(cfg.crop_size), storage=storage,
                      jpeg_quality=int(cfg.get("jpeg_quality", 90)),
                      jpeg_slot_bytes=cfg.get("jpeg_slot_bytes"))


def loop_pass(source: LocalSource, teacher: Teacher) -> int:
    """Decode and label in a plain loop, without cropping or pushing; frame count."""
    teacher.reset()
    n = 0
    for frame in source:
        teacher.label(frame)
        n += 1
    return n


def run(video: Path, *, max_side: int | None, max_frames: int | None, capacity: int = 256,
        storage: str = "raw", repeats: int = 3, warmup: int = 1) -> Report:
    """Time the four passes (module docstring) and report them against the teacher's time.

    Raises:
        TeacherUnavailableError: if MediaPipe is not installed.
        RuntimeError: if the passes do not see the same number of frames.
    """
    def source() -> LocalSource:
        return LocalSource([video], split="all", max_side=max_side, max_frames=max_frames)

    frames = list(source())
    with training_buffer(capacity, storage) as buffer:
        teacher = mediapipe_teacher()
        try:
            timings, passes = _time_passes(source, frames, teacher, buffer, repeats, warmup)
        finally:
            teacher.close()
    counts = {name: t.items for name, t in timings.items()}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the passes saw different numbers of frames: {counts}")
    timed = passes[warmup:]  # label_stream's own counters of the timed producer passes
    settings = {
        "video": video.name, "frame_size": "x".join(map(str, frames[0].hw[::-1])),
        "frames": len(frames), "max_side": max_side, "crop_size": buffer.crop_size,
        "capacity": capacity, "storage": storage, "samples_per_pass": timed[-1].samples_pushed,
        "teacher": "mediapipe (conf/labeler/mediapipe.yaml)", "repeats": repeats, "warmup": warmup,
    }
    return Report("producer_overhead", "producer time per frame vs the teacher alone", settings,
                  _rows(timings, timed), _NOTES + [cores_note(timings)])


def _time_passes(source: Callable[[], LocalSource], frames: list[Frame], teacher: Teacher,
                 buffer: RingBuffer, repeats: int, warmup: int
                 ) -> tuple[dict[str, Timing], list[LabelStats]]:
    """Run the four passes round-robin; their timings, and label_stream's counters of every
    producer pass (warm-up first)."""
    passes: list[LabelStats] = []

    def producer_pass() -> int:
        passes.append(label_stream(source(), teacher, buffer, buffer.crop_size).total)
        return passes[-1].frames

    timings = time_interleaved({
        PRODUCER: producer_pass,
        TEACHER: lambda: teacher_pass(teacher, frames),
        DECODE: lambda: sum(1 for _ in source()),
        LOOP: lambda: loop_pass(source(), teacher),
    }, repeats, warmup)
    return timings, passes


def _rows(timings: dict[str, Timing], passes: list[LabelStats]) -> list[Row]:
    """The comparisons in wall time, crop + push timed inside, then the same in CPU time."""
    teacher = timings[TEACHER].ms_per_item
    crop_push = [1e3 * s.crop_s / s.frames for s in passes]
    return (
        _time_rows(timings, "ms_per_item", "ms/frame", "")
        + [Row("crop + push (timed inside)", "LabelStats.crop_s / frames", crop_push,
               TEACHER_NAME, teacher, "ms/frame")]
        + _time_rows(timings, "cpu_ms_per_item", "CPU ms/frame", " [CPU]")
    )


def _time_rows(timings: dict[str, Timing], metric: str, unit: str, suffix: str) -> list[Row]:
    """Each pass and each difference against the teacher alone, per frame, in one `Timing`
    metric (wall or CPU time); differences are taken round by round."""
    prod, teach, dec, loop = (
        getattr(timings[name], metric) for name in (PRODUCER, TEACHER, DECODE, LOOP)
    )
    overhead = [p - d - t for p, d, t in zip(prod, dec, teach)]
    interleaving = [lp - d - t for lp, d, t in zip(loop, dec, teach)]
    code = [p - lp for p, lp in zip(prod, loop)]

    def row(case: str, name: str, values: list[float], target=None) -> Row:
        return Row(case + suffix, name, values, TEACHER_NAME, teach, unit, target)

    return [
        row("producer vs teacher", "label_stream (decode, teacher, crop, push)", prod),
        row("decoding vs teacher", "LocalSource alone (read, decode)", dec),
        row("overhead vs teacher", "producer - decode - teacher", overhead, TARGET),
        row("  of which interleaving", "(decode+teacher loop) - decode - teacher", interleaving),
        row("  of which producer code", "producer - (decode+teacher loop)", code),
    ]


_NOTES = [
    "overhead = producer - decode - teacher, per frame, from passes timed back to back in the "
    "same round; medians over rounds (a difference of noisy times can come out negative)",
    "[CPU] rows: the same in CPU time of the whole process (all threads), which other jobs on "
    "a shared machine barely change; on a quiet machine wall and CPU rows agree when every "
    "side keeps one core busy (see cores busy below)",
    "interleaving: how much slower decoding and MediaPipe run when they alternate frame by "
    "frame, as in any producer, than each alone; no producer code is involved",
    "the teacher alone sees frames decoded beforehand at the same max_side; it is reset before "
    "each pass, as label_stream resets it at each new video",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__)
    parser.add_argument("--max-frames", type=int_or_none, default=None,
                        help="frames of the video to use; 0: all (default: all)")
    parser.add_argument("--max-side", type=int_or_none, default=training_max_side(),
                        help="decode at this longer side, pixels; 0: full size (default: "
                             "%(default)s, as conf/source/local.yaml)")
    parser.add_argument("--capacity", type=positive_int, default=256,
                        help="ring buffer slots (default: %(default)s)")
    parser.add_argument("--storage", choices=("raw", "jpeg"),
                        default=load_conf("buffer", "default").get("storage", "raw"),
                        help="crop storage in the buffer (default: %(default)s, as "
                             "conf/buffer/default.yaml)")
    args = parse_args(parser, argv)
    report = run(args.video, max_side=args.max_side, max_frames=args.max_frames,
                 capacity=args.capacity, storage=args.storage, repeats=args.repeats,
                 warmup=args.warmup)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
