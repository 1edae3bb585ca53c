"""A fake Pexels on 127.0.0.1 for tests: the video API's wire format and a file host, in memory.

The JSON follows the fields of the official clients' `Video` and paginated response types
(pexels-javascript `Video`/`Videos`, https://www.pexels.com/api/documentation/#videos).
File links serve the bytes of ../shared/videos, read once into memory, in one of these modes:
`ok` (whole file), `drop` (Content-Length of the whole file, half of it sent, then the
connection closed), `huge` (the file repeated, no Content-Length), `text` (an HTML page) and
`redirect` (302 to the same file, `ok`, on the host name `localhost`) and `trickle` (the
file in 16 KiB pieces, 50 ms apart).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FILE_MODES = ("ok", "drop", "huge", "text", "redirect", "trickle")


class FakePexels:
    """The fake server. Use as a context manager; `base` is its API root URL.

    Attributes:
        results: videos (Pexels JSON dicts) per query; the key None holds `/videos/popular`.
        failures: statuses to answer first, per `(query, page)`, consumed one per request
            (429s carry no rate-limit headers, as Pexels' may not).
        requests: `(path with query string, headers)` of every request received.
        remaining: `X-Ratelimit-Remaining` of the next 200 (decremented per 200).
    """

    def __init__(self, key: str, videos_dir: Path) -> None:
        self.key = key
        self._bytes = {p.name: p.read_bytes() for p in sorted(videos_dir.glob("*.mp4"))}
        self.results: dict[str | None, list[dict]] = {}
        self.failures: dict[tuple[str | None, int], list[int]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.limit, self.remaining, self.reset = 200, 200, int(time.time()) + 3600
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakePexels:
        # A short poll interval: shutdown() waits for it (0.5 s by default) in every test.
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def video(self, video_id: int, name: str, mode: str = "ok", hls_only: bool = False) -> dict:
        """A Pexels `Video` whose mp4 files (an sd at the clip's size, a tiny one) link here."""
        link = f"{self.base}/files/{mode}/{video_id}/{name}"
        hls = _file(video_id * 10 + 9, "hls", None, None, None, f"{self.base}/hls/{video_id}.m3u8")
        files = [hls] if hls_only else [
            _file(video_id * 10, "sd", 960, 540, 25.0, link),
            _file(video_id * 10 + 1, "sd", 320, 180, 25.0, link + "?tiny"),
            hls,
        ]
        return {
            "id": video_id, "width": 960, "height": 540, "duration": 5,
            "url": f"https://www.pexels.com/video/clip-{video_id}/",
            "image": f"https://images.pexels.com/videos/{video_id}/still.jpeg",
            "full_res": None, "tags": [], "avg_color": None,
            "user": {"id": video_id + 1000, "name": f"Maker {video_id}",
                     "url": f"https://www.pexels.com/@maker{video_id}"},
            "video_files": files,
            "video_pictures": [{"id": video_id * 100, "nr": 0,
                                "picture": f"https://images.pexels.com/{video_id}/0.jpg"}],
        }

    def file_requests(self, video_id: int) -> list[dict[str, str]]:
        """Headers of each request for a file of this video (any mode, any host name)."""
        return [h for p, h in self.requests if p.startswith("/files/") and
                p.split("/")[3] == str(video_id)]

    def page(self, query: str | None, page: int, per_page: int) -> dict:
        """The paginated response body for one page."""
        videos = self.results.get(query, [])
        start = (page - 1) * per_page
        q = f"&query={query}" if query is not None else ""
        page_url = f"{self.base}/videos/{'search' if query is not None else 'popular'}/?page={{}}"
        body = {"page": page, "per_page": per_page, "total_results": len(videos),
                "url": f"https://www.pexels.com/search/videos/{query}/",
                "videos": videos[start:start + per_page]}
        if start + per_page < len(videos):
            body["next_page"] = page_url.format(page + 1) + f"&per_page={per_page}{q}"
        if page > 1:
            body["prev_page"] = page_url.format(page - 1) + f"&per_page={per_page}{q}"
        return body

    def file_body(self, name: str) -> bytes:
        return self._bytes[name]


def _file(file_id, quality, width, height, fps, link) -> dict:
    return {"id": file_id, "quality": quality, "file_type": "video/mp4", "width": width,
            "height": height, "fps": fps, "link": link}


def _handler(fake: FakePexels) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            fake.requests.append((self.path, dict(self.headers)))
            url = urlparse(self.path)
            if url.path.startswith("/files/"):
                self._file(*url.path.split("/")[2:5])
            elif url.path in ("/videos/search", "/videos/popular"):
                self._api(url.path, parse_qs(url.query))
            else:
                self.send_error(404)

        def _api(self, path, params):
            if self.headers.get("Authorization") != fake.key:
                return self._json(401, {"error": "Authorization field missing"}, quota=False)
            query = params["query"][0] if path.endswith("search") else None
            page, per_page = int(params.get("page", ["1"])[0]), int(params["per_page"][0])
            pending = fake.failures.get((query, page))
            if pending:
                return self._json(pending.pop(0), {"error": "scripted failure"}, quota=False)
            fake.remaining -= 1
            self._json(200, fake.page(query, page, per_page), quota=True)

        def _json(self, status, body, quota):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if quota:
                self.send_header("X-Ratelimit-Limit", str(fake.limit))
                self.send_header("X-Ratelimit-Remaining", str(fake.remaining))
                self.send_header("X-Ratelimit-Reset", str(fake.reset))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, mode, video_id, name):
            if mode == "redirect":
                self.send_response(302)
                target = f"http://localhost:{fake.port}/files/ok/{video_id}/{name}"
                self.send_header("Location", target)
                self.end_headers()
                return
            body = fake.file_body(name) if mode != "text" else b"<html>Not a video</html>"
            self.send_response(200)
            if mode != "huge":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if mode == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                if mode == "trickle":
                    for start in range(0, len(body), 1 << 14):
                        self.wfile.write(body[start:start + (1 << 14)])
                        time.sleep(0.05)
                    return
                for _ in range(8 if mode == "huge" else 1):
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up past its cap: expected

        def log_message(self, *args):  # keep the test output clean
            pass

    return Handler
