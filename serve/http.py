"""`stream-pose serve http`: the HTTP pose services of seeds 001, 002 and 003 on one FastAPI app.

    stream-pose serve http --api hybrid --model runs/<run>/export/last.onnx     # port 5000
    stream-pose serve http --api tasks --video-root /data/videos               # port 8000

Routes (both profiles serve all of them; only `/health` differs, as the two seeds' bodies do):
- `GET /health`: hybrid `{status: "ready", models, ready, ...}`; tasks `{status: "healthy",
  timestamp, active_tasks, queued_tasks, total_tasks}`.
- `GET /warmup`: load and run every model once.
- `POST /pose/hybrid` (seed 001): JSON `{image_base64, frame_number, visualize?, session_id?,
  fps?}` -> `serve.schemas.hybrid_response`. The session (tracks, filters) is chosen by the
  `X-Session-Id` header or the `session_id` field ("default" otherwise), within the tenant of
  the request's bearer token (`serve.access`); a `frame_number` lower than the session's last
  one (a new video) starts a new session under that id.
- `POST /pose/frame?frame_number=&session_id=&fps=`: the same answer for a raw image body
  (`Content-Type: image/jpeg`, no base64, no JSON around it); 415 for another content type.
- `GET /` (the live page) and `WS /ws/pose` (binary frames in, JSON out): `serve.live`.
- `POST /process_video` (seed 002, synchronous) and `/process_video_async` (-> `job_id`):
  multipart `video` file + optional `num_workers`, `batch_size`, `overlay`, `max_side`;
  `GET /job_status/{job_id}`.
- `POST /process` (seed 003): JSON `{video_filename, model?, bboxes_path?, overlay?}`, a file
  under `--video-root`; `GET /status/{task_id}`, `GET /tasks`, `DELETE /tasks/{task_id}` (a queued
  task is cancelled; a processing one stops at its next progress tick and its folder goes).
- `GET /files/{task_id}/{name}`: a finished job's `frames.jsonl`, `predictions.json` or
  `overlay.mp4` (the answers' `result.urls`; their paths follow `serve.results`).
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
import ctypes
import io
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serve.access import add_access_control, tenant_of
from serve.engine import Engine
from serve.images import ImageDecodeError, decode_base64_image, decode_image
from serve.jobs import EngineSpec, JobLimits, JobRunner, QueueFullError
from serve.live import add_live_routes
from serve.results import AnswerPaths, job_status, result_file, task_status
from serve.schemas import hybrid_response
from serve.session import FPS_RANGE, MAX_FRAME_NUMBER, Session
from serve.store import ServerLease, TaskStore, now_iso

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"hybrid": 5000, "tasks": 8000}  # seeds 001/002 and 003
RETRY_AFTER_S = 5
MAX_SESSION_ID = 200  # characters of an X-Session-Id or session_id
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
        job_limits: bounds on one job's frames and minutes (`serve.jobs.JobLimits`).
        keep_jobs_days: job folders of tasks finished longer ago are removed (0: never).
        job_workers: job worker processes.
        max_sessions: live `/pose/hybrid` sessions; the least recently used is closed beyond.
        session_idle_s: a session unused this long is closed.
        sync_timeout_s: `/process_video` waits this long, then answers with the job id.
        session_options: passed to every `serve.session.Session` (filter, gap, fps).
        token: the bearer token every route but /health and / requires (`serve.access`);
            None: no token.
        allowed_hosts: `Host` names answered (`serve.access`); ["*"]: any.
        body_timeout_s: a request body that stops arriving for this long is answered 408.
        answer_paths: "absolute" or "relative" server paths in job answers (`serve.results`).
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
    job_limits: JobLimits = field(default_factory=JobLimits)
    keep_jobs_days: float = 7.0
    job_workers: int = 1
    max_sessions: int = 32
    session_idle_s: float = 600.0
    sync_timeout_s: float = 600.0
    session_options: dict[str, Any] = field(default_factory=dict)
    body_timeout_s: float = 30.0
    token: str | None = field(default=None, repr=False)
    allowed_hosts: list[str] = field(default_factory=lambda: ["*"])
    answer_paths: str = "absolute"
    paths: AnswerPaths = field(init=False, repr=False)  # answer_paths with the folders

    def __post_init__(self) -> None:
        if self.api not in DEFAULT_PORTS:
            raise ValueError(f"--api must be one of {sorted(DEFAULT_PORTS)}, got {self.api!r}")
        self.paths = AnswerPaths(self.answer_paths, Path(self.data_dir),
                                 None if self.video_root is None else Path(self.video_root))


class HybridRequest(BaseModel):
    """Seed 001's request body (extra fields are ignored, as the seed's server does)."""

    model_config = ConfigDict(extra="ignore")
    image_base64: str
    frame_number: int = Field(default=0, ge=0, le=MAX_FRAME_NUMBER)
    visualize: bool = False
    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID)
    fps: float | None = Field(default=None, ge=FPS_RANGE[0], le=FPS_RANGE[1])


class FrameQuery(BaseModel):
    """The query string of `POST /pose/frame` (the body is the raw image)."""

    model_config = ConfigDict(extra="ignore")
    frame_number: int = Field(default=0, ge=0, le=MAX_FRAME_NUMBER)
    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID)
    fps: float | None = Field(default=None, ge=FPS_RANGE[0], le=FPS_RANGE[1])

    @classmethod
    def from_query(cls, params: Any) -> "FrameQuery":
        """Validated query parameters.

        Raises:
            HTTPException 422: a parameter of the wrong type.
        """
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            raise HTTPException(422, validation_detail(exc)) from exc


class ProcessRequest(BaseModel):
    """Seed 003's request body."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    video_filename: str = Field(min_length=1, max_length=4096)
    model: str | None = Field(default=None, max_length=200)
    bboxes_path: str | None = Field(default=None, max_length=4096)  # accepted; unused
    overlay: bool = False
    max_side: int | None = Field(default=None, ge=2)  # video_sources.decode's minimum


