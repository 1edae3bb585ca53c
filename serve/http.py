"""`stream-pose serve http`: the HTTP pose services of seeds 001, 002 and 003 on one FastAPI app.

    stream-pose serve http --api hybrid --model runs/<run>/export/last.onnx     # port 5000
    stream-pose serve http --api tasks --video-root /data/videos               # port 8000

Routes (both profiles serve all of them; only `/health` differs, as the two seeds' bodies do):
- `GET /health`: hybrid `{status: "ready", models, ready, ...}`; tasks `{status: "healthy",
  timestamp, active_tasks, queued_tasks, total_tasks}`.
- `GET /warmup`: load and run every model once.
- `POST /pose/hybrid` (seed 001): JSON `{image_base64, frame_number, visualize?, session_id?,
  fps?}` -> `serve.schemas.hybrid_response`. The session (tracks, filters) is chosen by the
  `X-Session-Id` header or the `session_id` field ("default" otherwise); a `frame_number` lower
  than the session's last one (a new video) starts a new session under that id.
- `POST /pose/frame?frame_number=&session_id=&fps=`: the same answer for a raw image body
  (`Content-Type: image/jpeg`, no base64, no JSON around it); 415 for another content type.
- `GET /` (the live page) and `WS /ws/pose` (binary frames in, JSON out): `serve.live`.
- `POST /process_video` (seed 002, synchronous) and `/process_video_async` (-> `job_id`):
  multipart `video` file + optional `num_workers`, `batch_size`, `overlay`, `max_side`;
  `GET /job_status/{job_id}`.
- `POST /process` (seed 003): JSON `{video_filename, model?, bboxes_path?, overlay?}`, a file
  under `--video-root`; `GET /status/{task_id}`, `GET /tasks`, `DELETE /tasks/{task_id}` (a queued
  task is cancelled; a processing one runs on, its record is removed).
Errors (`{"detail": "..."}`): 400 bad JSON / base64 / image / video form, 403 a video outside
`--video-root`, 404 unknown job, task or video file, 413 body over the size limit, 415 a
`/pose/frame` body that is not an image type, 422 fields of the wrong type, 503 with
`Retry-After` when the job queue is full.

Nothing raw reaches the disk: request bodies are read into memory (multipart uploads are parsed
with a spool limit above the body limit, so Starlette never rolls them over to a temporary
file), frames are decoded from memory, and only the outputs of jobs are written. Per-session
state lives in this process: with several uvicorn workers, route a session to one worker
(sticky sessions on `X-Session-Id`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serve.engine import Engine
from serve.images import ImageDecodeError, decode_base64_image, decode_image
from serve.jobs import EngineSpec, JobRunner, QueueFullError
from serve.live import add_live_routes
from serve.schemas import hybrid_response
from serve.session import Session
from serve.store import TaskStore, now_iso

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"hybrid": 5000, "tasks": 8000}  # seeds 001/002 and 003
RETRY_AFTER_S = 5
SYNC_POLL_S = 0.05


@dataclass
class ServerConfig:
    """Options of the HTTP app (the CLI's flags).

    Attributes:
        api: "hybrid" (seeds 001/002 `/health`) or "tasks" (seed 003 `/health`).
        model: `.onnx`, `.ckpt`, `mediapipe` or `comotion`.
        teacher: boxes people for a student.
        threads: CPU threads of the student (per process).
        max_side: frames are downscaled to this longer side (`serve.engine.Engine`).
        data_dir: task database and job folders.
        video_root: `/process` serves only files under this folder; None refuses all.
        max_upload_mb: largest video upload; max_frame_mb: largest `/pose/hybrid` body.
        max_queue: queued jobs beyond which submissions get 503.
        job_workers: job worker processes.
        max_sessions: live `/pose/hybrid` sessions; the least recently used is closed beyond.
        session_idle_s: a session unused this long is closed.
        sync_timeout_s: `/process_video` waits this long, then answers with the job id.
        session_options: passed to every `serve.session.Session` (filter, gap, fps).
    """

    api: str = "hybrid"
    model: str = "mediapipe"
    teacher: str = "mediapipe"
    threads: int = 1
    max_side: int | None = None
    data_dir: Path = Path("runs/serve")
    video_root: Path | None = None
    max_upload_mb: float = 200.0
    max_frame_mb: float = 20.0
    max_queue: int = 8
    job_workers: int = 1
    max_sessions: int = 32
    session_idle_s: float = 600.0
    sync_timeout_s: float = 600.0
    session_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.api not in DEFAULT_PORTS:
            raise ValueError(f"--api must be one of {sorted(DEFAULT_PORTS)}, got {self.api!r}")


class HybridRequest(BaseModel):
    """Seed 001's request body (extra fields are ignored, as the seed's server does)."""

    model_config = ConfigDict(extra="ignore")
    image_base64: str
    frame_number: int = Field(default=0, ge=0)
    visualize: bool = False
    session_id: str | None = Field(default=None, max_length=200)
    fps: float | None = Field(default=None, gt=0)


class FrameQuery(BaseModel):
    """The query string of `POST /pose/frame` (the body is the raw image)."""

    model_config = ConfigDict(extra="ignore")
    frame_number: int = Field(default=0, ge=0)
    session_id: str | None = Field(default=None, max_length=200)
    fps: float | None = Field(default=None, gt=0)

    @classmethod
    def from_query(cls, params: Any) -> "FrameQuery":
        """Validated query parameters.

        Raises:
            HTTPException 422: a parameter of the wrong type.
        """
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            raise HTTPException(422, json.loads(exc.json(include_url=False))) from exc


class ProcessRequest(BaseModel):
    """Seed 003's request body."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    video_filename: str
    model: str | None = None
    bboxes_path: str | None = None  # accepted; people are found by the teacher
    overlay: bool = False
    max_side: int | None = Field(default=None, gt=0)


