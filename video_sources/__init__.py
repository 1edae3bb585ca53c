"""Where frames come from: local files and URLs, synthetic scenes, Pexels; all decoded in memory."""

from video_sources.base import SourceStats, VideoSource
from video_sources.decode import VideoDecodeError, decode_video_bytes
from video_sources.local import LocalSource
from video_sources.pexels import PexelsApiError, PexelsClient, PexelsKeyError, PexelsSource

__all__ = [
    "LocalSource", "PexelsApiError", "PexelsClient", "PexelsKeyError", "PexelsSource",
    "SourceStats", "VideoDecodeError", "VideoSource", "decode_video_bytes",
]
