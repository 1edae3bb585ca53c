"""Benchmark 1: decoding a video from bytes in memory (ours) vs OpenCV decoding it from disk.

    python -m bench.decode [--video ../shared/videos/running_athlete.mp4] [--max-side 640]
                           [--repeats 3] [--warmup 1] [--json]

Both sides turn every frame of the same file into `[H, W, 3]` uint8 RGB, once at full size and
once with the longer side scaled down to `--max-side` pixels (both take the output size from
`video_sources.decode.target_size`, so the shapes are identical; the script checks it):

- ours: `video_sources.decode.decode_video_bytes(data, max_side=...)` on the file's bytes,
  already in memory. PyAV with its default (slice) threading; the downscale is libswscale's
  area filter in YUV, before OpenCV's I420 -> RGB conversion.
- baseline, what a user would write: `cv2.VideoCapture(path, cv2.CAP_FFMPEG)` reading the file
  from disk (the page cache, after the warm-up round), then `cv2.resize(..., INTER_AREA)` and
  `cv2.cvtColor(..., COLOR_BGR2RGB)` (OpenCV decodes to BGR; the teacher wants RGB).

Reported: frames/s of each side (median over repeats) and the ratio ours/OpenCV. Target
(docs/architecture.md, Targets; on 2 CPU cores): >= 1.0 at max_side=640.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from bench.common import (
    Report,
    Row,
    Timing,
    cores_note,
    emit,
    make_parser,
    parse_args,
    time_interleaved,
)
from video_sources.decode import decode_video_bytes, target_size

OURS = "decode_video_bytes (memory)"
OPENCV = "OpenCV VideoCapture (disk)"
TARGET = (">=", 1.0)  # ours/OpenCV frames/s at the training max_side (docs/architecture.md)


def opencv_frames(path: Path, max_side: int | None) -> Iterator[np.ndarray]:
    """Frames of the file at `path` as OpenCV users decode them: `[H, W, 3]` uint8 RGB.

    Decoded to BGR by `cv2.VideoCapture` (FFmpeg backend), downscaled by `cv2.resize` with
    INTER_AREA to `target_size(W, H, max_side)` when that differs, then converted to RGB.

    Raises:
        RuntimeError: if OpenCV cannot open the file.
    """
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise RuntimeError(f"OpenCV cannot open {path}")
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            size = target_size(bgr.shape[1], bgr.shape[0], max_side)
            if size != (bgr.shape[1], bgr.shape[0]):
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def count_ours(data: bytes, max_side: int | None) -> int:
    """Decode every frame of `data` with our decoder; returns the frame count."""
    return sum(1 for _ in decode_video_bytes(data, max_side=max_side))


def count_opencv(path: Path, max_side: int | None) -> int:
    """Decode every frame of `path` with OpenCV (see `opencv_frames`); returns the frame count."""
    return sum(1 for _ in opencv_frames(path, max_side))


def first_frame_difference(data: bytes, path: Path, max_side: int | None) -> float:
    """Mean absolute difference, in grey levels, between both sides' first frames.

    Small (a few levels: different resize filters and rounding) when both sides decode the same
    picture the same way up; large when one is rotated, mirrored or colour-swapped.

    Raises:
        RuntimeError: if the two first frames differ in shape.
    """
    with closing(decode_video_bytes(data, max_side=max_side)) as ours:
        a = next(ours)[2]
    with closing(opencv_frames(path, max_side)) as theirs:
        b = next(theirs)
    if a.shape != b.shape:
        raise RuntimeError(f"not the same frames: ours {a.shape}, OpenCV {b.shape}")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def run(video: Path, max_side: int, repeats: int = 3, warmup: int = 1) -> Report:
    """Time both decoders at full size and at `max_side`, interleaved; see the module docstring.

    Raises:
        RuntimeError: if the two sides do not decode the same number or shape of frames.
    """
    t0 = time.perf_counter()
    data = video.read_bytes()
    read_ms = 1e3 * (time.perf_counter() - t0)
    cases = {"full size": None, f"max_side={max_side}": max_side}
    diffs = {case: first_frame_difference(data, video, side) for case, side in cases.items()}
    sides = {}
    for case, side in cases.items():
        sides[f"{OURS}, {case}"] = lambda side=side: count_ours(data, side)
        sides[f"{OPENCV}, {case}"] = lambda side=side: count_opencv(video, side)
    timings = time_interleaved(sides, repeats, warmup)
    rows = [_row(case, side, timings) for case, side in cases.items()]
    frames = timings[f"{OURS}, full size"].items
    return Report(
        benchmark="decode",
        title="decoding from bytes in memory vs OpenCV from disk",
        settings=_settings(video, data, frames, max_side, repeats, warmup),
        rows=rows,
        notes=_notes(read_ms, len(data), diffs) + [cores_note(timings)],
    )


def _row(case: str, max_side: int | None, timings: dict[str, Timing]) -> Row:
    """frames/s of both sides in one case; the target applies to the downscaled case."""
    ours, theirs = timings[f"{OURS}, {case}"], timings[f"{OPENCV}, {case}"]
    if ours.items != theirs.items:
        raise RuntimeError(f"{case}: ours decoded {ours.items} frames, OpenCV {theirs.items}")
    return Row(case, OURS, ours.items_per_s, OPENCV, theirs.items_per_s, "frames/s",
               target=TARGET if max_side is not None else None)


def _settings(video: Path, data: bytes, frames: int, max_side: int, repeats: int,
              warmup: int) -> dict:
    with closing(decode_video_bytes(data)) as frames_iter:
        h, w = next(frames_iter)[2].shape[:2]
    return {"video": video.name, "size": f"{w}x{h}", "frames": frames, "max_side": max_side,
            "repeats": repeats, "warmup": warmup}


def _notes(read_ms: float, n_bytes: int, diffs: dict[str, float]) -> list[str]:
    agreement = ", ".join(f"{case} {d:.1f}" for case, d in diffs.items())
    return [
        f"ours decodes bytes already in memory: reading the {n_bytes / 1e6:.1f} MB file took "
        f"{read_ms:.2f} ms once and is not timed; PyAV default threading; the downscale is "
        "libswscale's area filter in YUV, before OpenCV's I420->RGB conversion",
        "OpenCV reads the file from disk (page cache) with CAP_FFMPEG, then cv2.resize "
        "INTER_AREA after decoding, then BGR->RGB",
        f"same frames on both sides: equal counts and shapes; first frame mean |difference| "
        f"(grey levels): {agreement}",
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__)
    parser.add_argument("--max-side", type=int, default=640,
                        help="longer side of the downscaled case, pixels (default: %(default)s)")
    args = parse_args(parser, argv)
    emit(run(args.video, args.max_side, args.repeats, args.warmup), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
