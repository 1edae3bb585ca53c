"""A minimal client of the Pexels video API (https://www.pexels.com/api/documentation/).

All calls go through one `requests.Session`, with a timeout on every call and the API key only
in the `Authorization` header of API requests (never in a URL, a log line, an exception
message or a repr, and never sent to the hosts that serve the video files). Responses carry
`X-Ratelimit-Limit`, `X-Ratelimit-Remaining` and `X-Ratelimit-Reset` (UNIX time); a 429 may
carry none of them and Pexels documents no `Retry-After`, so the client paces itself as the
quota runs low and backs off with jitter on 429, 5xx and connection errors.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests

from video_sources.http import download_bytes
from video_sources.pexels.key import load_api_key
from video_sources.pexels.wire import MAX_PER_PAGE, VideoPage, parse_page

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.pexels.com"
API_URL_ENV = "PEXELS_API_URL"


class PexelsApiError(RuntimeError):
    """An API request failed: a non-retryable status, or retries exhausted.

    Attributes:
        status: the last HTTP status, or None for a connection error or timeout.
    """

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


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
