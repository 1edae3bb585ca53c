"""Download an HTTP body into memory, capped in size and time; nothing is written to disk.

Shared by the sources that fetch video over HTTP (`LocalSource` URLs, `PexelsSource` file links).
"""

from __future__ import annotations

import time

import requests

_CHUNK = 1 << 16  # bytes per read: small enough that the time limit is checked often


class DownloadError(Exception):
    """A body that could not be downloaded; the message says why and leaves the URL out
    (callers log the URL once; a requests message would repeat it, query string and all)."""


def download_bytes(
    session: requests.Session,
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    time_limit_s: float | None = None,
) -> bytes:
    """The whole body of `GET url`, streamed into memory. Redirects are followed.

    Args:
        session: the session to send the request with (its headers go with it).
        url: http(s) URL.
        max_bytes: largest body accepted, in bytes; a larger declared Content-Length is refused
            before reading, a longer body is abandoned as soon as it passes the cap.
        timeout_s: requests timeout in seconds, for the connection and for each socket read.
        time_limit_s: wall-clock limit on the whole download in seconds (a server trickling
            bytes never trips the per-read timeout); None for no limit.

    Raises:
        DownloadError: HTTP error status, timeout, time limit, size cap or a connection error
            (including a connection dropped mid-body).
    """
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    try:
        with session.get(url, stream=True, timeout=timeout_s) as response:
            response.raise_for_status()
            return _read_body(response, max_bytes, deadline, time_limit_s)
    except requests.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.response.status_code}") from exc
    except requests.Timeout as exc:
        raise DownloadError(f"timed out after {timeout_s} s") from exc
    except requests.RequestException as exc:
        raise DownloadError(f"download failed ({type(exc).__name__})") from exc


def _read_body(
    response: requests.Response, max_bytes: int, deadline: float | None, limit: float | None
) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(f"Content-Length {declared} is over max_bytes={max_bytes}")
    chunks, total = [], 0
    for chunk in response.iter_content(_CHUNK):
        total += len(chunk)
        if total > max_bytes:  # no or wrong Content-Length: stop reading
            raise DownloadError(f"body is over max_bytes={max_bytes}")
        if deadline is not None and time.monotonic() > deadline:
            raise DownloadError(f"download took over its time limit of {limit} s")
        chunks.append(chunk)
    return b"".join(chunks)
