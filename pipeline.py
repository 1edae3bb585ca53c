"""stream-pose labelling tool: stream video through a teacher into the in-memory ring buffer.

    python pipeline.py --dry-run --video clip.mp4 [more.mp4 dir/ https://...] [--json]
    python pipeline.py --fetch --queries "sports athlete" "yoga pose" --n 5 [--loop]

A dry run labels local videos (files, directories, http(s) URLs); a fetch streams Pexels videos
into memory (key from PEXELS_API_KEY or .env). Both use the same source, teacher, crop and buffer
code that training uses and print what the teacher found. No video, frame or crop is written to
disk; a fetch keeps only its manifest (metadata and credits) in `--run-dir`, so a restart does
not fetch a video twice. Training runs from `python -m train.train` (Hydra).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence

import numpy as np
from tqdm import tqdm

from data.producer import LabelStats, ProducerStats, label_stream
from data.ring_buffer import RingBuffer
from labeler import TEACHERS, TeacherUnavailableError, teacher_class
from labeler.comotion import DEVICES as COMOTION_DEVICES
from stream_pose.secrets import SecretInConfigError, redact_text, refuse_argv
from stream_pose.types import Frame
from video_sources.base import VideoSource
from video_sources.http import DEFAULT_TIME_LIMIT_S
from video_sources.local import LocalSource

logger = logging.getLogger("stream_pose.pipeline")

EXIT_USAGE = 2  # a command line refused (argparse's status)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose error messages never echo a secret value (`redact_text`)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact_text(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `pipeline.py` (see the module docstring)."""
    p = _Parser(
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
    mode.add_argument("--fetch", action="store_true",
                      help="stream Pexels videos (key: PEXELS_API_KEY in the environment or .env)")
    p.add_argument("--video", nargs="+", metavar="PATH", help="files, directories or URLs")
    p.add_argument("--labeler", default="mediapipe", choices=sorted(TEACHERS),
                   help="teacher model; auto = CoMotion if ready, else MediaPipe "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", choices=COMOTION_DEVICES,
                   help="CoMotion's device, with --labeler comotion or auto (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per video at most")
    p.add_argument("--frameskip", type=int, default=1, help="label every n-th frame")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale frames so the longer side is at most this (pixels)")
    p.add_argument("--download-time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   metavar="S", help="limit on each whole URL download, seconds; a slower one "
                                     "is skipped (default: %(default)s)")
    p.add_argument("--crop-size", type=int, default=256, help="crop side S (pixels)")
    p.add_argument("--capacity", type=int, default=4096, help="ring buffer slots")
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object on the last line of stdout")
    p.add_argument("--loop", action="store_true",
                   help="with --fetch: keep fetching page after page until Ctrl-C")
    p.add_argument("--queries", nargs="+", default=[],
                   help="with --fetch: Pexels search queries (none: popular videos)")
    p.add_argument("--n", type=int, default=5, help="with --fetch: new videos per query")
    p.add_argument("--run-dir", type=Path, default=Path("runs/pipeline"),
                   help="with --fetch: where the manifest of used videos lives "
                        "(metadata only; default: %(default)s)")
    p.add_argument("--api-base", default=None,
                   help="with --fetch: Pexels API root (default: PEXELS_API_URL or the real API)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class _ProgressSource:
    """Wraps a source to show progress: a tqdm bar on a terminal, else a plain line every 10 s.

    `status()` gives the live figures shown beside the bar. Forwards `stats` for the report.
    """

    PLAIN_EVERY_S = 10.0

    def __init__(self, source: VideoSource, status: Callable[[], dict]):
        self.source, self.status = source, status

    @property
    def stats(self):
        return self.source.stats

    def __iter__(self) -> Iterator[Frame]:
        tty = sys.stderr.isatty()
        last = time.monotonic()
        with tqdm(self.source, unit="frame", disable=not tty, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for frame in bar:
                if tty:
                    bar.set_postfix(self.status(), refresh=False)
                elif time.monotonic() - last >= self.PLAIN_EVERY_S:
                    last = time.monotonic()
                    figures = " ".join(f"{k}={v}" for k, v in self.status().items())
                    print(f"progress: {figures}", file=sys.stderr, flush=True)
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


def local_source(args: argparse.Namespace) -> LocalSource:
    """The dry run's source: `args.video` once, every video (no split).

    Raises:
        FileNotFoundError, ValueError: no video found at the given paths.
    """
    return LocalSource(args.video, split="all", frameskip=args.frameskip,
                       max_frames=args.max_frames, max_side=args.max_side, loop=False,
                       time_limit_s=args.download_time_limit)


def pexels_source(args: argparse.Namespace) -> VideoSource:
    """The fetch's source: Pexels search (or popular) with a manifest in `args.run_dir`.

    Raises:
        PexelsKeyError: no PEXELS_API_KEY in the environment or .env.
    """
    from video_sources.pexels import PexelsSource  # only a fetch needs the Pexels client

    source = PexelsSource(args.queries, n=args.n, loop=args.loop, split="all",
                          manifest_path=args.run_dir / "pexels_manifest.jsonl",
                          api_base=args.api_base, frameskip=args.frameskip,
                          max_frames=args.max_frames, max_side=args.max_side)
    args.run_dir.mkdir(parents=True, exist_ok=True)  # once the key is known to be there
    return source


def make_teacher(args: argparse.Namespace):
    """The teacher named by `--labeler`, with `--device` for CoMotion.

    Raises:
        TeacherUnavailableError: the teacher cannot run here.
    """
    if args.labeler == "comotion":
        return teacher_class("comotion")(device=args.device)
    if args.labeler == "auto":
        return teacher_class("auto")(comotion={"device": args.device})
    return teacher_class(args.labeler)()


def label(source: VideoSource, args: argparse.Namespace) -> dict:
    """Label `source` once with `args.labeler` into a fresh buffer; return the report.

    Ctrl-C ends the labelling and still reports what was done.

    Raises:
        TeacherUnavailableError: the teacher cannot run here.
    """
    buffer = RingBuffer(args.capacity, args.crop_size)
    stats = ProducerStats()
    quota = getattr(getattr(source, "client", None), "quota", None)

    def status() -> dict:
        src, total = source.stats, stats.total
        figures = {"videos": src.videos_ok, "skipped": src.videos_skipped,
                   "fps": f"{total.label_fps:.1f}", "fill": f"{buffer.stats().fill:.0%}"}
        if quota is not None and quota.remaining is not None:
            figures["quota"] = quota.remaining
        return figures

    try:
        teacher = make_teacher(args)
    except BaseException:
        source.close()
        raise
    try:
        label_stream(_ProgressSource(source, status), teacher, buffer, stats=stats)
    except KeyboardInterrupt:
        logger.warning("interrupted: reporting the frames labelled so far")
    finally:
        teacher.close()
        source.close()
    report = build_report(stats, buffer, teacher.name)
    if quota is not None:
        report["quota"] = asdict(quota)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (console script `stream-pose-label`); returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        refuse_argv(argv)  # before argparse, whose errors would echo it
    except SecretInConfigError as exc:
        print(f"pipeline.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.dry_run and not args.video:
        build_parser().error("--dry-run needs --video PATH [PATH ...]")
    try:
        report = label(pexels_source(args) if args.fetch else local_source(args), args)
    except (TeacherUnavailableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"pipeline.py: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        print(json.dumps(report))
    if report["total"]["frames"] == 0 and report["videos_skipped"]:
        print(f"pipeline.py: no video could be read: {len(report['videos_skipped'])} skipped "
              "(reasons above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
