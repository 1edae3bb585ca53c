"""Pexels videos as a `VideoSource`: search, pick a file, download into memory, decode.

The Pexels API (https://www.pexels.com/api/documentation/) is called with one
`requests.Session`, a timeout on every call and the API key only in the `Authorization` header
of API requests (never in a URL, a log line, an exception message, a repr or the manifest, and
never sent to the hosts that serve the video files). Responses carry `X-Ratelimit-Limit`,
`X-Ratelimit-Remaining` and `X-Ratelimit-Reset` (UNIX time); a 429 may carry none of them and
Pexels documents no `Retry-After`, so the client paces itself as the quota runs low and backs
off with jitter on 429, 5xx and connection errors.

Chosen files are downloaded into memory (`video_sources.http`) and decoded there
(`video_sources.decode`); nothing raw touches disk. A JSON-lines manifest (metadata only)
credits the videographers, as the Pexels guidelines ask, and lets a restarted run skip the
videos it already used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import requests
from dotenv import dotenv_values

from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError, check_decode_options
from video_sources.frames import frames_from_bytes
from video_sources.http import DEFAULT_TIME_LIMIT_S, DownloadError, download_bytes
from video_sources.splits import check_shard, check_split, in_id_shard, in_split

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.pexels.com"
KEY_ENV = "PEXELS_API_KEY"
API_URL_ENV = "PEXELS_API_URL"
LICENCE = "Pexels License"  # https://www.pexels.com/license/
ID_PREFIX = "pexels-"  # VideoRef.id is "pexels-<Pexels id>"
MAX_PER_PAGE = 80  # Pexels API documentation: per_page "Max: 80"
_QUALITY_RANK = {"hd": 0, "sd": 1}  # preferred qualities within the width range; others after


class PexelsKeyError(RuntimeError):
    """No Pexels API key in the environment or `.env`."""


class PexelsApiError(RuntimeError):
    """An API request failed: a non-retryable status, or retries exhausted.

    Attributes:
        status: the last HTTP status, or None for a connection error or timeout.
    """

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


# --- wire format -------------------------------------------------------------------------------


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


# --- API key -----------------------------------------------------------------------------------


def load_api_key(env_file: str | os.PathLike | None = ".env") -> str:
    """The Pexels API key from `PEXELS_API_KEY` in the environment, else from `env_file`.

    `env_file` is read without changing `os.environ`; None reads the environment only.

    Raises:
        PexelsKeyError: no non-empty key; the message says how to get one and which sources
            work offline.
    """
    key = os.environ.get(KEY_ENV, "").strip()
    if not key and env_file is not None and Path(env_file).is_file():
        key = (dotenv_values(env_file).get(KEY_ENV) or "").strip()
    if not key:
        raise PexelsKeyError(
            f"{KEY_ENV} is not set. Get a free key at https://www.pexels.com/api/ and put it in "
            f"the environment or in a .env file ({KEY_ENV}=...), never on the command line. "
            "To run without Pexels, use source=local (your own video files) or source=synthetic."
        )
    return key


def configured_api_key() -> str | None:
    """The key `load_api_key` would return, or None when none is set (no error): for callers
    that only need to recognise the key, e.g. to refuse it on a command line."""
    try:
        return load_api_key()
    except PexelsKeyError:
        return None


# --- client ------------------------------------------------------------------------------------


@dataclass
class Quota:
    """The API quota as last reported by `X-Ratelimit-*` headers (None until then).

    Attributes:
        limit: requests per period. remaining: requests left. reset: UNIX time (s) of renewal.
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None


