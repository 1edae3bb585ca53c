"""Pexels videos as a `VideoSource`: search, pick a file, download into memory, decode.

Chosen files are downloaded into memory (`video_sources.http`) and decoded there
(`video_sources.decode`); nothing raw touches disk. A JSON-lines manifest (metadata only, never
the key) credits the videographers, as the Pexels guidelines ask, and lets a restarted run skip
the videos it already used.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError, check_decode_options
from video_sources.frames import frames_from_bytes
from video_sources.http import DEFAULT_TIME_LIMIT_S, DownloadError
from video_sources.pexels.client import PexelsApiError, PexelsClient
from video_sources.pexels.wire import MAX_PER_PAGE, PexelsVideo, VideoFile, VideoPage, pick_file
from video_sources.splits import check_shard, check_split, in_id_shard, in_split

logger = logging.getLogger(__name__)

LICENCE = "Pexels License"  # https://www.pexels.com/license/
ID_PREFIX = "pexels-"  # VideoRef.id is "pexels-<Pexels id>"


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