@dataclass
class _SessionEntry:
    session: Session
    lock: threading.Lock
    last_frame: int
    last_used: float


class SessionPool:
    """`/pose/hybrid` sessions by id, each with its lock; bounded and expiring.

    Args:
        engine: makes the sessions.
        max_sessions: beyond this, the least recently used session is closed.
        idle_s: a session unused this long is closed.
    """

    def __init__(self, engine: Engine, max_sessions: int, idle_s: float) -> None:
        self.engine, self.max_sessions, self.idle_s = engine, max_sessions, idle_s
        self._sessions: OrderedDict[str, _SessionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def acquire(self, session_id: str, frame_number: int,
                options: dict[str, Any]) -> tuple[Session, threading.Lock]:
        """The session to answer `frame_number` of `session_id` (a new one on a restart)."""
        with self._lock:
            self._expire()
            entry = self._sessions.get(session_id)
            if entry is not None and frame_number < entry.last_frame:
                logger.info("session %s restarts at frame %d", session_id, frame_number)
                self._close(session_id)
                entry = None
            if entry is None:
                entry = _SessionEntry(self.engine.new_session(**options), threading.Lock(),
                                      frame_number, time.monotonic())
                self._sessions[session_id] = entry
                while len(self._sessions) > self.max_sessions:
                    self._close(next(iter(self._sessions)))
            self._sessions.move_to_end(session_id)
            entry.last_frame, entry.last_used = frame_number, time.monotonic()
            return entry.session, entry.lock

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, e in self._sessions.items() if now - e.last_used > self.idle_s]:
            self._close(sid)

    def _close(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id)
        with entry.lock:
            entry.session.close()

    def close_all(self) -> None:
        """Close every session."""
        with self._lock:
            for sid in list(self._sessions):
                self._close(sid)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with the spool limit above the body limit: a file part
    stays in memory (a SpooledTemporaryFile only rolls over to disk beyond its max size)."""


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, read into memory.

    Raises:
        HTTPException 413: more than `limit_bytes` (by Content-Length, or as it streams).
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise HTTPException(413, f"body of {int(declared)} bytes is over the limit of "
                                 f"{limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise HTTPException(413, f"body is over the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit_bytes: int, model: type[BaseModel]) -> BaseModel:
    """The body as `model`.

    Raises:
        HTTPException: 413 too large, 400 not JSON, 422 wrong fields.
    """
    body = await read_body(request, limit_bytes)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, json.loads(exc.json(include_url=False))) from exc


async def read_video_form(request: Request, limit_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """The `video` file part and the other fields of a multipart form, parsed in memory.

    Raises:
        HTTPException: 413 too large, 400 not multipart or no `video` file.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send the video as multipart/form-data with a 'video' file "
                                 "field (curl -F video=@clip.mp4)")
    body = await read_body(request, limit_bytes)

    async def replay() -> AsyncIterator[bytes]:
        yield body

    parser = InMemoryMultiPartParser(request.headers, replay(), max_files=1, max_fields=50)
    parser.spool_max_size = limit_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"bad multipart form: {exc.message}") from exc
    video = form.get("video")
    if not isinstance(video, UploadFile):
        raise HTTPException(400, "no 'video' file in the form (curl -F video=@clip.mp4)")
    data = await video.read()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return data, video.filename or "upload", fields


def _form_options(fields: dict[str, str]) -> dict[str, Any]:
    """The job options of seed 002's form fields.

    Raises:
        HTTPException 422: a field of the wrong type.
    """
    opts: dict[str, Any] = {}
    for name in ("num_workers", "batch_size", "max_side"):
        if name in fields:
            try:
                opts[name] = int(fields[name])
            except ValueError:
                raise HTTPException(422, f"{name} must be an integer, got {fields[name]!r}")
            if opts[name] < 1:
                raise HTTPException(422, f"{name} must be >= 1, got {opts[name]}")
    if "overlay" in fields:
        opts["overlay"] = fields["overlay"].strip().lower() in ("1", "true", "yes", "on")
    return opts


