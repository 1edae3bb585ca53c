"""Real HTTP servers on 127.0.0.1 for the fault tests: a trickling video host, a fake W&B."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _LocalServer:
    """A threading HTTP server on a free port of 127.0.0.1 with `handler`, run while in a `with`
    block; `stop` is set on exit so that handlers blocked on it return."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = "") -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}{path}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        time.sleep(0)  # let handler threads see the stop


class TrickleServer(_LocalServer):
    """Serves any GET with `Content-Length: declared` and then one byte every `every_s`
    seconds, until the client goes or the server stops. Use as a context manager; `url`."""

    def __init__(self, every_s: float = 1.0, declared: int = 1_000_000):
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                try:
                    while not server.stop.wait(every_s):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                except OSError:  # the client gave up: what the tests want
                    pass

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler, "/slow_clip.mp4")


class FakeWandb(_LocalServer):
    """A W&B server stand-in on 127.0.0.1 for `train.loggers.check_wandb_online`: answers every
    POST with `status` (401: a refused key; 200: a known one), or never (`status=None`, a
    server that accepts connections and hangs). Use as a context manager; `url`."""

    def __init__(self, status: int | None):
        self.stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if status is None:
                    fake.stop.wait(60)
                    return
                body = b'{"data": {"viewer": {"id": "u1"}}}' if status == 200 else b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler)
