"""The client side of benchmark 9 (`bench.serve`): each client a process of its own.

    python -m bench.serve_clients KIND URL FRAMES SESSION

KIND is how one session sends its frames to the server at URL (`http://host:port`), one frame in
flight (send, wait for the answer, send the next):
- `hybrid`: `POST /pose/hybrid`, FRAMES a JSON list of base64 JPEGs encoded beforehand;
- `frame`: `POST /pose/frame` with the raw JPEG as the body, FRAMES a `.npy` of `[N, H, W, 3]`
  uint8 RGB frames, each JPEG-encoded by the client when it is sent (`serve.client.encode_jpeg`);
- `ws`: `WS /ws/pose` (one connection), FRAMES as for `frame`.
SESSION names the server-side session (`X-Session-Id`; a WS connection is its own session).

The client loads its frames and connects, prints `ready`, waits for a line on stdin (so that
several clients start at once), sends every frame and prints one JSON line: `fps` (frames / s of
the whole loop) and per-frame lists `encode_ms` (the client's JPEG encoding; 0 for `hybrid`),
`round_trip_ms` (request or message sent to answer received), `decode_ms` and `pose_ms` (the
server's own `timings_ms`) and `frame_bytes` (the image as sent; base64 text for `hybrid`).
`run_clients` starts them from the benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import requests

from serve.client import PoseStream, encode_jpeg, post_frame

TIMEOUT_S = 900.0  # a whole client run, frames included


def run_clients(kind: str, url: str, frames: Path, sessions: list[str]) -> list[dict[str, Any]]:
    """One client process per session, all started together; their measurements, in order.

    Raises:
        RuntimeError: a client failed or did not report (with its stderr).
    """
    cmd = [sys.executable, "-m", "bench.serve_clients", kind, url, str(frames)]
    procs = [subprocess.Popen([*cmd, s], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
             for s in sessions]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind} client not ready: {p.communicate()[1][-3000:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [_result(kind, p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _result(kind: str, proc: subprocess.Popen) -> dict[str, Any]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} client exited {proc.returncode}: {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _hybrid_sender(url: str, session: str) -> Callable[[str, int], dict]:
    http = requests.Session()

    def send(b64: str, number: int) -> dict:
        r = http.post(f"{url}/pose/hybrid", json={"image_base64": b64, "frame_number": number},
                      headers={"X-Session-Id": session}, timeout=60)
        r.raise_for_status()
        return r.json()

    return send


def _frame_sender(url: str, session: str) -> Callable[[bytes, int], dict]:
    http = requests.Session()
    return lambda jpeg, number: post_frame(url, jpeg, number, session, http=http)


def _ws_sender(url: str, session: str) -> Callable[[bytes, int], dict]:
    """`session` is unused: the connection is the session."""
    stream = PoseStream("ws://" + url.split("://", 1)[1] + "/ws/pose")

    def send(jpeg: bytes, number: int) -> dict:
        answer = stream.pose(jpeg)
        if answer["type"] != "pose":
            raise RuntimeError(f"frame {number}: {answer}")
        return answer

    return send


SENDERS = {"hybrid": _hybrid_sender, "frame": _frame_sender, "ws": _ws_sender}


def measure(kind: str, url: str, frames: Any, session: str,
            start: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Send every frame of one session, one in flight; the measurements of the module docstring.

    Args:
        kind: one of `SENDERS`.
        url: the server, `http://host:port`.
        frames: base64 JPEG strings (`hybrid`) or `[H, W, 3]` uint8 RGB frames (`frame`, `ws`).
        session: the server-side session id (`hybrid`, `frame`).
        start: called once connected, before the first frame (waits for the start signal).
    """
    send = SENDERS[kind](url, session)
    encode = (lambda b64: b64) if kind == "hybrid" else encode_jpeg
    rows: dict[str, list[float]] = {k: [] for k in ("encode_ms", "round_trip_ms", "decode_ms",
                                                    "pose_ms", "frame_bytes")}
    start()
    t_start = time.perf_counter()
    for number, frame in enumerate(frames):
        t0 = time.perf_counter()
        payload = encode(frame)
        t1 = time.perf_counter()
        timings = send(payload, number)["timings_ms"]
        t2 = time.perf_counter()
        for key, value in (("encode_ms", 1000 * (t1 - t0)), ("round_trip_ms", 1000 * (t2 - t1)),
                           ("decode_ms", timings["decode"]), ("pose_ms", timings["pose"]),
                           ("frame_bytes", len(payload))):
            rows[key].append(value)
    return {"fps": len(frames) / (time.perf_counter() - t_start), **rows}


def _load(kind: str, path: Path) -> Any:
    """The frames, in memory (a `.npy` read whole: no page faults while timing)."""
    return json.loads(path.read_text()) if kind == "hybrid" else np.load(path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: the protocol of the module docstring."""
    p = argparse.ArgumentParser(prog="python -m bench.serve_clients",
                                description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=sorted(SENDERS))
    p.add_argument("url", help="the server, http://host:port")
    p.add_argument("frames", type=Path, help=".json of base64 JPEGs (hybrid), else .npy of RGB")
    p.add_argument("session", help="server-side session id (X-Session-Id)")
    args = p.parse_args(argv)

    def start() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    frames = _load(args.kind, args.frames)
    print(json.dumps(measure(args.kind, args.url, frames, args.session, start)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
