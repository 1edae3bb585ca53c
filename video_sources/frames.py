"""One in-memory video as a stream of `Frame`s, with the counting every source shares."""

from __future__ import annotations

import logging
from contextlib import closing
from typing import Callable, Generator

from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError, decode_video_bytes

logger = logging.getLogger(__name__)


def frames_from_bytes(
    data: bytes,
    video: VideoRef,
    stats: SourceStats,
    *,
    frameskip: int = 1,
    max_frames: int | None = None,
    max_side: int | None = None,
    on_first_frame: Callable[[], None] | None = None,
    warned: set[str] | None = None,
) -> Generator[Frame, None, int]:
    """Decode `data` (see `decode_video_bytes`) into `Frame`s of `video`, counting in `stats`.

    A video that fails part-way keeps the frames it gave and logs one warning; it counts in
    `stats.videos_ok`. `on_first_frame` runs once, before the first frame is yielded (e.g. to
    record the video in a manifest only once it proved readable). `warned`, when given, holds
    the uris already reported cut short: a looped source warns once per video, not per pass
    (later passes log at debug level); the uri is added to it.

    Returns:
        The number of frames yielded (the generator's return value, for `yield from`).

    Raises:
        VideoDecodeError: if not a single frame could be decoded; the caller skips the video.
    """
    decoded = decode_video_bytes(data, frameskip=frameskip, max_frames=max_frames,
                                 max_side=max_side)
    count = 0
    try:
        with closing(decoded):  # closes the container if the consumer stops early
            for index, time_s, image in decoded:
                if count == 0:
                    stats.videos_ok += 1
                    if on_first_frame is not None:
                        on_first_frame()
                count += 1
                stats.frames += 1
                yield Frame(image=image, index=index, time_s=time_s, video=video, K=None)
    except VideoDecodeError as exc:
        if count == 0:
            raise
        level = logging.DEBUG if warned is not None and video.uri in warned else logging.WARNING
        logger.log(level, "video %s cut short, keeping %d frames: %s", video.uri, count, exc)
        if warned is not None:
            warned.add(video.uri)
    return count