@dataclass
class _SessionEntry:
    lock: threading.Lock
    options: dict[str, Any]
    last_frame: int
    last_used: float
    session: Session | None = None  # built by its first user, under `lock`
    retired: bool = False  # out of the pool: a user holding it looks the id up again


class SessionPool:
    """`/pose/hybrid` sessions by tenant and id, each with its lock; bounded and expiring.

    The pool's lock covers only the table; building a session (a MediaPipe graph: 0.15-0.7 s),
    answering a frame and closing a session happen under that session's own lock, so one
    session's work never stalls another's. A session replaced while a request waited for it
    (a restart, an eviction) is never used closed: the request looks its id up again.

    Sessions are keyed by (tenant, id): a tenant (`serve.access.tenant_of`, one per bearer token)
    never reaches another's sessions, whatever ids it sends. When the pool is full, the least
    recently used session of the tenant holding the most goes, so a tenant opening session
    after session evicts its own, not the others'.

    Args:
        engine: makes the sessions.
        max_sessions: beyond this, a session is closed (as above).
        idle_s: a session unused this long is closed.
    """

    def __init__(self, engine: Engine, max_sessions: int, idle_s: float) -> None:
        self.engine, self.max_sessions, self.idle_s = engine, max_sessions, idle_s
        self._sessions: OrderedDict[tuple[str, str], _SessionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @contextmanager
    def use(self, key: tuple[str, str], frame_number: int,
            options: dict[str, Any]) -> Iterator[Session]:
        """The session to answer `frame_number` of `key` = (tenant, session id) (a new one when
        the frame number goes back), held under its lock for the duration of the `with` block."""
        while True:
            with self._lock:
                entry, retired = self._entry(key, frame_number, options)
            for old in retired:
                self._close(old)
            with entry.lock:
                if entry.retired:
                    continue
                if entry.session is None:
                    entry.session = self.engine.new_session(**entry.options)
                yield entry.session
                return

    def _entry(self, key: tuple[str, str], frame_number: int,
               options: dict[str, Any]) -> tuple[_SessionEntry, list[_SessionEntry]]:
        """Under the pool's lock: the entry for this frame and the entries taken out."""
        now = time.monotonic()
        retired = [self._retire(k) for k, e in list(self._sessions.items())
                   if now - e.last_used > self.idle_s]
        entry = self._sessions.get(key)
        if entry is not None and frame_number < entry.last_frame:
            logger.info("session %s/%s restarts at frame %d", *key, frame_number)
            retired.append(self._retire(key))
            entry = None
        if entry is None:
            entry = _SessionEntry(threading.Lock(), dict(options), frame_number, now)
            self._sessions[key] = entry
            while len(self._sessions) > self.max_sessions:
                retired.append(self._retire(self._victim()))
        self._sessions.move_to_end(key)
        entry.last_frame, entry.last_used = frame_number, now
        return entry, retired

    def _victim(self) -> tuple[str, str]:
        """The least recently used session of the tenant holding the most (the table is in
        least-recently-used order)."""
        held = Counter(tenant for tenant, _ in self._sessions)
        most = max(held.values())
        return next(key for key in self._sessions if held[key[0]] == most)

    def _retire(self, key: tuple[str, str]) -> _SessionEntry:
        entry = self._sessions.pop(key)
        entry.retired = True
        return entry

    @staticmethod
    def _close(entry: _SessionEntry) -> None:
        with entry.lock:  # after the request answering with it, if any
            if entry.session is not None:
                entry.session.close()
                entry.session = None

    def close_all(self) -> None:
        """Close every session."""
        with self._lock:
            retired = [self._retire(key) for key in list(self._sessions)]
        for entry in retired:
            self._close(entry)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser with the spool limit above the body limit: a file part
    stays in memory (a SpooledTemporaryFile only rolls over to disk beyond its max size)."""


async def body_chunks(request: Request, limit_bytes: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, bounded in size and in waiting.

    Raises:
        HTTPException 413: more than `limit_bytes` (by Content-Length, or as it streams);
            408: no byte for `ServerConfig.body_timeout_s` (a stalled upload holds a slot).
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise HTTPException(413, f"body of {int(declared)} bytes is over the limit of "
                                 f"{limit_bytes} bytes")
    size = 0
    idle_s = request.app.state.config.body_timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:  # a client that stops sending mid-body is not waited for forever
            chunk = await asyncio.wait_for(stream.__anext__(), idle_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise HTTPException(408, f"no body bytes for {idle_s:g} s") from None
        size += len(chunk)
        if size > limit_bytes:
            raise HTTPException(413, f"body is over the limit of {limit_bytes} bytes")
        yield chunk


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, read into memory (`body_chunks`' limits and errors)."""
    return b"".join([chunk async for chunk in body_chunks(request, limit_bytes)])


def session_key(request: Request, field_value: str | None) -> tuple[str, str]:
    """The session of a frame: (tenant, id), the tenant named by the request's bearer token
    (`serve.access.tenant_of`; "" without tokens), the id the `X-Session-Id` header, else the
    body's or query's `session_id`, else "default".

    Raises:
        HTTPException 422: an id over `MAX_SESSION_ID` characters.
    """
    sid = request.headers.get("x-session-id") or field_value or "default"
    if len(sid) > MAX_SESSION_ID:
        raise HTTPException(422, f"X-Session-Id is over {MAX_SESSION_ID} characters")
    return tenant_of(request.app.state.config.token, request.headers), sid


async def read_json(request: Request, limit_bytes: int, model: type[BaseModel]) -> BaseModel:
    """The body as `model`.

    Raises:
        HTTPException: 415 sent as another content type (a missing one is taken as JSON: only
            browsers must say, and their cross-origin form and text posts are what 415 stops),
            413 too large, 400 not JSON, 422 wrong fields.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(415, f"send the body as JSON with Content-Type: application/json "
                                 f"(got {kind!r})")
    body = await read_body(request, limit_bytes)
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        raise HTTPException(400, f"body is not JSON: {exc}") from exc
    except RecursionError:
        raise HTTPException(400, "body is not JSON this server reads: nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc)) from exc


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """A 422 body: where and why, without echoing the input (a NaN cannot be written as JSON, and
    a 20 MB field should not come back)."""
    return json.loads(exc.json(include_url=False, include_input=False))


async def read_video_form(request: Request, limit_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """The `video` file part and the other fields of a multipart form, parsed in memory.

    Raises:
        HTTPException: 413 too large, 400 not multipart or no `video` file.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send the video as multipart/form-data with a 'video' file "
                                 "field (curl -F video=@clip.mp4)")
    # parsed as it arrives: the body is never held whole beside the file part parsed from it
    parser = InMemoryMultiPartParser(request.headers, body_chunks(request, limit_bytes),
                                     max_files=1, max_fields=50)
    parser.spool_max_size = limit_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"bad multipart form: {exc.message}") from exc
    finally:
        release_freed_heap()
    video = form.get("video")
    if not isinstance(video, UploadFile):
        raise HTTPException(400, "no 'video' file in the form (curl -F video=@clip.mp4)")
    data = _spooled_bytes(video)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return data, video.filename or "upload", fields


