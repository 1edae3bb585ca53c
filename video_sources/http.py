"""Download an HTTP body into memory, capped in size and time; nothing is written to disk.

Shared by the sources that fetch video over HTTP (`LocalSource` URLs, `PexelsSource` file links).
"""

from __future__ import annotations

import time

import requests
import urllib3

_CHUNK = 1 << 16  # bytes per read at most
# Default limit on one whole download, seconds: 120 s is 200 MB at 13 Mbit/s. A server that
# trickles bytes would otherwise hold a producer forever (requests' timeout is per read).
DEFAULT_TIME_LIMIT_S = 120.0


class DownloadError(Exception):
    """A body that could not be downloaded; the message says why and leaves the URL out
    (callers log the URL once; a requests message would repeat it, query string and all)."""


def download_bytes(
    session: requests.Session,
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> bytes:
    """The whole body of `GET url`, streamed into memory. Redirects are followed.

    The time limit holds even against a server that trickles bytes: every socket read waits at
    most the time left (the socket's timeout shrinks with it), and each read returns what one
    `recv` gives rather than waiting to fill a chunk.

    Args:
        session: the session to send the request with (its headers go with it).
        url: http(s) URL.
        max_bytes: largest body accepted, in bytes; a larger declared Content-Length is refused
            before reading, a longer body is abandoned as soon as it passes the cap.
        timeout_s: requests timeout in seconds, for the connection and for each socket read.
        time_limit_s: wall-clock limit on the whole download in seconds (connecting included);
            None for no limit.

    Raises:
        DownloadError: HTTP error status, timeout, time limit, size cap or a connection error
            (including a connection dropped mid-body).
    """
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    connect_s = timeout_s if time_limit_s is None else min(timeout_s, time_limit_s)
    try:
        with session.get(url, stream=True, timeout=(connect_s, timeout_s)) as response:
            response.raise_for_status()
            return _read_body(response, max_bytes, timeout_s, deadline, time_limit_s)
    except requests.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.response.status_code}") from exc
    except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
        if deadline is not None and time.monotonic() >= deadline:
            raise DownloadError(f"download took over its time limit of {time_limit_s} s") from exc
        raise DownloadError(f"timed out after {timeout_s} s") from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise DownloadError(f"download failed ({type(exc).__name__})") from exc


def _read_body(response: requests.Response, max_bytes: int, timeout_s: float,
               deadline: float | None, limit: float | None) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(f"Content-Length {declared} is over max_bytes={max_bytes}")
    raw = response.raw  # urllib3: read1 returns after one recv, however few bytes came
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    chunks, total = [], 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DownloadError(f"download took over its time limit of {limit} s")
            if sock is not None:
                sock.settimeout(min(timeout_s, left))
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:  # no or wrong Content-Length: stop reading
            raise DownloadError(f"body is over max_bytes={max_bytes}")
        chunks.append(chunk)