def job_status(record: dict[str, Any]) -> dict[str, Any]:
    """Seed 002's `/job_status` body ("complete" where the store says "completed")."""
    status = {"completed": "complete"}.get(record["status"], record["status"])
    result = record["result"] or {}
    started = record["started_at"]
    elapsed = None
    if started:
        end = datetime.fromisoformat(record["completed_at"]) if record["completed_at"] else None
        elapsed = ((end or datetime.fromisoformat(now_iso())) -
                   datetime.fromisoformat(started)).total_seconds()
    return {
        "job_id": record["id"], "status": status, "progress": round(record["progress"], 3),
        "elapsed_time": elapsed, "result": record["result"],
        "output_path": result.get("overlay") or result.get("predictions_file"),
        "processing_time": result.get("processing_time"), "error": record["error"],
    }


def task_status(record: dict[str, Any]) -> dict[str, Any]:
    """Seed 003's `/status/{task_id}` body."""
    result = record["result"]
    if result is not None:
        result = {"visualization_dir": result["visualization_dir"],
                  "predictions_dir": result["predictions_dir"],
                  "predictions_file": result["predictions_file"], **result}
    return {
        "task_id": record["id"], "status": record["status"], "video_path": record["video_path"],
        "model": record["model"], "created_at": record["created_at"],
        "started_at": record["started_at"], "completed_at": record["completed_at"],
        "progress": round(record["progress"], 3), "result": result, "error": record["error"],
    }


