"""The `stream-pose` command: one entry point for the inference-side tools.

    stream-pose predict --checkpoint X --video Y [--out preds.jsonl] [--overlay out.mp4]
    stream-pose evaluate checkpoint=X [Hydra overrides]   (= python -m serve.evaluate)
    stream-pose export checkpoint=X format=onnx           (= python -m serve.export)
    stream-pose provenance X [--json]                     (the videos X learnt from)
    stream-pose serve stdio [--model M]                   (seed 000: JSON on stdin/stdout)
    stream-pose serve http --api hybrid|tasks [--model M] [--port N] [--video-root DIR]

`predict`, `provenance` and `serve` take argparse options (`--help`); `evaluate` and `export`
are Hydra apps and take overrides. M is an exported `.onnx`, a `.ckpt`, or `mediapipe` /
`comotion`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from stream_pose.runtime import REPO_ROOT

USAGE = __doc__.split("\n\n")[1] + "\n"
EXIT_USAGE, EXIT_ERROR = 2, 1


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "predict":
        from serve.predict import main as predict

        return predict(args)
    if command == "serve":
        return serve_main(args)
    if command in ("evaluate", "export"):
        from serve import evaluate, export

        sys.argv = [f"stream-pose {command}", *args]  # Hydra reads its overrides from argv
        (evaluate if command == "evaluate" else export).main()
        return 0
    if command == "provenance":
        from serve.provenance import main as provenance

        return provenance(args)
    print(f"usage:\n{USAGE}", file=sys.stderr if command not in ("-h", "--help") else sys.stdout)
    return 0 if command in ("-h", "--help") else EXIT_USAGE


def _model_options(p: argparse.ArgumentParser) -> None:
    """The options every serving front-end shares: model, teacher, filtering, gaps."""
    p.add_argument("--model", default="mediapipe",
                   help="an exported student .onnx (fastest), a training .ckpt, or 'mediapipe' / "
                   "'comotion' to serve the teacher alone (default: %(default)s)")
    p.add_argument("--teacher", default="mediapipe",
                   help="the model that boxes people for a student (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of the student (default: %(default)s)")
    p.add_argument("--no-smoothing", action="store_true",
                   help="switch the One Euro filter off (raw per-frame poses)")
    p.add_argument("--min-cutoff", type=float, default=None,
                   help="One Euro filter: cut-off at rest in Hz for 2D (lower: smoother)")
    p.add_argument("--beta", type=float, default=None,
                   help="One Euro filter: speed coefficient for 2D (higher: less lag)")
    p.add_argument("--max-gap", type=int, default=30,
                   help="frames a lost person's pose is predicted from its motion "
                   "(default: %(default)s)")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale frames to this longer side before posing (default: the size "
                   "the student was trained at, else 640; 0: full resolution); answers stay in "
                   "the sent frame's pixels")
    p.add_argument("--fps", type=float, default=30.0,
                   help="frame rate assumed for frames without timestamps (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level, show tracebacks")


def _session_options(args: argparse.Namespace) -> dict:
    from serve.filters import OneEuroConfig
    from serve.session import FILTER_2D

    opts = {"smoothing": not args.no_smoothing, "max_gap": args.max_gap, "fps": args.fps}
    if args.min_cutoff is not None or args.beta is not None:
        opts["filter_2d"] = OneEuroConfig(
            min_cutoff=FILTER_2D.min_cutoff if args.min_cutoff is None else args.min_cutoff,
            beta=FILTER_2D.beta if args.beta is None else args.beta,
            d_cutoff=FILTER_2D.d_cutoff)
    return opts


def build_serve_parser() -> argparse.ArgumentParser:
    """`stream-pose serve stdio|http`."""
    from serve.jobs import JobLimits  # its defaults are the flags' defaults

    p = argparse.ArgumentParser(
        prog="stream-pose serve",
        description="Serve a trained student (or a teacher) through the pose-service interfaces "
        "of ../shared/seeds: JSON over stdin/stdout, or HTTP (/pose/hybrid, video jobs, tasks).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  stream-pose serve stdio --model runs/<run>/export/last.onnx < frames.json\n"
        "  stream-pose serve http --api hybrid --model runs/<run>/export/last.onnx\n"
        "  stream-pose serve http --api tasks --video-root ../shared/videos --port 8000",
    )
    sub = p.add_subparsers(dest="frontend", required=True, metavar="stdio|http")
    stdio = sub.add_parser("stdio", help="seed 000: one JSON request on stdin, JSON on stdout")
    _model_options(stdio)
    stdio.add_argument("--max-frame-mb", type=float, default=20.0,
                       help="largest image (decoded base64 or imagePath file) per frame "
                       "(default: %(default)s)")
    http = sub.add_parser("http", help="seeds 001-003: the HTTP pose services")
    _model_options(http)
    http.add_argument("--api", choices=("hybrid", "tasks"), default="hybrid",
                      help="which seed's /health body and default port (hybrid: 5000, "
                      "tasks: 8000); every route is served either way (default: %(default)s)")
    http.add_argument("--host", default="127.0.0.1",
                      help="interface to listen on (default: %(default)s; 0.0.0.0 for all)")
    http.add_argument("--port", type=int, default=None, help="default: 5000 hybrid, 8000 tasks")
    http.add_argument("--allowed-hosts", default=None,
                      help="comma-separated Host names answered (default: the loopback names "
                      "for a loopback --host, else any; '*' for any). Set STREAM_POSE_TOKEN in "
                      "the environment or .env to require a bearer token")
    http.add_argument("--video-root", type=Path, default=None,
                      help="/process reads video files only under this folder")
    http.add_argument("--data-dir", type=Path, default=REPO_ROOT / "runs" / "serve",
                      help="task database and job outputs (default: %(default)s)")
    http.add_argument("--answer-paths", choices=("absolute", "relative"), default=None,
                      help="server paths in job answers: absolute (the seeds', for clients on "
                      "this machine) or relative to --data-dir / --video-root (default: absolute "
                      "for a loopback --host, else relative); result.urls serves the files")
    http.add_argument("--job-workers", type=int, default=1,
                      help="video job worker processes (default: %(default)s)")
    http.add_argument("--max-queue", type=int, default=8,
                      help="queued jobs before 503 (default: %(default)s)")
    http.add_argument("--max-job-frames", type=int, default=JobLimits.max_frames,
                      help="a video job with more frames fails (default: %(default)s; 0: none)")
    http.add_argument("--max-job-minutes", type=float, default=JobLimits.max_seconds / 60,
                      help="a video job running longer fails (default: %(default)s; 0: none)")
    http.add_argument("--keep-jobs-days", type=float, default=7.0,
                      help="job folders of tasks finished longer ago are removed "
                      "(default: %(default)s; 0: kept)")
    http.add_argument("--max-upload-mb", type=float, default=200.0,
                      help="largest video upload (default: %(default)s)")
    http.add_argument("--max-frame-mb", type=float, default=20.0,
                      help="largest /pose/hybrid, /pose/frame or /process body, and largest "
                      "/ws/pose frame (default: %(default)s)")
    http.add_argument("--body-timeout-s", type=float, default=30.0,
                      help="a request body that stops arriving for this long is answered 408 "
                      "(default: %(default)s)")
    http.add_argument("--max-sessions", type=int, default=32,
                      help="live /pose/hybrid sessions, and live /ws/pose streams "
                      "(default: %(default)s each)")
    return p


def serve_main(argv: Sequence[str]) -> int:
    """`stream-pose serve ...`; returns the exit status (errors are one line on stderr)."""
    args = build_serve_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from labeler.base import TeacherUnavailableError
    from serve.engine import Engine, ModelLoadError

    options = _session_options(args)
    try:
        if args.frontend == "stdio":
            from serve import stdio

            def engine_factory() -> Engine:
                engine = Engine(args.model, teacher=args.teacher, threads=args.threads,
                                max_side=args.max_side, **options)
                engine.check_teacher()
                return engine

            return stdio.run(sys.stdin, engine_factory=engine_factory,
                             max_image_bytes=int(args.max_frame_mb * 1024 * 1024))
        return _serve_http(args, options)
    except (ModelLoadError, TeacherUnavailableError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _serve_http(args: argparse.Namespace, options: dict) -> int:
    import uvicorn

    from serve.engine import Engine
    from serve.access import (TOKEN_ENV, default_allowed_hosts, is_loopback, load_token,
                               split_tokens, uvicorn_log_config)
    from serve.http import DEFAULT_PORTS, ServerConfig, create_app
    from serve.jobs import JobLimits

    # fail fast, before binding the port: a model or teacher that cannot run is one line
    Engine(args.model, teacher=args.teacher, threads=args.threads).check_teacher()
    cfg = ServerConfig(api=args.api, model=args.model, teacher=args.teacher, threads=args.threads,
                       max_side=args.max_side,
                       data_dir=args.data_dir, video_root=args.video_root,
                       max_upload_mb=args.max_upload_mb, max_frame_mb=args.max_frame_mb,
                       max_queue=args.max_queue,
                       job_limits=JobLimits(args.max_job_frames, 60 * args.max_job_minutes),
                       job_workers=args.job_workers, max_sessions=args.max_sessions,
                       session_options=options, token=load_token(),
                       body_timeout_s=args.body_timeout_s, keep_jobs_days=args.keep_jobs_days,
                       allowed_hosts=(args.allowed_hosts.split(",") if args.allowed_hosts
                                      else default_allowed_hosts(args.host)),
                       answer_paths=args.answer_paths or ("absolute" if is_loopback(args.host)
                                                          else "relative"))
    if cfg.token:
        logging.getLogger(__name__).info("bearer token required (%s: %d tenant(s))", TOKEN_ENV,
                                         len(split_tokens(cfg.token)))
    port = DEFAULT_PORTS[args.api] if args.port is None else args.port
    # a websocket message over the frame limit is refused by the protocol layer (close 1009)
    # before it is buffered whole; the app checks the exact limit below that
    uvicorn.run(create_app(cfg), host=args.host, port=port, log_level="info",
                log_config=uvicorn_log_config(),
                timeout_keep_alive=30, ws_max_size=int(args.max_frame_mb * 1024 * 1024) + 65536)
    return 0


if __name__ == "__main__":
    sys.exit(main())