def release_freed_heap() -> None:
    """Give the heap pages freed by a large parse back to the OS.

    Why: glibc raises its mmap threshold to the size of a freed mmapped block (at most 32 MiB)
    and keeps up to twice that at the top of the heap untrimmed (mallopt(3), M_MMAP_THRESHOLD
    and M_TRIM_THRESHOLD). The parse's growing buffers leave such pages behind: after an 80 MB
    upload the server held ~40 MB for good. `malloc_trim(0)` (glibc >= 2.8) releases them,
    mid-heap ones too. A no-op where the C library has no `malloc_trim` (musl, macOS).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_LIBC = ctypes.CDLL(None)  # the process's own C library; find_library would spawn a probe


def _spooled_bytes(upload: UploadFile) -> bytes:
    """An in-memory upload's bytes without a copy: `BytesIO.getvalue` hands over its buffer,
    where `read` would copy it (150 MB more for a 150 MB video)."""
    spooled = getattr(upload.file, "_file", None)  # SpooledTemporaryFile's buffer
    if isinstance(spooled, io.BytesIO):
        return spooled.getvalue()
    upload.file.seek(0)
    return upload.file.read()


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
            least = 2 if name == "max_side" else 1  # max_side: video_sources.decode's minimum
            if opts[name] < least:
                raise HTTPException(422, f"{name} must be >= {least}, got {opts[name]}")
    if "overlay" in fields:
        opts["overlay"] = fields["overlay"].strip().lower() in ("1", "true", "yes", "on")
    return opts


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
        lease = ServerLease(Path(cfg.data_dir))  # other servers may share the folder
        store = TaskStore(Path(cfg.data_dir) / "tasks.sqlite3", owner=lease.id)
        runner = JobRunner(spec, store, Path(cfg.data_dir), workers=cfg.job_workers,
                           max_queue=cfg.max_queue, limits=cfg.job_limits,
                           keep_days=cfg.keep_jobs_days)
        runner.start(lease.holds)
        state.update(engine=engine, store=store, runner=runner,
                     sessions=SessionPool(engine, cfg.max_sessions, cfg.session_idle_s))
        logger.info("serving %s (%s profile); data in %s", engine.name, cfg.api, cfg.data_dir)
        try:
            yield
        finally:
            state["sessions"].close_all()
            runner.stop()
            store.close()
            lease.release()

    app = FastAPI(title="stream-pose", lifespan=lifespan,
                  description="3D human pose from a stream-pose student (or its teacher).")

    app.state.config = cfg
    add_access_control(app, cfg.token, cfg.allowed_hosts)
    add_live_routes(app, state, limit_frame, cfg.max_sessions, cfg.token)

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
        key = session_key(request, body.session_id)
        options = {"fps": body.fps} if body.fps else {}
        return await run_in_threadpool(_pose_frame, key, body.frame_number, options, t0,
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
        key = session_key(request, query.session_id)
        options = {"fps": query.fps} if query.fps else {}
        return await run_in_threadpool(_pose_frame, key, query.frame_number, options, t0,
                                       decode_image, data)

    def _pose_frame(key: tuple[str, str], frame_number: int, options: dict, t0: float,
                    decode: Any, payload: Any) -> JSONResponse:
        t1 = time.perf_counter()
        try:
            decoded = decode(payload, state["engine"].max_side)
        except ImageDecodeError as exc:
            raise HTTPException(400, str(exc)) from exc
        t2 = time.perf_counter()
        with state["sessions"].use(key, frame_number, options) as session:
            result = session.step(decoded.image, frame_number=frame_number,
                                  original_size=decoded.size)
        t3 = time.perf_counter()
        timings = {"decode": 1000 * (t2 - t1), "pose": 1000 * (t3 - t2),
                   "total": 1000 * (t3 - t0)}
        # A Response skips FastAPI's jsonable_encoder walk over ~30 dicts per person.
        return JSONResponse(hybrid_response(result, state["engine"].name,
                                            processing_ms=timings["total"], timings_ms=timings))

    async def _submit_upload(request: Request) -> dict[str, Any]:
        if state["runner"].full():  # before reading a body of up to --max-upload-mb
            raise HTTPException(503, f"{cfg.max_queue} jobs are queued already; retry in "
                                     f"{RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
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
        body = job_status(record, cfg.paths)
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
        return job_status(_record(job_id), cfg.paths)

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
        try:
            path = Path(name)
            path = (path if path.is_absolute() else root / path).resolve()
            if not path.is_relative_to(root):
                raise HTTPException(403, f"{name[:200]} is outside the server's --video-root")
            found = path.is_file()
        except (ValueError, OSError) as exc:  # a NUL byte, a name over the file system's limit
            raise HTTPException(400, f"video_filename is not a usable file name: {exc}") from None
        if not found:
            raise HTTPException(404, f"video not found: {name}")
        return path

    @app.get("/status/{task_id}")
    def status(task_id: str) -> dict[str, Any]:
        return task_status(_record(task_id), cfg.paths)

    @app.get("/tasks")
    def tasks(limit: int = Query(1000, ge=1, le=10_000), offset: int = Query(0, ge=0)
              ) -> dict[str, Any]:
        store = state["store"]
        records = [task_status(r, cfg.paths) for r in store.list(limit=limit, offset=offset)]
        return {"tasks": records, "total": sum(store.counts().values()),
                "limit": limit, "offset": offset}

    @app.get("/files/{task_id}/{name}")
    def files(task_id: str, name: str) -> FileResponse:
        path = result_file(_record(task_id), name)
        if path is None:
            raise HTTPException(404, f"task {task_id!r} has no file {name[:100]!r} (its "
                                     "answer's result.urls lists the ones it has)")
        return FileResponse(path, filename=name)

    @app.delete("/tasks/{task_id}")
    def delete_task(task_id: str) -> dict[str, Any]:
        record = _record(task_id)
        cancelled = state["store"].cancel(task_id)
        state["runner"].cancel(task_id)  # its upload is dropped now, not when a worker skips it
        state["store"].delete(task_id)  # a running job sees it gone at its next progress tick
        return {"task_id": task_id, "status": "deleted", "cancelled": cancelled,
                "message": ("queued task cancelled and deleted" if cancelled else
                            f"task record deleted (it was {record['status']})")}

    def _record(task_id: str) -> dict[str, Any]:
        record = state["store"].get(task_id)
        if record is None:
            raise HTTPException(404, f"unknown task or job {task_id!r}")
        return record

    return app