def create_app(cfg: ServerConfig) -> FastAPI:
    """The app: loads the model at start-up, starts the job workers, stops them at shutdown.

    Raises (at start-up):
        serve.engine.ModelLoadError: the model cannot be served.
    """
    state: dict[str, Any] = {}
    limit_video = int(cfg.max_upload_mb * 1024 * 1024)
    limit_frame = int(cfg.max_frame_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        spec = EngineSpec(cfg.model, cfg.teacher, cfg.threads, cfg.max_side,
                          dict(cfg.session_options))
        engine = spec.build()
        store = TaskStore(Path(cfg.data_dir) / "tasks.sqlite3")
        runner = JobRunner(spec, store, Path(cfg.data_dir), workers=cfg.job_workers,
                           max_queue=cfg.max_queue)
        runner.start()
        state.update(engine=engine, store=store, runner=runner,
                     sessions=SessionPool(engine, cfg.max_sessions, cfg.session_idle_s))
        logger.info("serving %s (%s profile); data in %s", engine.name, cfg.api, cfg.data_dir)
        try:
            yield
        finally:
            state["sessions"].close_all()
            runner.stop()
            store.close()

    app = FastAPI(title="stream-pose", lifespan=lifespan,
                  description="3D human pose from a stream-pose student (or its teacher).")

    add_live_routes(app, state, limit_frame, cfg.max_sessions)

    @app.get("/health")
    def health() -> dict[str, Any]:
        engine, counts = state["engine"], state["store"].counts()
        if cfg.api == "tasks":
            return {"status": "healthy", "timestamp": now_iso(),
                    "active_tasks": counts["processing"], "queued_tasks": counts["queued"],
                    "total_tasks": sum(counts.values())}
        return {"status": "ready", "service": "stream-pose", "models": engine.describe(),
                "ready": True, "model_version": engine.name, "sessions": len(state["sessions"]),
                "job_workers": state["runner"].alive_workers(),
                "job_worker_pids": state["runner"].worker_pids()}

    @app.get("/warmup")
    def warmup() -> dict[str, Any]:
        seconds = state["engine"].warmup()
        return {"status": "warm", "seconds": round(seconds, 3),
                "models": state["engine"].describe()}

    @app.post("/pose/hybrid")
    async def pose_hybrid(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        body = await read_json(request, limit_frame, HybridRequest)
        sid = request.headers.get("x-session-id") or body.session_id or "default"
        options = {"fps": body.fps} if body.fps else {}
        return await run_in_threadpool(_pose_frame, sid, body.frame_number, options, t0,
                                       decode_base64_image, body.image_base64)

    @app.post("/pose/frame")
    async def pose_frame(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (kind.startswith("image/") or kind == "application/octet-stream"):
            raise HTTPException(415, "send the frame as the raw body with Content-Type: "
                                     f"image/jpeg (got {kind or 'none'!r})")
        query = FrameQuery.from_query(request.query_params)
        data = await read_body(request, limit_frame)
        sid = request.headers.get("x-session-id") or query.session_id or "default"
        options = {"fps": query.fps} if query.fps else {}
        return await run_in_threadpool(_pose_frame, sid, query.frame_number, options, t0,
                                       decode_image, data)

    def _pose_frame(sid: str, frame_number: int, options: dict, t0: float,
                    decode: Any, payload: Any) -> JSONResponse:
        t1 = time.perf_counter()
        try:
            decoded = decode(payload, state["engine"].max_side)
        except ImageDecodeError as exc:
            raise HTTPException(400, str(exc)) from exc
        t2 = time.perf_counter()
        session, lock = state["sessions"].acquire(sid, frame_number, options)
        with lock:
            result = session.step(decoded.image, frame_number=frame_number,
                                  original_size=decoded.size)
        t3 = time.perf_counter()
        timings = {"decode": 1000 * (t2 - t1), "pose": 1000 * (t3 - t2),
                   "total": 1000 * (t3 - t0)}
        # A Response skips FastAPI's jsonable_encoder walk over ~30 dicts per person.
        return JSONResponse(hybrid_response(result, state["engine"].name,
                                            processing_ms=timings["total"], timings_ms=timings))

    async def _submit_upload(request: Request) -> dict[str, Any]:
        data, name, fields = await read_video_form(request, limit_video)
        if not data:
            raise HTTPException(400, "the 'video' file is empty")
        params = {"name": name, **_form_options(fields)}
        record = state["store"].create("job", video_path=None, model=cfg.model, params=params)
        _queue(record, data)
        return record

    def _queue(record: dict[str, Any], data: bytes | None) -> None:
        try:
            state["runner"].submit(record, data)
        except QueueFullError as exc:
            raise HTTPException(503, f"{exc}; retry in {RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from exc

    @app.post("/process_video")
    async def process_video(request: Request) -> JSONResponse:
        record = await _submit_upload(request)
        deadline = time.monotonic() + cfg.sync_timeout_s
        store = state["store"]
        while time.monotonic() < deadline:
            record = store.get(record["id"])
            if record["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(SYNC_POLL_S)
        body = job_status(record)
        if record["status"] == "completed":
            frames_file = Path(record["result"]["frames_file"])
            body["frames"] = [json.loads(line) for line in frames_file.read_text().splitlines()]
            return JSONResponse(body)
        if record["status"] == "failed":
            return JSONResponse(body, status_code=422 if "Decode" in (record["error"] or "")
                                else 500)
        return JSONResponse(body, status_code=202)  # still running: poll /job_status

    @app.post("/process_video_async")
    async def process_video_async(request: Request) -> dict[str, Any]:
        record = await _submit_upload(request)
        return {"job_id": record["id"], "status": "queued",
                "message": f"video queued; poll /job_status/{record['id']}"}

    @app.get("/job_status/{job_id}")
    def get_job_status(job_id: str) -> dict[str, Any]:
        return job_status(_record(job_id))

    @app.post("/process")
    async def process(request: Request) -> dict[str, Any]:
        body = await read_json(request, limit_frame, ProcessRequest)
        path = _allowed_video(body.video_filename)
        params = {"name": path.name, "overlay": body.overlay, "max_side": body.max_side,
                  "bboxes_path": body.bboxes_path}
        record = state["store"].create("task", video_path=str(path),
                                       model=body.model or cfg.model, params=params)
        _queue(record, None)
        return {"task_id": record["id"], "status": "queued",
                "message": "Video processing task queued successfully. Use "
                           f"/status/{record['id']} to check progress."}

    def _allowed_video(name: str) -> Path:
        if cfg.video_root is None:
            raise HTTPException(403, "this server has no --video-root: it reads no video file")
        root = Path(cfg.video_root).resolve()
        path = Path(name)
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_relative_to(root):
            raise HTTPException(403, f"{name} is outside the server's --video-root")
        if not path.is_file():
            raise HTTPException(404, f"video not found: {name}")
        return path

    @app.get("/status/{task_id}")
    def status(task_id: str) -> dict[str, Any]:
        return task_status(_record(task_id))

    @app.get("/tasks")
    def tasks() -> dict[str, Any]:
        records = [task_status(r) for r in state["store"].list()]
        return {"tasks": records, "total": len(records)}

    @app.delete("/tasks/{task_id}")
    def delete_task(task_id: str) -> dict[str, Any]:
        record = _record(task_id)
        cancelled = state["store"].cancel(task_id)
        state["store"].delete(task_id)
        return {"task_id": task_id, "status": "deleted", "cancelled": cancelled,
                "message": ("queued task cancelled and deleted" if cancelled else
                            f"task record deleted (it was {record['status']})")}

    def _record(task_id: str) -> dict[str, Any]:
        record = state["store"].get(task_id)
        if record is None:
            raise HTTPException(404, f"unknown task or job {task_id!r}")
        return record

    return app
