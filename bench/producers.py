"""Benchmark 4: labelled frames/s with 1 vs 2 producer processes.

    python -m bench.producers [--video ../shared/videos/running_athlete.mp4]
        [--teachers mediapipe oracle] [--window 15] [--settle 3] [--capacity 512]
        [--repeats 2] [--warmup 0] [--json]

Each configuration runs `data.workers.ProducerPool` with 1 or 2 worker processes, as training
runs it (spawned workers, each with its own teacher, decoding ahead, cropping and pushing into a
fresh shared-memory `RingBuffer`), without pacing (`reads_per_overwrite=None`: there is no
trainer). Start-up is excluded: once every worker has labelled a frame, the pool runs `--settle`
seconds more, then labelled frames are counted over a fixed `--window` seconds. Configurations
alternate (1, 2, 1, 2, ...) and each side's median over `--repeats` rounds is reported.

Teachers:
- mediapipe: conf/labeler/mediapipe.yaml on `--video` at the training max_side, looped. Every
  worker labels the same video (the source ignores its shard), so that 1 and 2 workers label
  the same frames: in training the shards are different videos, whose costs differ.
- oracle: the synthetic source and its ground truth (conf/source/synthetic.yaml's defaults),
  sharded by video as in training: rendering the people (Python, holding the GIL) is the work
  here, so each worker labels in one thread (`data.producer.GIL_BOUND_SOURCES`).

Frames are counted from the workers' reports (sent every `HEARTBEAT_S`); samples from the
buffer's own push counter, exact at any instant. Per worker, /proc gives its CPU time, so the
report shows how many cores the workers kept busy, and the threads that did the work (Linux).
Target (issue 5): 2 processes >= 1.6x the frames/s of one.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.utils import instantiate

from bench import procfs
from bench.common import (
    Report,
    Row,
    emit,
    int_or_none,
    load_conf,
    make_parser,
    parse_args,
    positive_int,
    training_crop_size,
    training_max_side,
)
from data.ring_buffer import RingBuffer
from data.workers import ProducerPool, ProducerSettings
from labeler.oracle import OracleTeacher
from video_sources.local import LocalSource
from video_sources.synthetic import SyntheticSource

HEARTBEAT_S = 0.25  # workers' report period: the frame count's resolution at each end
START_TIMEOUT_S = 180.0
TARGET = (">=", 1.6)  # frames/s of 2 processes / 1 process (issue 5)
WORKERS = (1, 2)


def same_video_source(video: str, max_side: int | None, *, split: str, shard: int = 0,
                      num_shards: int = 1) -> LocalSource:
    """`video` looped, whatever the shard: every worker labels the same frames (module
    docstring). Module-level so that spawned workers can unpickle it."""
    del split, shard, num_shards  # a benchmark of throughput, not of the split
    return LocalSource([video], split="all", loop=True, max_side=max_side)


def factories(teacher: str, video: Path, max_side: int | None
              ) -> tuple[Callable[..., Any], Callable[[], Any]]:
    """Picklable (source factory, teacher factory) for `teacher` ("mediapipe" or "oracle").

    Raises:
        ValueError: on another teacher name.
    """
    if teacher == "mediapipe":
        return (functools.partial(same_video_source, str(video), max_side),
                instantiate(load_conf("labeler", "mediapipe")))
    if teacher == "oracle":
        synthetic = load_conf("source", "synthetic")
        return (functools.partial(SyntheticSource, seed=0, loop=True,
                                  num_videos=int(synthetic.num_videos),
                                  frames_per_video=int(synthetic.frames_per_video),
                                  max_people=int(synthetic.max_people)),
                OracleTeacher)
    raise ValueError(f"teacher must be mediapipe or oracle, got {teacher!r}")


@dataclass
class Window:
    """What a pool did over one timed window.

    Attributes:
        workers: worker processes.
        seconds: the window's length, measured.
        frames: frames labelled (workers' reports).
        samples: samples pushed (buffer counter).
        cpu_s: CPU seconds of all workers together.
        threads: thread count of each worker.
        busy: cores each busy thread kept busy, per worker ("name/tid" -> cores).
    """

    workers: int
    seconds: float
    frames: int
    samples: int
    cpu_s: float
    threads: list[int] = field(default_factory=list)
    busy: list[dict[str, float]] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def cores_busy(self) -> float:
        return self.cpu_s / self.seconds

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1e3 * self.cpu_s / self.frames if self.frames else float("nan")


def measure(workers: int, source: Callable[..., Any], teacher: Callable[[], Any], *,
            capacity: int, settle_s: float, window_s: float) -> Window:
    """Run a pool of `workers` processes on a fresh buffer and count over one window.

    Raises:
        RuntimeError: if the pool fails, or a worker labels nothing within `START_TIMEOUT_S`.
    """
    settings = ProducerSettings(workers=workers, heartbeat_s=HEARTBEAT_S)
    with RingBuffer(capacity, training_crop_size(), shared=True) as buffer:
        pool = ProducerPool(source, teacher, buffer, settings=settings,
                            reads_per_overwrite=None)
        pool.start()
        try:
            _wait_until_all_label(pool)
            time.sleep(settle_s)
            start = _reading(pool, buffer)
            time.sleep(window_s)
            end = _reading(pool, buffer)
        finally:
            pool.stop()
    return _window(workers, start, end)


def _wait_until_all_label(pool: ProducerPool) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(s.total.frames > 0 for s in pool.worker_stats()):
        if pool.error is not None or time.monotonic() > deadline:
            raise RuntimeError(f"producers did not start: {pool.failure_reason() or 'timeout'}")
        time.sleep(0.05)


def _reading(pool: ProducerPool, buffer: RingBuffer) -> dict[str, Any]:
    """Counters and per-worker /proc figures, now."""
    pids = [p for p in pool.pids if p is not None]
    return {
        "time": time.perf_counter(), "frames": pool.stats.total.frames,
        "samples": buffer.stats().pushed, "pids": pids,
        "cpu": [procfs.process_cpu_s(p) or 0.0 for p in pids],
        "threads": [procfs.thread_cpu_s(p) for p in pids],
        "count": [procfs.status_kib(p).get("Threads", 0) for p in pids],
    }


def _window(workers: int, start: dict[str, Any], end: dict[str, Any]) -> Window:
    if start["pids"] != end["pids"]:
        raise RuntimeError("a producer restarted during the window: its count is not comparable")
    seconds = end["time"] - start["time"]
    return Window(
        workers=workers, seconds=seconds, frames=end["frames"] - start["frames"],
        samples=end["samples"] - start["samples"],
        cpu_s=sum(b - a for a, b in zip(start["cpu"], end["cpu"])), threads=end["count"],
        busy=[procfs.busy_threads(a, b, seconds) for a, b in zip(start["threads"],
                                                                   end["threads"])],
    )


def run(video: Path, *, teachers: list[str], max_side: int | None, capacity: int,
        settle_s: float, window_s: float, repeats: int = 2, warmup: int = 0) -> Report:
    """Alternate 1 and 2 workers for each teacher; report both and their ratio.

    Raises:
        TeacherUnavailableError: (from a worker, chained) if MediaPipe is not installed.
        RuntimeError: if a pool fails or does not start.
    """
    rows, notes = [], list(_NOTES)
    for teacher in teachers:
        source, make_teacher = factories(teacher, video, max_side)
        windows: dict[int, list[Window]] = {w: [] for w in WORKERS}
        for round_ in range(warmup + repeats):
            for workers in WORKERS:
                win = measure(workers, source, make_teacher, capacity=capacity,
                              settle_s=settle_s, window_s=window_s)
                if round_ >= warmup:
                    windows[workers].append(win)
        rows += _rows(teacher, windows)
        notes += _thread_notes(teacher, windows)
    settings = {
        "video": video.name, "teachers": teachers, "max_side": max_side,
        "crop_size": training_crop_size(), "capacity": capacity, "settle_s": settle_s,
        "window_s": window_s, "heartbeat_s": HEARTBEAT_S, "repeats": repeats, "warmup": warmup,
    }
    return Report("producers", "labelled frames/s: 1 vs 2 producer processes", settings, rows,
                  notes)


def _rows(teacher: str, windows: dict[int, list[Window]]) -> list[Row]:
    """2 workers against 1: frames/s (target), samples/s, cores busy, CPU ms per frame."""
    two, one = windows[2], windows[1]

    def row(case: str, metric: str, unit: str, target=None) -> Row:
        return Row(f"{teacher}: {case}", "2 processes", [getattr(w, metric) for w in two],
                   "1 process", [getattr(w, metric) for w in one], unit, target)

    return [
        row("labelled frames/s", "frames_per_s", "frames/s", TARGET),
        row("samples/s (buffer counter)", "samples_per_s", "samples/s"),
        row("cores busy (workers' CPU / wall)", "cores_busy", "cores"),
        row("CPU per frame", "cpu_ms_per_frame", "CPU ms/frame"),
    ]


def _thread_notes(teacher: str, windows: dict[int, list[Window]]) -> list[str]:
    """Threads per worker and the busy ones, from the last window of each configuration."""
    notes = []
    for workers, wins in windows.items():
        last = wins[-1]
        busy = "; ".join(", ".join(f"{k.split('/')[0]} {v}" for k, v in b.items())
                         for b in last.busy)
        notes.append(f"{teacher}, {workers} process(es): threads per worker {last.threads}; "
                     f"busy threads in cores (per worker, ';' between workers): {busy}; "
                     f"cores busy median {statistics.median(w.cores_busy for w in wins):.2f}")
    return notes


_NOTES = [
    "frames/s over a fixed window after start-up (spawn, imports, model loading) and a settle "
    "period; each configuration on its own fresh buffer; medians over rounds",
    "cores busy: CPU time of the worker processes (all their threads) / window; the parent "
    "(this script) only sleeps; other jobs on a shared machine are not counted",
    "busy threads: 'python' is a Python thread (the worker's main thread runs the teacher, "
    "crop and push; the decode-ahead thread, for video files, decodes), 'mediapipe' "
    "MediaPipe's graph executor",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__, repeats=2, warmup=0)
    parser.add_argument("--teachers", nargs="+", choices=("mediapipe", "oracle"),
                        default=["mediapipe", "oracle"], help="(default: %(default)s)")
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds counted per configuration (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after start-up before counting (default: %(default)s)")
    parser.add_argument("--capacity", type=positive_int, default=512,
                        help="ring buffer slots (default: %(default)s)")
    parser.add_argument("--max-side", type=int_or_none, default=training_max_side(),
                        help="decode at this longer side, pixels; 0: full size (default: "
                             "%(default)s)")
    args = parse_args(parser, argv)
    if args.window <= 0 or args.settle < 0:
        parser.error("--window must be > 0 and --settle >= 0 seconds")
    report = run(args.video, teachers=list(dict.fromkeys(args.teachers)),
                 max_side=args.max_side, capacity=args.capacity, settle_s=args.settle,
                 window_s=args.window, repeats=args.repeats, warmup=args.warmup)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
