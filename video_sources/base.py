"""The video source protocol: an iterable of decoded `Frame`s, video after video.

Every source (local files and URLs, synthetic, Pexels) yields frames of one video in order, then
the next video's. A consumer sees a new video when `frame.video.id` changes or `frame.index`
goes back to a smaller value (a looped list). Bad videos are skipped inside the source, logged
once and counted in `stats`; iteration never raises for one bad video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

from stream_pose.types import Frame


@dataclass
class SourceStats:
    """Counters a source keeps while it streams.

    Attributes:
        videos_ok: videos that yielded at least one frame.
        videos_skipped: videos skipped as unreadable (corrupt, empty, not video, download failed).
        frames: frames yielded.
        skipped: `(video uri or id, reason)` for each skipped video, in order.
        current: uri of the video being read or decoded (None when unknown): what a stalled
            producer was doing.
    """

    videos_ok: int = 0
    videos_skipped: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    current: str | None = None


@runtime_checkable
class VideoSource(Protocol):
    """What the producer needs from a source.

    Sources take `split` ("train" or "val") in their constructor and yield only that split's
    videos, so that validation is split by video id, never by frame.
    """

    kind: str
    stats: SourceStats

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...