class PexelsClient:
    """A minimal Pexels video API client with rate limiting and retries.

    Args:
        api_key: the key; None reads it with `load_api_key()`.
        api_base: API root URL; None uses `PEXELS_API_URL` or https://api.pexels.com.
        timeout_s: requests timeout (connect, and each read), seconds.
        max_retries: retries of one request after a 429, a 5xx or a connection error.
        backoff_s, max_backoff_s: exponential backoff base and cap, seconds; each wait is
            drawn in [d/2, d] with d = min(max_backoff_s, backoff_s * 2**attempt) ("equal
            jitter", AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
        slow_below: fraction of the quota below which requests are spread evenly over the
            time left until the reset, instead of spending the rest at once.
        sleep, clock: injectable `time.sleep` and `time.time` (tests).

    Raises:
        PexelsKeyError: no key given and none found.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        api_base: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
        slow_below: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = api_key if api_key else load_api_key()
        self.api_base = (api_base or os.environ.get(API_URL_ENV) or DEFAULT_API_BASE).rstrip("/")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s, self.slow_below = backoff_s, max_backoff_s, slow_below
        self._sleep, self._clock = sleep, clock
        self.quota = Quota()
        # The key goes per request, not into session.headers, so that file downloads on the
        # same session never carry it to another host.
        self.session = requests.Session()

    def __repr__(self) -> str:
        return f"PexelsClient(api_base={self.api_base!r}, key=<hidden>)"

    def search(
        self,
        query: str,
        *,
        page: int = 1,
        per_page: int = 15,
        orientation: str | None = None,
        size: str | None = None,
        min_duration: int | None = None,
        max_duration: int | None = None,
    ) -> VideoPage:
        """`GET /videos/search`: one page of videos matching `query`.

        orientation: "landscape", "portrait" or "square"; size: "large" (4K), "medium" (Full
        HD) or "small" (HD); min/max_duration in seconds; None leaves a filter out.

        Raises:
            ValueError: an empty query, page < 1 or per_page outside 1..80.
            PexelsApiError: see `_get`.
        """
        if not query.strip():
            raise ValueError("query must be a non-empty string")
        params = {"query": query, "orientation": orientation, "size": size,
                  "min_duration": min_duration, "max_duration": max_duration}
        return self._page("/videos/search", page, per_page, params)

    def popular(self, *, page: int = 1, per_page: int = 15) -> VideoPage:
        """`GET /videos/popular`: one page of the currently popular videos.

        Raises:
            ValueError: page < 1 or per_page outside 1..80.
            PexelsApiError: see `_get`.
        """
        return self._page("/videos/popular", page, per_page, {})

    def download(self, url: str, *, max_bytes: int, time_limit_s: float | None) -> bytes:
        """The bytes of a video file link, into memory, without the API key (see `download_bytes`).

        Raises:
            DownloadError: the file could not be downloaded within the caps.
        """
        return download_bytes(self.session, url, max_bytes=max_bytes, timeout_s=self.timeout_s,
                              time_limit_s=time_limit_s)

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def _page(self, path: str, page: int, per_page: int, params: dict[str, Any]) -> VideoPage:
        if page < 1:
            raise ValueError(f"page must be >= 1, got {page!r}")
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be in 1..{MAX_PER_PAGE}, got {per_page!r}")
        params = {k: v for k, v in params.items() if v is not None}
        payload = self._get(path, {**params, "page": page, "per_page": per_page})
        return parse_page(payload)

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """JSON of an API GET, after pacing, with retries on 429, 5xx and connection errors.

        Raises:
            PexelsApiError: another 4xx (401/403: a bad key), a body that is not JSON, or the
                last failure once `max_retries` retries are spent. Messages name the path and
                status only, never the key or the full URL.
        """
        status: int | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self._backoff(attempt - 1, status))
            self._pace()
            try:
                response = self.session.get(
                    self.api_base + path, params=params, timeout=self.timeout_s,
                    headers={"Authorization": self._key},
                )
            except requests.RequestException as exc:
                status = None
                logger.warning("Pexels %s: %s, retrying", path, type(exc).__name__)
                continue
            status = response.status_code
            self._update_quota(response.headers)
            if status == 200:
                return self._json(response, path)
            if status != 429 and status < 500:
                hint = " (check PEXELS_API_KEY)" if status in (401, 403) else ""
                raise PexelsApiError(f"Pexels {path}: HTTP {status}{hint}", status)
            logger.warning("Pexels %s: HTTP %d, backing off", path, status)
        raise PexelsApiError(
            f"Pexels {path}: failed after {self.max_retries + 1} attempts "
            f"(last: {'HTTP %d' % status if status else 'connection error'})", status
        )

    @staticmethod
    def _json(response: requests.Response, path: str) -> dict[str, Any]:
        try:
            return response.json()
        except ValueError as exc:
            raise PexelsApiError(f"Pexels {path}: response is not JSON", 200) from exc

    def _backoff(self, attempt: int, status: int | None) -> float:
        """Seconds to wait before retry `attempt` (0-based): jittered exponential, or until
        the quota resets when a 429 says it is spent."""
        cap = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay = random.uniform(cap / 2, cap)
        if status == 429 and self.quota.remaining == 0 and self.quota.reset is not None:
            delay = max(delay, self.quota.reset - self._clock())
        return delay

    def _pace(self) -> None:
        """Spread the remaining quota over the time until its reset once it runs low."""
        q = self.quota
        if q.remaining is None or q.reset is None or q.limit is None:
            return
        if q.remaining > self.slow_below * q.limit:
            return
        wait = max(0.0, q.reset - self._clock()) / (q.remaining + 1)
        if wait > 0:
            logger.info("Pexels quota low (%d of %d left): waiting %.1f s", q.remaining, q.limit,
                        wait)
            self._sleep(wait)

    def _update_quota(self, headers: Any) -> None:
        try:
            limit = headers.get("X-Ratelimit-Limit")
            remaining = headers.get("X-Ratelimit-Remaining")
            reset = headers.get("X-Ratelimit-Reset")
            if limit is not None:
                self.quota.limit = int(limit)
            if remaining is not None:
                self.quota.remaining = int(remaining)
            if reset is not None:
                self.quota.reset = float(reset)
        except ValueError:
            logger.warning("Pexels sent unreadable X-Ratelimit headers; ignoring them")


# --- source ------------------------------------------------------------------------------------


class PexelsSource:
    """Frames of Pexels videos found by search (or popular), decoded from memory.

    For each query, pages are followed (`next_page`) until `n` new videos of this split have
    yielded frames or the results end. With `loop`, passes over the queries repeat forever,
    each continuing where the last stopped; after a pass that found no new video, the source
    logs it, rests `rest_s` seconds (so it never spins on the API) and starts the queries whose
    results ended again from page 1, since Pexels results change over time. `close()`, from any
    thread, ends the rest and the stream promptly. A video id is used at most once: across
    queries, pages, passes and (through the manifest) restarts.

    Args:
        queries: search terms; empty uses `/videos/popular`.
        n: new videos per query per pass.
        loop: repeat passes forever (until `close()`); False makes one pass.
        rest_s: seconds (> 0) to wait after a looped pass that found no new video.
        split, val_fraction: "train", "val" or "all"; a video is in val iff the stable hash of
            its id (`pexels-<id>`) is below `val_fraction` (`video_sources.splits.in_split`).
        shard, num_shards: use only the videos of this shard (`video_sources.splits.in_id_shard`
            on the id), so that several producers fetch disjoint videos; `n` counts the
            shard's own. Each shard queries the API itself: the quota is shared.
        skip_ids: ids (`pexels-<id>`) of videos used already, e.g. by the run a resumed one
            continues (`StreamDataModule.load_state_dict`): never fetched, like those listed
            in the manifest.
        manifest_path: JSON-lines manifest (metadata only); None keeps none. For split "train"
            or "val" the split name goes before the suffix (`run/pexels_manifest.jsonl` ->
            `run/pexels_manifest.train.jsonl`), so the two sources of one run keep apart; "all"
            uses the path as given. Train and "all" skip the ids already listed (a restart
            fetches no video twice); val does not, so a restart rebuilds the same val set
            instead of drawing new videos, and it lists each id once.
        client: a `PexelsClient`; None builds one from `api_key`/`api_base` (key from the
            environment or `.env` when `api_key` is None).
        per_page, orientation, size, min_duration, max_duration: search filters (see
            `PexelsClient.search`).
        min_width, max_width: file width range in pixels (see `pick_file`).
        frameskip, max_frames, max_side: per video, see `decode_video_bytes`.
        max_bytes: largest download accepted, bytes. time_limit_s: per download, seconds.

    Frames carry `VideoRef(id="pexels-<id>", kind="pexels", uri=<page url>,
    licence="Pexels License", attribution="<name> (<profile url>)")` and `K = None`.

    Raises:
        ValueError: an invalid option. PexelsKeyError: no key (when `client` is None).
    """

    kind = "pexels"

    def __init__(
        self,
        queries: Sequence[str] = (),
        *,
        n: int = 5,
        loop: bool = False,
        rest_s: float = 300.0,
        split: str = "train",
        val_fraction: float = 0.0,
        manifest_path: str | os.PathLike | None = None,
        client: PexelsClient | None = None,
        api_key: str | None = None,
        api_base: str | None = None,
        per_page: int = 15,
        orientation: str | None = None,
        size: str | None = None,
        min_duration: int | None = None,
        max_duration: int | None = None,
        min_width: int = 640,
        max_width: int = 1920,
        frameskip: int = 1,
        max_frames: int | None = None,
        max_side: int | None = None,
        max_bytes: int = 200_000_000,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        shard: int = 0,
        num_shards: int = 1,
        skip_ids: Iterable[str] = (),
    ) -> None:
        check_decode_options(frameskip, max_frames, max_side)
        check_shard(shard, num_shards)
        _check_options(queries, n, split, val_fraction, per_page, max_bytes, time_limit_s)
        if rest_s <= 0:  # a zero rest would poll the API in a hot loop
            raise ValueError(f"rest_s must be > 0, got {rest_s!r}")
        self.queries: list[str | None] = list(queries) or [None]  # None: popular
        self.n, self.loop, self.split, self.val_fraction = n, loop, split, val_fraction
        self.shard, self.num_shards = shard, num_shards
        self.rest_s = rest_s
        self.filters = {"orientation": orientation, "size": size,
                        "min_duration": min_duration, "max_duration": max_duration}
        self.per_page, self.min_width, self.max_width = per_page, min_width, max_width
        self.frameskip, self.max_frames, self.max_side = frameskip, max_frames, max_side
        self.max_bytes, self.time_limit_s = max_bytes, time_limit_s
        self.manifest = None if manifest_path is None else split_manifest(manifest_path, split)
        self.client = client or PexelsClient(api_key, api_base=api_base)
        self.stats = SourceStats()
        self._stop = threading.Event()
        listed = read_manifest_ids(self.manifest)
        # Ids not to record again; train and "all" also skip them (see the class docstring).
        self._recorded: set[int] = set(listed)
        self._seen: set[int] = set() if split == "val" else listed  # used, failed, other split
        self._seen |= _pexels_numbers(skip_ids)
        self._next_page: dict[str | None, int | None] = {q: 1 for q in self.queries}
        self._pending: dict[str | None, deque[PexelsVideo]] = {q: deque() for q in self.queries}

    def __iter__(self) -> Iterator[Frame]:
        """Frames (`[H, W, 3]` uint8 RGB) video after video; see the class docstring.

        Raises:
            PexelsApiError: a 401/403 (bad key). Other API failures end the query's pass with
                one warning.
        """
        while not self._stop.is_set():
            used = 0
            for query in self.queries:
                used += yield from self._query_pass(query)
            if not self.loop or (not used and not self._rest()):
                return

    def close(self) -> None:
        """Stop the stream (also from another thread, also during a rest); close the session."""
        self._stop.set()
        self.client.close()

    def _rest(self) -> bool:
        """Wait `rest_s` after a fruitless pass, then restart ended queries from page 1.

        Returns:
            False if `close()` was called (stop streaming), else True.
        """
        logger.info("no new Pexels videos in a pass over %d queries; next pass in %.0f s",
                    len(self.queries), self.rest_s)
        if self._stop.wait(self.rest_s):
            return False
        for query, page in self._next_page.items():
            if page is None:
                self._next_page[query] = 1
        return True

    def _query_pass(self, query: str | None) -> Iterator[Frame]:
        """Frames of up to `n` new videos of one query, continuing from its next page.

        Returns:
            The number of videos that yielded frames.
        """
        used = 0
        for video, file in self._candidates(query):
            if self._stop.is_set():
                break
            used += yield from self._video_frames(video, file, query)
            if used >= self.n:
                break
        return used

    def _candidates(self, query: str | None) -> Iterator[tuple[PexelsVideo, VideoFile]]:
        """New videos of this split with a usable file, page after page, until results end.

        Videos of a fetched page not reached in this pass wait in `_pending` for the next one.
        """
        pending = self._pending[query]
        while pending or self._next_page[query] is not None:
            if not pending and not self._fetch_next(query):
                return  # API failure logged; the next pass retries this page
            video = pending.popleft()
            if video.id in self._seen:
                continue
            self._seen.add(video.id)
            if not self._mine(_video_id(video)):
                continue
            file = pick_file(video, self.min_width, self.max_width)
            if file is None or file.quality == "hls":
                # HLS needs FFmpeg to fetch its segments itself: not decodable from memory.
                self._skip(video, "no mp4 file" if file is None else "only an HLS stream")
                continue
            yield video, file

    def _mine(self, video_id: str) -> bool:
        """Whether a video belongs to this source's split and shard."""
        return (in_split(video_id, self.split, self.val_fraction)
                and in_id_shard(video_id, self.shard, self.num_shards))

    def _fetch_next(self, query: str | None) -> bool:
        """Queue the query's next page of results; False if the API request failed."""
        page_no = self._next_page[query]
        page = self._fetch_page(query, page_no)
        if page is None:
            return False
        self._pending[query].extend(page.videos)
        self._next_page[query] = page_no + 1 if page.next_page and page.videos else None
        return True

    def _fetch_page(self, query: str | None, page_no: int) -> VideoPage | None:
        try:
            if query is None:
                return self.client.popular(page=page_no, per_page=self.per_page)
            return self.client.search(query, page=page_no, per_page=self.per_page,
                                      **self.filters)
        except PexelsApiError as exc:
            if exc.status in (401, 403):
                raise
            logger.warning("Pexels query %r page %d failed: %s", query, page_no, exc)
            return None

    def _video_frames(
        self, video: PexelsVideo, file: VideoFile, query: str | None
    ) -> Iterator[Frame]:
        """Frames of one video; returns 1 if it yielded any, else 0 (failure logged once)."""
        ref = _video_ref(video)
        try:
            data = self.client.download(file.link, max_bytes=self.max_bytes,
                                        time_limit_s=self.time_limit_s)
        except DownloadError as exc:
            self._skip(video, str(exc))
            return 0
        try:
            count = yield from frames_from_bytes(
                data, ref, self.stats, frameskip=self.frameskip, max_frames=self.max_frames,
                max_side=self.max_side, on_first_frame=lambda: self._record(video, file, query),
            )
        except VideoDecodeError as exc:
            self._skip(video, str(exc))
            return 0
        return int(count > 0)

    def _skip(self, video: PexelsVideo, reason: str) -> None:
        logger.warning("skipping Pexels video %s: %s", video.url, reason)
        self.stats.videos_skipped += 1
        self.stats.skipped.append((video.url, reason))

    def _record(self, video: PexelsVideo, file: VideoFile, query: str | None) -> None:
        """Append the video's metadata (never its bytes, never the key) to the manifest."""
        if self.manifest is None or video.id in self._recorded:
            return
        self._recorded.add(video.id)
        entry = {
            "id": video.id, "url": video.url, "file_link": file.link,
            "width": file.width, "height": file.height, "fps": file.fps,
            "duration": video.duration, "user_name": video.user_name,
            "user_url": video.user_url, "query": query, "split": self.split,
            "used_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        with self.manifest.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def split_manifest(path: str | os.PathLike, split: str) -> Path:
    """The manifest file of one split: `pexels_manifest.jsonl` -> `pexels_manifest.train.jsonl`
    for "train" and "val"; the path unchanged for "all"."""
    path = Path(path)
    return path if split == "all" else path.with_name(f"{path.stem}.{split}{path.suffix}")


def read_manifest_ids(path: Path | None) -> set[int]:
    """Pexels ids listed in a JSON-lines manifest; empty if None or absent.

    Lines that are not JSON objects with an integer `id` (a line cut by a crash) are skipped
    with one warning each.
    """
    if path is None or not path.is_file():
        return set()
    ids = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            ids.add(int(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            if line.strip():
                logger.warning("manifest %s line %d unreadable; ignoring it", path, number)
    return ids


def _pexels_numbers(video_ids: Iterable[str]) -> set[int]:
    """Pexels ids of `pexels-<id>` video ids; ids of other sources are ignored."""
    numbers = (v[len(ID_PREFIX):] for v in video_ids if v.startswith(ID_PREFIX))
    return {int(n) for n in numbers if n.isdigit()}


def _video_id(video: PexelsVideo) -> str:
    return f"{ID_PREFIX}{video.id}"


def _video_ref(video: PexelsVideo) -> VideoRef:
    credit = f"{video.user_name} ({video.user_url})" if video.user_url else video.user_name
    return VideoRef(id=_video_id(video), kind="pexels", uri=video.url, licence=LICENCE,
                    attribution=credit)


def _check_options(
    queries: Sequence[str], n: int, split: str, val_fraction: float, per_page: int,
    max_bytes: int, time_limit_s: float,
) -> None:
    if isinstance(queries, str):
        raise ValueError(f"queries must be a list of strings, got the string {queries!r}")
    if any(not q.strip() for q in queries):
        raise ValueError(f"queries must be non-empty strings, got {list(queries)!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    check_split(split, val_fraction)
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be in 1..{MAX_PER_PAGE}, got {per_page!r}")
    if max_bytes <= 0 or time_limit_s <= 0:
        raise ValueError(f"max_bytes and time_limit_s must be > 0, got {max_bytes}, "
                         f"{time_limit_s}")
