"""The Pexels API's wire format: the video, file and page objects it returns, parsed into
frozen dataclasses, and the choice of the file to download.

Reference: https://www.pexels.com/api/documentation/#videos (`Video`, `Video File`, search and
popular responses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_PER_PAGE = 80  # Pexels API documentation: per_page "Max: 80"
_QUALITY_RANK = {"hd": 0, "sd": 1}  # preferred qualities within the width range; others after


@dataclass(frozen=True)
class VideoFile:
    """One rendition of a Pexels video (`video_files[]`); width/height/fps are None for `hls`.

    Attributes:
        id: file id. quality: "hd", "sd", "uhd" or "hls". file_type: MIME type, e.g. "video/mp4".
        width, height: pixels. fps: frames per second. link: URL of the file.
    """

    id: int
    quality: str | None
    file_type: str | None
    width: int | None
    height: int | None
    fps: float | None
    link: str


@dataclass(frozen=True)
class PexelsVideo:
    """One Pexels video (the API's `Video` object, the fields this project uses).

    Attributes:
        id: Pexels video id. url: its page on pexels.com. width, height: pixels.
        duration: seconds. user_name, user_url: the videographer, to credit.
        video_files: the available renditions.
    """

    id: int
    url: str
    width: int
    height: int
    duration: float
    user_name: str
    user_url: str
    video_files: tuple[VideoFile, ...]


@dataclass(frozen=True)
class VideoPage:
    """One page of search or popular results.

    Attributes:
        videos: the page's videos. page, per_page: as requested. total_results: over all pages.
        next_page: URL of the next page, or None on the last page.
    """

    videos: tuple[PexelsVideo, ...]
    page: int
    per_page: int
    total_results: int
    next_page: str | None


def parse_page(payload: dict[str, Any]) -> VideoPage:
    """A `VideoPage` from the JSON of `/videos/search` or `/videos/popular`.

    Raises:
        ValueError: a payload that lacks a required field or has one of the wrong type.
    """
    try:
        return VideoPage(
            videos=tuple(_parse_video(v) for v in payload["videos"]),
            page=int(payload["page"]),
            per_page=int(payload["per_page"]),
            total_results=int(payload.get("total_results", 0)),
            next_page=payload.get("next_page") or None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a Pexels video page: {type(exc).__name__}: {exc}") from exc


def _parse_video(v: dict[str, Any]) -> PexelsVideo:
    user = v.get("user") or {}
    files = tuple(
        VideoFile(
            id=int(f["id"]),
            quality=f.get("quality"),
            file_type=f.get("file_type"),
            width=_int_or_none(f.get("width")),
            height=_int_or_none(f.get("height")),
            fps=None if f.get("fps") is None else float(f["fps"]),
            link=str(f["link"]),
        )
        for f in v.get("video_files") or ()
    )
    return PexelsVideo(
        id=int(v["id"]),
        url=str(v["url"]),
        width=int(v["width"]),
        height=int(v["height"]),
        duration=float(v["duration"]),
        user_name=str(user.get("name", "")),
        user_url=str(user.get("url", "")),
        video_files=files,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def pick_file(video: PexelsVideo, min_width: int = 0, max_width: int = 1920) -> VideoFile | None:
    """The rendition to download: the best mp4 within `min_width`..`max_width` pixels wide.

    Order of preference: `hd` in range, then `sd` in range, then any other quality in range
    (widest first within each), then the narrowest mp4 wider than `max_width` (the decoder can
    downscale it). mp4s narrower than `min_width` are never chosen. An `hls` entry (null width
    and height) is returned only when the video has no mp4 at all; None when nothing is usable.
    """
    mp4s = [f for f in video.video_files if _is_mp4(f)]
    in_range = [f for f in mp4s if min_width <= f.width <= max_width]
    if in_range:
        return min(in_range, key=lambda f: (_QUALITY_RANK.get(f.quality, 2), -f.width))
    larger = [f for f in mp4s if f.width > max_width]
    if larger:
        return min(larger, key=lambda f: f.width)
    if mp4s:
        return None
    return next((f for f in video.video_files if f.quality == "hls"), None)


def _is_mp4(f: VideoFile) -> bool:
    # hls entries may claim "video/mp4" as file_type; their null size gives them away.
    return f.quality != "hls" and f.width is not None and f.file_type == "video/mp4"
