"""stream-pose labelling tool: stream video through a teacher into the in-memory ring buffer.

    python pipeline.py --dry-run --video clip.mp4 [more.mp4 dir/ https://...] [--json]
    python pipeline.py --fetch --queries "sports athlete" --n 5 --loop     (Pexels: coming next)

A dry run labels local videos (files, directories, http(s) URLs) with the same source, teacher,
crop and buffer code that training uses, and prints what the teacher found. Nothing is written to
disk. Training itself runs from `python -m train.train` (Hydra).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from data.producer import LabelStats, ProducerStats, label_stream
from data.ring_buffer import RingBuffer
from labeler import TEACHERS, TeacherUnavailableError, teacher_class
from stream_pose.types import Frame
from video_sources.local import LocalSource

logger = logging.getLogger("stream_pose.pipeline")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `pipeline.py` (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="pipeline.py",
        description="Label video in memory with a teacher model and fill the ring buffer.",
        epilog="Examples:\n"
        "  python pipeline.py --dry-run --video ../shared/videos/running_athlete.mp4\n"
        "  python pipeline.py --dry-run --video ../shared/videos --max-frames 30 --json\n"
        "Training: python -m train.train [experiment=mediapipe_local]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="label local videos and report")
    mode.add_argument("--fetch", action="store_true", help="stream from Pexels (not yet built)")
    p.add_argument("--video", nargs="+", metavar="PATH", help="files, directories or URLs")
    p.add_argument("--labeler", default="mediapipe", choices=sorted(TEACHERS),
                   help="teacher model (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per video at most")
    p.add_argument("--frameskip", type=int, default=1, help="label every n-th frame")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale frames so the longer side is at most this (pixels)")
    p.add_argument("--crop-size", type=int, default=256, help="crop side S (pixels)")
    p.add_argument("--capacity", type=int, default=4096, help="ring buffer slots")
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object on the last line of stdout")
    p.add_argument("--loop", action="store_true", help="with --fetch: keep fetching (Pexels)")
    p.add_argument("--queries", nargs="+", help="with --fetch: Pexels search queries")
    p.add_argument("--n", type=int, default=5, help="with --fetch: videos per query")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class _ProgressSource:
    """Wraps a source in a tqdm bar over frames; forwards `stats` for the producer's report."""

    def __init__(self, source: LocalSource, enabled: bool):
        self.source, self.enabled = source, enabled

    @property
    def stats(self):
        return self.source.stats

    def __iter__(self) -> Iterator[Frame]:
        with tqdm(self.source, unit="frame", disable=not self.enabled, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for frame in bar:
                bar.set_postfix_str(frame.video.id, refresh=False)
                yield frame


def _video_report(stats: LabelStats) -> dict:
    """Counters of one video (or the total) as plain JSON-able numbers."""
    return {
        "frames": stats.frames,
        "frames_with_person": stats.frames_with_person,
        "persons": stats.persons,
        "mean_visible_joints": round(stats.mean_visible_joints, 2),
        "label_fps": round(stats.label_fps, 2),
        "teacher_fps": round(stats.teacher_fps, 2),
        "errors": stats.errors,
    }


def _sample_report(buffer: RingBuffer) -> dict | None:
    """Shapes of one buffered sample and its pelvis (3D, metres), or None if the buffer is empty."""
    if len(buffer) == 0:
        return None
    one = buffer.sample(1, rng=np.random.default_rng(0))
    fields = ("image", "kpts2d", "kpts3d", "visibility", "K_crop")
    return {
        "shapes": {k: list(one[k].shape[1:]) for k in fields},
        "dtypes": {k: str(one[k].dtype) for k in fields},
        "pelvis": [round(float(x), 6) for x in one["kpts3d"][0, 0]],
        "video_id": buffer.video_id(int(one["video_key"][0])),
    }


def build_report(stats: ProducerStats, buffer: RingBuffer, teacher_name: str) -> dict:
    """The dry-run report: per-video and total counters, buffer state and one sample."""
    src = stats.source_stats
    buf = buffer.stats()
    return {
        "teacher": teacher_name,
        "videos": {vid: _video_report(s) for vid, s in stats.per_video.items()},
        "total": _video_report(stats.total),
        "videos_skipped": [] if src is None else [list(x) for x in src.skipped],
        "buffer": {"capacity": buf.capacity, "size": buf.size, "fill": round(buf.fill, 4),
                   "pushed": buf.pushed, "overwritten": buf.overwritten},
        "sample": _sample_report(buffer),
    }


def print_report(report: dict) -> None:
    """Human-readable table of `build_report`'s output on stdout."""
    head = f"{'video':<28}{'frames':>8}{'w/ person':>11}{'persons':>9}{'vis joints':>12}{'fps':>8}"
    print(f"teacher: {report['teacher']}")
    print(head)
    rows = list(report["videos"].items()) + [("TOTAL", report["total"])]
    for vid, r in rows:
        print(f"{vid[:27]:<28}{r['frames']:>8}{r['frames_with_person']:>11}{r['persons']:>9}"
              f"{r['mean_visible_joints']:>12.1f}{r['label_fps']:>8.1f}")
    for uri, reason in report["videos_skipped"]:
        print(f"skipped: {uri}: {reason}")
    b = report["buffer"]
    print(f"buffer: {b['size']}/{b['capacity']} samples (fill {b['fill']:.1%}), "
          f"{b['overwritten']} overwritten")
    s = report["sample"]
    if s is not None:
        shapes = ", ".join(f"{k} {v}" for k, v in s["shapes"].items())
        print(f"one sample ({s['video_id']}): {shapes}; pelvis {s['pelvis']} m")


def dry_run(args: argparse.Namespace) -> dict:
    """Label `args.video` once with `args.labeler` into a fresh buffer; return the report.

    Raises:
        TeacherUnavailableError: the teacher cannot run here.
        FileNotFoundError, ValueError: no video found at the given paths.
    """
    source = LocalSource(args.video, split="all", frameskip=args.frameskip,
                         max_frames=args.max_frames, max_side=args.max_side, loop=False)
    buffer = RingBuffer(args.capacity, args.crop_size)
    teacher = teacher_class(args.labeler)()
    stats = ProducerStats()
    try:
        label_stream(_ProgressSource(source, enabled=sys.stderr.isatty()), teacher, buffer,
                     args.crop_size, stats=stats)
    except KeyboardInterrupt:
        logger.warning("interrupted: reporting the frames labelled so far")
    finally:
        teacher.close()
        source.close()
    return build_report(stats, buffer, teacher.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (console script `stream-pose-label`); returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.fetch:
        print("pipeline.py: --fetch/--loop (the Pexels source) is not built yet; use "
              "--dry-run --video PATH for local files and URLs.", file=sys.stderr)
        return 2
    if not args.video:
        build_parser().error("--dry-run needs --video PATH [PATH ...]")
    try:
        report = dry_run(args)
    except (TeacherUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"pipeline.py: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
