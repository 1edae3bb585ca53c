"""Benchmark 9: the pose services, measured side by side in one run on a real video.

    python -m bench.serve --model runs/<run>/export/last.onnx
        [--video ../shared/videos/running_athlete.mp4] [--frames 120] [--rounds 3]
        [--skip-jobs] [--json]

Two real servers (`stream-pose serve http`, subprocesses on 127.0.0.1) are started: one with the
student (`--model`, ONNX Runtime `--threads 1`), one with `--model mediapipe`. The clip's first
`--frames` frames are decoded once. Every client runs in a process of its own
(`bench.serve_clients`), one frame in flight, so no client shares a GIL with a server, the
benchmark or another client. Each round, in turn:
1. `/pose/hybrid` (JSON, base64 JPEG of the full frame, quality 90, encoded beforehand), one
   session: student server, then MediaPipe server (frames/s, client latency per frame, and the
   server's own decode / pose times);
2. in-process: a `serve.session.Session` on the decoded frames, no HTTP, no JPEG;
3. the frames resized and centre-cropped to exactly 640x480, JPEG-encoded by the client as it
   sends each (`serve.client.encode_jpeg`, quality 85, timed): `WS /ws/pose` to the student
   server, then to the MediaPipe server, then `POST /pose/frame` (raw JPEG body) to the student.
Then 4 concurrent sessions (4 client processes started together) against the student server, on
`/pose/hybrid` and on `WS /ws/pose`; and, unless `--skip-jobs`, whole-video jobs:
`/process_video_async` on the video vs `serve.predict.predict_video` in-process on the same file
with the same model (both decode the file and write their JSON).

Transport per frame is the client's time per frame (JPEG encoding, when the client encodes, plus
the round trip) less the server's pose time: HTTP or WS, JSON (and base64) and image decoding.

Targets (issue 11): student endpoint >= 2x the MediaPipe endpoint in frames/s; HTTP + image
decoding < 35% of the student-backed time per frame; with 4 concurrent sessions p95 latency
< 4x the single-session p50; an async job's frames/s within 15% of predict's. Issue 19, at
640x480: the same frames/s, transport and latency targets for `WS /ws/pose`, and the transport
target for `POST /pose/frame`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import DEFAULT_VIDEO, machine_info
from bench.serve_clients import run_clients
from bench.server import Server

CONCURRENT = 4
THREADS = 1  # the student server's --threads
SIZE = (640, 480)  # width, height of the WS and /pose/frame frames


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _frames(video: Path, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Decoded RGB frames and their base64 JPEGs (the client's encoding, done beforehand)."""
    from serve.images import encode_jpeg_base64
    from video_sources.decode import decode_video_bytes

    images = [img for _, _, img in decode_video_bytes(video.read_bytes(), max_frames=n)]
    return images, [encode_jpeg_base64(img) for img in images]


