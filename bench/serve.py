"""Benchmark 9: the pose services, measured side by side in one run on a real video.

    python -m bench.serve --model runs/<run>/export/last.onnx
        [--video ../shared/videos/running_athlete.mp4] [--frames 120] [--rounds 3] [--json]

Two real servers (`stream-pose serve http`, subprocesses on 127.0.0.1) are started: one with the
student (`--model`), one with `--model mediapipe`. Frames are decoded once and JPEG-encoded
(quality 90, base64) beforehand, as a client sends them. Each round, in turn:
1. `/pose/hybrid`, one session, sequential requests: student server, then MediaPipe server
   (frames/s, client latency per frame, and the server's own decode / pose times);
2. in-process: a `serve.session.Session` on the decoded frames, no HTTP, no JPEG.
Then 4 concurrent sessions (4 client threads, one session each) against the student server, and
whole-video jobs: `/process_video_async` on the video vs `serve.predict.predict_video` in-process
on the same file with the same model (both decode the file and write their JSON).

Targets (issue 11): student endpoint >= 2x the MediaPipe endpoint in frames/s; HTTP + image
decoding < 35% of the student-backed time per frame; with 4 concurrent sessions p95 latency
< 4x the single-session p50; an async job's frames/s within 15% of predict's.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DEFAULT_VIDEO, machine_info
from bench.server import Server

CONCURRENT = 4


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _frames(video: Path, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Decoded RGB frames and their base64 JPEGs (the client's encoding, done beforehand)."""
    from serve.images import encode_jpeg_base64
    from video_sources.decode import decode_video_bytes

    images = [img for _, _, img in decode_video_bytes(video.read_bytes(), max_frames=n)]
    return images, [encode_jpeg_base64(img) for img in images]


def _sequential(server, jpegs: list[str], session: str) -> dict[str, Any]:
    """One session, one request at a time; frames/s, client latency, server timings."""
    latencies, decode, pose = [], [], []
    t0 = time.perf_counter()
    for i, b64 in enumerate(jpegs):
        t = time.perf_counter()
        r = server.post("/pose/hybrid", json={"image_base64": b64, "frame_number": i},
                        headers={"X-Session-Id": session})
        latencies.append(1000 * (time.perf_counter() - t))
        r.raise_for_status()
        timings = r.json()["timings_ms"]
        decode.append(timings["decode"])
        pose.append(timings["pose"])
    seconds = time.perf_counter() - t0
    return {"fps": len(jpegs) / seconds, "latency_ms": latencies, "decode_ms": decode,
            "pose_ms": pose}


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


def _concurrent(server, jpegs: list[str], tag: str) -> list[float]:
    """Latencies (ms) of `CONCURRENT` sessions sending their frames at once."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        mine = _sequential(server, jpegs, f"{tag}-{k}")["latency_ms"]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


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


def run(model: str, video: Path, n_frames: int, rounds: int) -> dict[str, Any]:
    """Every measurement of the module docstring; returns the report dict."""
    images, jpegs = _frames(video, n_frames)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    student = Server(tmp / "student", "--model", model)
    teacher = Server(tmp / "teacher", "--model", "mediapipe")
    try:
        for server in (student, teacher):
            server.get("/warmup")
        seq = {"student": [], "mediapipe": [], "in_process": []}
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}: /pose/hybrid student, mediapipe; in-process",
                  file=sys.stderr)
            seq["student"].append(_sequential(student, jpegs, f"s{r}"))
            seq["mediapipe"].append(_sequential(teacher, jpegs, f"m{r}"))
            seq["in_process"].append(_in_process(model, images))
        print(f"{CONCURRENT} concurrent sessions", file=sys.stderr)
        conc = _concurrent(student, jpegs, "c")
        jobs, predicts = [], []
        for r in range(max(1, rounds - 1)):
            print(f"job round {r + 1}: async job, predict", file=sys.stderr)
            jobs.append(_job(student, video))
            predicts.append(_predict(model, video))
    finally:
        student.stop()
        teacher.stop()
    return _report(seq, conc, jobs, predicts, model, video, len(images))


def _report(seq, conc, jobs, predicts, model, video, n) -> dict[str, Any]:
    med = statistics.median
    fps_s = med(x["fps"] for x in seq["student"])
    fps_m = med(x["fps"] for x in seq["mediapipe"])
    fps_in = med(seq["in_process"])
    lat1 = [v for x in seq["student"] for v in x["latency_ms"]]
    mean = statistics.fmean  # per-frame costs as means: they add up to the frames/s
    decode = mean(v for x in seq["student"] for v in x["decode_ms"])
    pose = mean(v for x in seq["student"] for v in x["pose_ms"])
    client = mean(lat1)
    overhead = 1 - pose / client
    p50_1, p95_1 = _percentile(lat1, 50), _percentile(lat1, 95)
    p50_4, p95_4 = _percentile(conc, 50), _percentile(conc, 95)
    job_fps, predict_fps = med(j["fps"] for j in jobs), med(predicts)
    return {
        "model": model, "video": str(video), "frames": n, "machine": machine_info(),
        "hybrid_fps": {"student": fps_s, "mediapipe": fps_m, "in_process": fps_in},
        "student_over_mediapipe": fps_s / fps_m,
        "per_frame_ms": {"client": client, "decode": decode, "pose": pose,
                         "http_json_base64": client - decode - pose},
        "http_and_decode_share": overhead,
        "latency_ms": {"p50_1": p50_1, "p95_1": p95_1, "p50_4": p50_4, "p95_4": p95_4},
        "p95_4_over_p50_1": p95_4 / p50_1,
        "job_fps": job_fps, "job_fps_end_to_end": med(j["fps_end_to_end"] for j in jobs),
        "predict_fps": predict_fps, "job_over_predict": job_fps / predict_fps,
        "targets": {
            "student endpoint >= 2x mediapipe endpoint": fps_s / fps_m >= 2,
            "HTTP + decoding < 35% of the student time per frame": overhead < 0.35,
            "4 sessions p95 < 4x 1 session p50": p95_4 / p50_1 < 4,
            "async job within 15% of predict": job_fps / predict_fps >= 0.85,
        },
    }


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
    print(f"whole video: async job {rep['job_fps']:.1f} frames/s (end to end "
          f"{rep['job_fps_end_to_end']:.1f}), predict {rep['predict_fps']:.1f} -> "
          f"{rep['job_over_predict']:.2f}")
    for name, ok in rep["targets"].items():
        print(f"  target {name}: {'yes' if ok else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="the student to serve: an exported .onnx (serve.export) or a .ckpt")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="default: %(default)s")
    p.add_argument("--frames", type=int, default=120,
                   help="frames sent per /pose/hybrid pass (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="default: %(default)s")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if not Path(args.model).is_file() or not args.video.is_file():
        print(f"error: need an existing --model and --video, got {args.model}, {args.video}",
              file=sys.stderr)
        return 2
    rep = run(args.model, args.video, args.frames, args.rounds)
    print(json.dumps(rep, indent=1, default=float) if args.json else "", end="")
    if not args.json:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
