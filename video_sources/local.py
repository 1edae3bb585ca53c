"""Local video files, directories and http(s) URLs as a `VideoSource`.

Each video's bytes are read (or downloaded) into memory and decoded there by
`video_sources.decode`; nothing is written to disk. Frames come out video after video, in the
order the paths were given (directory entries sorted by name), split into train / val by video
id so that validation never sees a training video.

Bad input never stops the stream: a video that cannot be read or decoded is skipped with one
warning and counted in `stats.videos_skipped` / `stats.skipped`, and it is not retried on later
passes of a looped list. A video that fails part-way (truncated, corrupt) keeps the frames
decoded before the failure, logs one warning and counts in `stats.videos_ok`, not as skipped.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence
from urllib.parse import unquote, urlparse

import requests

from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError, check_decode_options, decode_video_bytes
from video_sources.frames import frames_from_bytes
from video_sources.http import DEFAULT_TIME_LIMIT_S, DownloadError, download_bytes
from video_sources.splits import check_shard, check_split, select_split, take_shard

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})


class _ReadError(Exception):
    """The bytes of one video could not be read or downloaded; the message says why."""


class LocalSource:
    """Frames of local video files, directories and http(s) URLs, decoded from memory.

    Args:
        paths: one or more files, directories (their mp4/mov/avi/mkv/webm files, not
            recursive, sorted by name, extension case-insensitive) or http(s) URLs. A file named
            explicitly is used whatever its extension. Repeats of the same path or URL are dropped.
        split: "train", "val" or "all" (both).
        val_videos: ids (file stems) of the validation videos; all others are train. Takes
            precedence over `val_fraction`.
        val_fraction: in [0, 1): fraction of videos held out for validation, chosen by a stable
            hash (SHA-1) of the video id, so a video keeps its split when the list changes.
            With two or more videos each split gets at least one.
        frameskip, max_frames, max_side: per video, see `decode_video_bytes`.
        loop: cycle over the videos forever; False iterates once.
        max_bytes: largest file or download read into memory, in bytes.
        timeout_s: requests timeout (connect, and each read) for URLs, in seconds.
        time_limit_s: limit on one whole download, in seconds (a server trickling bytes is
            cut off; the video is skipped); None for none.
        shard, num_shards: keep only videos shard, shard + num_shards, ... of the split's list,
            so that several producers stream disjoint videos that together make the split
            (every shard has one when num_shards <= the split's videos).
        skip_ids: ids of videos used already in the current pass (a resumed run's, see
            `StreamDataModule.load_state_dict`): the first pass leaves them out. Later passes
            of a looped list stream every video again; when all were used, the first pass is
            empty and a looped source starts a full pass at once (without `loop`, it yields
            nothing).

    Video ids (`VideoRef.id`) are the file stem, or the last URL path part without extension;
    a repeated id gets "-2", "-3", ... in input order. Frames carry `K = None` (unknown).
    `stats` count per pass: a looped video counts again each time it is streamed.

    Raises:
        FileNotFoundError: a path that does not exist (named in the message).
        ValueError: no video found, an empty selected split or shard, an unknown id in
            `val_videos`, or an invalid option.
    """

    kind = "local"

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        split: str = "train",
        val_videos: list[str] | None = None,
        val_fraction: float = 0.0,
        frameskip: int = 1,
        max_frames: int | None = None,
        max_side: int | None = None,
        loop: bool = False,
        max_bytes: int = 2_000_000_000,
        timeout_s: float = 30.0,
        time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
        shard: int = 0,
        num_shards: int = 1,
        skip_ids: Iterable[str] = (),
    ) -> None:
        check_decode_options(frameskip, max_frames, max_side)
        _check_options(split, val_fraction, max_bytes, timeout_s)
        if time_limit_s is not None and time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0 seconds or None, got {time_limit_s!r}")
        check_shard(shard, num_shards)
        videos = select_split(_list_videos(paths), split, val_videos, val_fraction,
                              usable=lambda video: _decodes(video, max_bytes))
        # Round robin over the split's list (the same in every process): shards differ in size
        # by one video at most, so any count of producers up to the videos' works.
        self._videos = take_shard(videos, shard, num_shards)
        if not self._videos:
            raise ValueError(
                f"shard {shard} of {num_shards} of split {split!r} has no video: the split has "
                f"{len(videos)} ({[v.id for v in videos]}); use fewer producer workers than "
                f"videos (producer.workers x ranks <= {len(videos)})"
            )
        self.frameskip, self.max_frames, self.max_side = frameskip, max_frames, max_side
        self.loop, self.max_bytes, self.timeout_s = loop, max_bytes, timeout_s
        self.time_limit_s = time_limit_s
        self.skip_ids = frozenset(skip_ids)
        self.stats = SourceStats()
        self._unreadable: set[str] = set()  # uris skipped once, not retried
        self._cut_short: set[str] = set()  # uris reported cut short once (looped passes)
        self._session: requests.Session | None = None

    def video_ids(self) -> list[str]:
        """Ids of the videos in the selected split, in streaming order (nothing is decoded)."""
        return [video.id for video in self._videos]

    def __iter__(self) -> Iterator[Frame]:
        """Frames (`[H, W, 3]` uint8 RGB) video after video; forever when `loop`.

        Raises:
            RuntimeError: when `loop` is set and a whole pass yields no frame (every video is
                unreadable), instead of spinning forever.
        """
        skip = self.skip_ids & set(self.video_ids())  # the first pass only
        if skip:
            logger.info("skipping %d of %d videos, used before: %s", len(skip),
                        len(self._videos), ", ".join(sorted(skip)))
        while True:
            frames_before_pass = self.stats.frames
            for video in self._videos:
                if video.uri not in self._unreadable and video.id not in skip:
                    # yield from: closing this iterator early also closes the video's decoder.
                    yield from self._video_frames(video)
            if not self.loop:
                return
            if self.stats.frames == frames_before_pass and not skip:  # a full pass, all failed
                uris = ", ".join(video.uri for video in self._videos)
                raise RuntimeError(f"no readable video in {uris}")
            skip = set()

    def close(self) -> None:
        """Close the HTTP session; the source can still be iterated (a new one opens)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _video_frames(self, video: VideoRef) -> Iterator[Frame]:
        """Frames of one video; a failure is logged once and ends this video only."""
        self.stats.current = video.uri
        try:
            data = self._read(video)
        except _ReadError as exc:
            self._skip(video, str(exc))
            return
        try:
            yield from frames_from_bytes(data, video, self.stats, warned=self._cut_short,
                                         frameskip=self.frameskip,
                                         max_frames=self.max_frames, max_side=self.max_side)
        except VideoDecodeError as exc:
            self._skip(video, str(exc))

    def _skip(self, video: VideoRef, reason: str) -> None:
        logger.warning("skipping video %s: %s", video.uri, reason)
        self.stats.videos_skipped += 1
        self.stats.skipped.append((video.uri, reason))
        self._unreadable.add(video.uri)

    def _read(self, video: VideoRef) -> bytes:
        """All bytes of the video, from disk or the network, into memory."""
        if video.kind == "url":
            return self._download(video.uri)
        try:
            size = os.path.getsize(video.uri)
            if size > self.max_bytes:
                raise _ReadError(f"file is {size} bytes, over max_bytes={self.max_bytes}")
            return Path(video.uri).read_bytes()
        except OSError as exc:
            raise _ReadError(f"cannot read file: {exc.strerror or exc}") from exc

    def _download(self, url: str) -> bytes:
        """The body of a GET, streamed into memory and capped at `max_bytes`."""
        if self._session is None:
            self._session = requests.Session()
        try:
            return download_bytes(self._session, url, max_bytes=self.max_bytes,
                                  timeout_s=self.timeout_s, time_limit_s=self.time_limit_s)
        except DownloadError as exc:
            raise _ReadError(str(exc)) from exc


def _check_options(split: str, val_fraction: float, max_bytes: int, timeout_s: float) -> None:
    check_split(split, val_fraction)
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")


def _list_videos(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[VideoRef]:
    """One `VideoRef` per distinct video, in input order, with unique ids.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: no video at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    uris: dict[tuple[str, str], None] = {}  # (uri, kind), ordered and deduplicated
    for path in paths:
        for uri_kind in _expand(os.fspath(path)):
            uris.setdefault(uri_kind, None)
    if not uris:
        raise ValueError(f"no video found in {[os.fspath(p) for p in paths]}")
    return _assign_ids(list(uris))


def _expand(path: str) -> list[tuple[str, str]]:
    """`(uri, kind)` of the videos a path or URL names: itself, or a directory's videos."""
    if urlparse(path).scheme.lower() in ("http", "https"):
        return [(path, "url")]
    # abspath, not resolve(): a symlink keeps its own name, which becomes the video id.
    resolved = Path(os.path.abspath(os.path.expanduser(path)))
    if resolved.is_dir():
        found = sorted(
            p for p in resolved.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
        )
        if not found:
            logger.warning("no %s file in directory %s", "/".join(sorted(VIDEO_EXTENSIONS)), path)
        return [(str(p), "local") for p in found]
    if resolved.is_file():
        return [(str(resolved), "local")]
    raise FileNotFoundError(f"video path does not exist: {path} (give existing video files, "
                            "folders or http(s) URLs)")


def _assign_ids(uris: list[tuple[str, str]]) -> list[VideoRef]:
    """VideoRefs with ids from names; a repeated name gets "-2", "-3", ... in input order."""
    refs, used = [], set()
    for uri, kind in uris:
        base = _base_id(uri, kind)
        video_id, n = base, 1
        while video_id in used:
            n += 1
            video_id = f"{base}-{n}"
        used.add(video_id)
        refs.append(VideoRef(id=video_id, kind=kind, uri=uri))
    return refs


def _base_id(uri: str, kind: str) -> str:
    """File stem, or the last URL path part without extension (the host if the path is empty)."""
    if kind == "url":
        parsed = urlparse(uri)
        return PurePosixPath(unquote(parsed.path)).stem or parsed.netloc
    return Path(uri).stem


def _decodes(video: VideoRef, max_bytes: int) -> bool:
    """Whether a local file gives a first frame (URLs are not fetched for this: True)."""
    if video.kind != "local":
        return True
    try:
        if os.path.getsize(video.uri) > max_bytes:
            return False
        frames = decode_video_bytes(Path(video.uri).read_bytes(), max_frames=1)
        with closing(frames):
            next(frames)
        return True
    except (OSError, VideoDecodeError, StopIteration):
        return False