def _fit(image: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """`image` scaled to cover `size` (width, height; area filter), centre-cropped to exactly it."""
    (w, h), (ih, iw) = size, image.shape[:2]
    s = max(w / iw, h / ih)
    rw, rh = max(w, round(iw * s)), max(h, round(ih * s))
    scaled = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
    x, y = (rw - w) // 2, (rh - h) // 2
    return np.ascontiguousarray(scaled[y:y + h, x:x + w])


def _client_inputs(tmp: Path, images: list[np.ndarray], jpegs: list[str]) -> dict[str, Path]:
    """The clients' frames as files: `hybrid` base64 JPEGs (.json), 640x480 RGB (.npy)."""
    paths = {"hybrid": tmp / "hybrid_base64.json", "small": tmp / "frames_640x480.npy"}
    paths["hybrid"].write_text(json.dumps(jpegs))
    np.save(paths["small"], np.stack([_fit(img) for img in images]))
    return paths


def _one(kind: str, server: Server, frames: Path, session: str) -> dict[str, Any]:
    """One client process, one session: `bench.serve_clients.measure`'s measurements."""
    return run_clients(kind, server.url, frames, [session])[0]


def _in_process(model: str, images: list[np.ndarray]) -> float:
    """frames/s of a `Session` on decoded frames, no HTTP."""
    from serve.engine import Engine

    session = Engine(model).new_session()
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        session.step(img, frame_number=i)
    fps = len(images) / (time.perf_counter() - t0)
    session.close()
    return fps


def _job(server, video: Path) -> dict[str, float]:
    """An async job on `video`: frames/s in the worker, and from submit to complete."""
    t0 = time.perf_counter()
    with open(video, "rb") as fh:
        job_id = server.post("/process_video_async", files={"video": fh}).json()["job_id"]
    status = server.wait_for(f"/job_status/{job_id}", ("complete", "failed"), timeout_s=1800)
    if status["status"] != "complete":
        raise RuntimeError(f"job failed: {status['error']}")
    wall = time.perf_counter() - t0
    frames = status["result"]["frames"]
    return {"fps": frames / status["result"]["processing_time"], "fps_end_to_end": frames / wall,
            "frames": frames}


def _predict(model: str, video: Path) -> float:
    """frames/s of `serve.predict.predict_video` on the same file (JSON lines to memory), with
    frames downscaled as the server downscales them (`Engine.max_side`)."""
    from serve.engine import Engine
    from serve.predict import predict_video

    max_side = Engine(model).max_side
    t0 = time.perf_counter()
    summary = predict_video(Path(model), video, io.StringIO(), max_side=max_side)
    return summary.frames / (time.perf_counter() - t0)


def run(model: str, video: Path, n_frames: int, rounds: int,
        jobs: bool = True) -> dict[str, Any]:
    """Every measurement of the module docstring; returns the report dict."""
    images, jpegs = _frames(video, n_frames)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        seq, conc, job_runs, predicts = _measure(model, video, images, jpegs, rounds, jobs,
                                                 Path(tmp))
    return {"model": model, "video": str(video), "frames": len(images),
            "machine": machine_info(), "cores": _cores_note(),
            **_report(seq, conc, job_runs, predicts)}


def _measure(model: str, video: Path, images: list[np.ndarray], jpegs: list[str], rounds: int,
             jobs: bool, tmp: Path) -> tuple[dict, dict, list, list]:
    """The servers, the clients' rounds, the concurrent sessions and the jobs; raw results."""
    inputs = _client_inputs(tmp, images, jpegs)
    student = Server(tmp / "student", "--model", model, "--threads", str(THREADS))
    teacher = Server(tmp / "teacher", "--model", "mediapipe")
    try:
        for server in (student, teacher):
            server.get("/warmup")
        seq = {k: [] for k in ("student", "mediapipe", "in_process", "ws_student",
                               "ws_mediapipe", "frame_student")}
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}: /pose/hybrid student, mediapipe; in-process; "
                  "640x480 WS student, mediapipe; /pose/frame student", file=sys.stderr)
            seq["student"].append(_one("hybrid", student, inputs["hybrid"], f"s{r}"))
            seq["mediapipe"].append(_one("hybrid", teacher, inputs["hybrid"], f"m{r}"))
            seq["in_process"].append(_in_process(model, images))
            seq["ws_student"].append(_one("ws", student, inputs["small"], f"ws{r}"))
            seq["ws_mediapipe"].append(_one("ws", teacher, inputs["small"], f"wm{r}"))
            seq["frame_student"].append(_one("frame", student, inputs["small"], f"f{r}"))
        print(f"{CONCURRENT} concurrent sessions: /pose/hybrid, WS", file=sys.stderr)
        sessions = [f"c{k}" for k in range(CONCURRENT)]
        conc = {"hybrid": run_clients("hybrid", student.url, inputs["hybrid"], sessions),
                "ws": run_clients("ws", student.url, inputs["small"], sessions)}
        job_runs, predicts = [], []
        for r in range(max(1, rounds - 1) if jobs else 0):
            print(f"job round {r + 1}: async job, predict", file=sys.stderr)
            job_runs.append(_job(student, video))
            predicts.append(_predict(model, video))
    finally:
        student.stop()
        teacher.stop()
    return seq, conc, job_runs, predicts


def _cores_note() -> str:
    """How the machine's cores were shared while measuring."""
    return (f"{os.cpu_count()} logical cores shared by the server under test (student: ONNX "
            f"Runtime --threads {THREADS}; MediaPipe: its own threads; the other server idles) "
            f"and its client processes (1, or {CONCURRENT} for the concurrent rows); the "
            "in-process session and predict run alone in the benchmark's process")


