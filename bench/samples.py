"""Real labelled crops for the buffer benchmarks (3 and 6): label a video once, then fill any
number of buffers with copies of its samples.

Legend: N samples, J = 27 joints, S crop side in pixels. Rows are `RingBuffer.snapshot()`
fields: `image` uint8 `[N, 3, S, S]`, `kpts2d` float32 `[N, J, 2]` crop pixels, `kpts3d`
float32 `[N, J, 3]` metres pelvis-relative, `visibility` `[N, J]`, `K_crop` `[N, 3, 3]`, ids.
Real crops matter for JPEG storage: their size (and decode time) depends on the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import mediapipe_teacher
from data.producer import label_stream
from data.ring_buffer import RingBuffer
from stream_pose.types import Sample
from video_sources.local import LocalSource

MAX_STAGED = 4096  # samples kept from the video: more than any test video gives


def labelled_rows(video: Path, crop_size: int, max_side: int | None,
                  max_frames: int | None = None) -> dict[str, np.ndarray]:
    """Label `video` with the MediaPipe teacher (conf/labeler/mediapipe.yaml) and return its
    samples as snapshot rows (module docstring), in frame order.

    Raises:
        TeacherUnavailableError: if MediaPipe is not installed.
        RuntimeError: if the teacher found nobody in the video.
    """
    source = LocalSource([video], split="all", max_side=max_side, max_frames=max_frames)
    teacher = mediapipe_teacher()
    with RingBuffer(MAX_STAGED, crop_size) as staging:
        try:
            label_stream(source, teacher, staging, max_samples=MAX_STAGED)
        finally:
            teacher.close()
        if len(staging) == 0:
            raise RuntimeError(f"MediaPipe found nobody in {video}")
        return staging.snapshot()


def fill(buffer: RingBuffer, rows: dict[str, np.ndarray], pushes: int) -> None:
    """Push `pushes` samples into `buffer`, cycling over `rows` (frame indices keep counting up,
    so every pushed sample has its own id).

    Raises:
        ValueError: if the rows' crop size differs from the buffer's.
    """
    n = len(rows["image"])
    for i in range(pushes):
        j = i % n
        buffer.push(Sample(
            image=rows["image"][j], kpts2d=rows["kpts2d"][j], kpts3d=rows["kpts3d"][j],
            visibility=rows["visibility"][j], K_crop=rows["K_crop"][j],
            video_id="bench", frame_index=i, track_id=int(rows["track_id"][j]),
        ))