def _per_frame(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean ms per frame over every frame of `runs`; `client` = encode + round trip, and
    `transport` = client - pose (means: they add up to the frames/s)."""
    ms = {k: statistics.fmean(v for r in runs for v in r[f"{k}_ms"])
          for k in ("encode", "round_trip", "decode", "pose")}
    ms["client"] = ms["encode"] + ms["round_trip"]
    ms["transport"] = ms["client"] - ms["pose"]
    return ms


def _latencies(runs: list[dict[str, Any]]) -> list[float]:
    """Client latency per frame (ms): its JPEG encoding (if the client encodes) + round trip."""
    return [e + t for r in runs for e, t in zip(r["encode_ms"], r["round_trip_ms"])]


def _latency(single: list[dict[str, Any]], concurrent: list[dict[str, Any]]) -> dict[str, float]:
    one, four = _latencies(single), _latencies(concurrent)
    return {"p50_1": _percentile(one, 50), "p95_1": _percentile(one, 95),
            "p50_4": _percentile(four, 50), "p95_4": _percentile(four, 95)}


def _fps(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["fps"] for r in runs)


def _report(seq, conc, jobs, predicts) -> dict[str, Any]:
    """The measurements' figures, ratios and targets (`run` adds model, video and machine)."""
    fps_s, fps_m = _fps(seq["student"]), _fps(seq["mediapipe"])
    ws_s, ws_m = _fps(seq["ws_student"]), _fps(seq["ws_mediapipe"])
    hybrid, ws, frame = (_per_frame(seq[k]) for k in ("student", "ws_student", "frame_student"))
    overhead = 1 - hybrid["pose"] / hybrid["client"]
    ws_share, frame_share = ws["transport"] / ws["client"], frame["transport"] / frame["client"]
    lat, ws_lat = _latency(seq["student"], conc["hybrid"]), _latency(seq["ws_student"], conc["ws"])
    rep = {
        "hybrid_fps": {"student": fps_s, "mediapipe": fps_m,
                       "in_process": statistics.median(seq["in_process"])},
        "student_over_mediapipe": fps_s / fps_m,
        "per_frame_ms": {"client": hybrid["client"], "decode": hybrid["decode"],
                         "pose": hybrid["pose"], "http_json_base64":
                             hybrid["client"] - hybrid["decode"] - hybrid["pose"]},
        "http_and_decode_share": overhead,
        "latency_ms": lat, "p95_4_over_p50_1": lat["p95_4"] / lat["p50_1"],
        "frame_size": list(SIZE),
        "jpeg_kb": statistics.fmean(v for r in seq["ws_student"] for v in r["frame_bytes"]) / 1024,
        "ws_fps": {"student": ws_s, "mediapipe": ws_m},
        "ws_student_over_mediapipe": ws_s / ws_m,
        "frame_fps": {"student": _fps(seq["frame_student"])},
        "ws_per_frame_ms": ws, "frame_per_frame_ms": frame,
        "ws_transport_share": ws_share, "frame_transport_share": frame_share,
        "ws_latency_ms": ws_lat, "ws_p95_4_over_p50_1": ws_lat["p95_4"] / ws_lat["p50_1"],
        **_jobs_report(jobs, predicts),
    }
    rep["targets"] = {
        "student endpoint >= 2x mediapipe endpoint": fps_s / fps_m >= 2,
        "HTTP + decoding < 35% of the student time per frame": overhead < 0.35,
        "4 sessions p95 < 4x 1 session p50": rep["p95_4_over_p50_1"] < 4,
        "WS 640x480: student >= 2x mediapipe": ws_s / ws_m >= 2,
        "WS 640x480: transport < 35% of the student time per frame": ws_share < 0.35,
        "/pose/frame 640x480: transport < 35% of the student time per frame": frame_share < 0.35,
        "WS 640x480: 4 sessions p95 < 4x 1 session p50": rep["ws_p95_4_over_p50_1"] < 4,
    }
    if jobs:
        rep["targets"]["async job within 15% of predict"] = rep["job_over_predict"] >= 0.85
    return rep


def _jobs_report(jobs: list[dict[str, float]], predicts: list[float]) -> dict[str, Any]:
    """The async job vs predict figures; None each with `--skip-jobs`."""
    if not jobs:
        return dict.fromkeys(("job_fps", "job_fps_end_to_end", "predict_fps", "job_over_predict"))
    med = statistics.median
    job_fps, predict_fps = med(j["fps"] for j in jobs), med(predicts)
    return {"job_fps": job_fps, "job_fps_end_to_end": med(j["fps_end_to_end"] for j in jobs),
            "predict_fps": predict_fps, "job_over_predict": job_fps / predict_fps}


def print_report(rep: dict[str, Any]) -> None:
    """The report as a terminal table."""
    f, ms, lat = rep["hybrid_fps"], rep["per_frame_ms"], rep["latency_ms"]
    print(f"video {rep['video']} ({rep['frames']} frames), model {rep['model']}")
    print(f"/pose/hybrid frames/s: student {f['student']:.1f}, mediapipe {f['mediapipe']:.1f} "
          f"-> {rep['student_over_mediapipe']:.2f}x; in-process session {f['in_process']:.1f}")
    print(f"student per frame (mean ms): client {ms['client']:.1f} = decode {ms['decode']:.1f}"
          f" + pose {ms['pose']:.1f} + HTTP/JSON/base64 {ms['http_json_base64']:.1f}; "
          f"HTTP + decoding {100 * rep['http_and_decode_share']:.0f}%")
    print(f"latency ms: 1 session p50 {lat['p50_1']:.1f} p95 {lat['p95_1']:.1f}; "
          f"{CONCURRENT} sessions p50 {lat['p50_4']:.1f} p95 {lat['p95_4']:.1f} "
          f"-> p95(4)/p50(1) {rep['p95_4_over_p50_1']:.2f}")
    _print_small(rep)
    if rep["job_fps"] is not None:
        print(f"whole video: async job {rep['job_fps']:.1f} frames/s (end to end "
              f"{rep['job_fps_end_to_end']:.1f}), predict {rep['predict_fps']:.1f} -> "
              f"{rep['job_over_predict']:.2f}")
    print(f"cores: {rep['cores']}")
    for name, ok in rep["targets"].items():
        print(f"  target {name}: {'yes' if ok else 'NO'}")


def _print_small(rep: dict[str, Any]) -> None:
    """The 640x480 rows: WS and raw /pose/frame."""
    w, h = rep["frame_size"]
    ws, lat = rep["ws_fps"], rep["ws_latency_ms"]
    print(f"{w}x{h} (JPEG {rep['jpeg_kb']:.0f} kB): WS frames/s student {ws['student']:.1f}, "
          f"mediapipe {ws['mediapipe']:.1f} -> {rep['ws_student_over_mediapipe']:.2f}x; "
          f"/pose/frame student {rep['frame_fps']['student']:.1f}")
    for name, key in (("WS", "ws"), ("/pose/frame", "frame")):
        ms = rep[f"{key}_per_frame_ms"]
        print(f"  {name} student per frame (mean ms): client {ms['client']:.1f} = encode "
              f"{ms['encode']:.1f} + round trip {ms['round_trip']:.1f} (server decode "
              f"{ms['decode']:.1f}, pose {ms['pose']:.1f}); transport "
              f"{100 * rep[f'{key}_transport_share']:.0f}%")
    print(f"  WS latency ms (encode + round trip): 1 session p50 {lat['p50_1']:.1f} p95 "
          f"{lat['p95_1']:.1f}; {CONCURRENT} sessions p50 {lat['p50_4']:.1f} p95 "
          f"{lat['p95_4']:.1f} -> p95(4)/p50(1) {rep['ws_p95_4_over_p50_1']:.2f}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="the student to serve: an exported .onnx (serve.export) or a .ckpt")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="default: %(default)s")
    p.add_argument("--frames", type=int, default=120,
                   help="frames sent per session and pass (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    p.add_argument("--skip-jobs", action="store_true",
                   help="leave out the async job vs predict rows (the slowest part)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if not Path(args.model).is_file() or not args.video.is_file():
        print(f"error: need an existing --model and --video, got {args.model}, {args.video}",
              file=sys.stderr)
        return 2
    rep = run(args.model, args.video, args.frames, args.rounds, jobs=not args.skip_jobs)
    print(json.dumps(rep, indent=1, default=float) if args.json else "", end="")
    if not args.json:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
