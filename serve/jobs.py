"""Whole-video jobs: a bounded queue, worker processes, results in a job folder.

Jobs run in separate worker processes with their own queue (not in the server's threads, where a
long or crashing job would block or kill the server). Each worker loads the model once
(`EngineSpec`), then takes jobs one at a time: it decodes the video in memory, runs one
`serve.session.Session` over every frame, and writes only what the user asked for into
`<data_dir>/jobs/<task_id>/`:
- `frames.jsonl`: one `serve.schemas.hybrid_response` per frame;
- `predictions.json`: MMPose-style predictions of the whole video (`serve.schemas`);
- `overlay.mp4`, with `overlay: true`: the frames with the skeletons drawn.
Task records live in SQLite (`serve.store.TaskStore`), shared with the workers. A monitor thread
in the server notices a worker that died (SIGKILL, out of memory), marks its job failed with the
reason and starts a replacement; a job never stays `processing` after its worker is gone.

A video's frames are processed in order, one session, because the top-down tracker crops each
frame from the previous frame's result; the crops of one frame run as one batch. The seed's
`num_workers` and `batch_size` request fields are recorded, and parallelism comes from the
server's `--job-workers` processes, one video each.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import queue as queue_lib
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np

from serve.engine import Engine
from serve.overlay import VideoWriter
from serve.schemas import hybrid_response, mmpose_instance, mmpose_predictions
from serve.session import SessionFrame
from serve.store import TaskStore
from stream_pose.draw import draw_pose
from stream_pose.types import VideoRef
from video_sources.base import SourceStats
from video_sources.decode import VideoDecodeError
from video_sources.frames import frames_from_bytes

logger = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 0.5
PROGRESS_EVERY = 10  # frames between progress updates in the task record
PRUNE_EVERY_S = 3600.0  # how often old job folders are looked for


class QueueFullError(RuntimeError):
    """The job queue holds `max_queue` jobs already; retry later."""


class JobStopped(RuntimeError):
    """A job ended before its last frame: over a `JobLimits` bound, or deleted while it ran."""


@dataclass(frozen=True)
class JobLimits:
    """Bounds on one job, so that a small file of many tiny frames cannot hold a worker for
    hours (the outside probe of issue 21: a 1.4 MB mp4 of 108k frames ran ~30 min).

    Attributes:
        max_frames: frames posed before the job fails (`--max-job-frames`; 0: no bound).
        max_seconds: wall time before the job fails (`--max-job-minutes`; 0: no bound).
    """

    max_frames: int = 54_000  # 30 minutes of 30 fps video
    max_seconds: float = 3600.0


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build its `serve.engine.Engine` (picklable for spawn)."""

    model: str
    teacher: str = "mediapipe"
    threads: int = 1
    max_side: int | None = None
    session_options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Engine:
        """The engine (loads the model).

        Raises:
            serve.engine.ModelLoadError: as `Engine`.
        """
        return Engine(self.model, teacher=self.teacher, threads=self.threads,
                      max_side=self.max_side, **self.session_options)


def process_video(engine: Engine, video: bytes, job_dir: Path, *, overlay: bool = False,
                  name: str = "video", on_progress: Callable[[float], None] | None = None,
                  max_side: int | None = None, max_frames: int = 0) -> dict[str, Any]:
    """Pose every frame of an encoded video; write the job folder (module docstring).

    Args:
        engine: the loaded model.
        video: the encoded file (mp4, mov, webm, ...), in memory.
        job_dir: output folder (created).
        overlay: also write `overlay.mp4`.
        name: the video's name in the records.
        on_progress: called with the fraction of frames done (0 to 1; 0 while the container
            declares no frame count), every `PROGRESS_EVERY` frames.
        max_side: downscale frames so the longer side is at most this (None: the engine's
            `max_side`); 2D answers are in the video's own pixels either way.
        max_frames: stop with `JobStopped` beyond this many frames (0: no bound).

    Returns:
        The result record: frame counts, coverage, paths, seconds and frames per second.

    Raises:
        video_sources.decode.VideoDecodeError: no frame could be decoded.
        JobStopped: over `max_frames`, or raised by `on_progress`.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    session = engine.new_session()
    writer = VideoWriter(job_dir / "overlay.mp4") if overlay else None
    frames, instances, with_pose, predicted = 0, [], 0, 0
    ref = VideoRef(id=name, kind="upload", uri="")
    size, total = _probe(video)
    try:
        with open(job_dir / "frames.jsonl", "w") as lines:
            for frame in frames_from_bytes(video, ref, SourceStats(),
                                           max_side=max_side or engine.max_side):
                if max_frames and frames >= max_frames:
                    raise JobStopped(f"the video has more than {max_frames} frames "
                                     "(the server's --max-job-frames)")
                if frames == 0:
                    size = _upright(size, frame.image)
                result = session.step(frame.image, frame_number=frame.index,
                                      time_s=frame.time_s, original_size=size)
                lines.write(json.dumps(hybrid_response(result, engine.name)) + "\n")
                instances.append({"frame_id": frame.index,
                                  "instances": [mmpose_instance(p) for p in result.people]})
                with_pose += bool(result.people)
                predicted += bool(result.people) and all(p.predicted for p in result.people)
                if writer is not None:
                    writer.write(_overlay(frame.image, result), frame.time_s)
                frames += 1
                if on_progress is not None and frames % PROGRESS_EVERY == 0:
                    on_progress(min(frames / total, 0.99) if total else 0.0)
    finally:
        session.close()
        if writer is not None:
            writer.close()
    if frames == 0:
        raise VideoDecodeError(f"{name}: no decodable video frame")
    predictions = job_dir / "predictions.json"
    predictions.write_text(json.dumps(mmpose_predictions(instances, engine.name)))
    seconds = time.perf_counter() - t0
    return {
        "frames": frames, "frames_with_pose": with_pose, "predicted_frames": predicted,
        "frames_file": str(job_dir / "frames.jsonl"), "predictions_file": str(predictions),
        "predictions_dir": str(job_dir), "visualization_dir": str(job_dir),
        "overlay": str(job_dir / "overlay.mp4") if overlay else None,
        "processing_time": round(seconds, 3), "fps": round(frames / max(seconds, 1e-9), 2),
        "model_version": engine.name,
    }


def _exit_with_parent(parent: int) -> None:
    """Exit this worker once the server that started it is gone (killed with SIGKILL, it
    cannot stop us): an orphan would go on writing records a restarted server owns."""
    while os.getppid() == parent:
        time.sleep(MONITOR_INTERVAL_S)
    os._exit(1)


def _probe(video: bytes) -> tuple[tuple[int, int] | None, int]:
    """(W, H) of the coded picture and the frame count the container declares (0: unknown),
    read from the container without decoding; (None, 0) if it cannot be opened (the decode loop
    then reports why). A rotated video's upright size is W and H swapped (`_upright`)."""
    try:
        with av.open(io.BytesIO(video)) as container:
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            return size, int(stream.frames or 0)
    except Exception:  # undecodable: process_video raises VideoDecodeError with the reason
        return None, 0


def _upright(size: tuple[int, int] | None, image: np.ndarray) -> tuple[int, int] | None:
    """The coded size turned as the decoder turned the picture (portrait vs landscape)."""
    if size is None:
        return None
    w, h = size
    return (h, w) if (image.shape[1] > image.shape[0]) != (w > h) and w != h else (w, h)


def _overlay(image: np.ndarray, result: SessionFrame) -> np.ndarray:
    """The working-size frame with each person drawn (2D scaled back to that size)."""
    out = image.copy()
    sx, sy = image.shape[1] / result.width, image.shape[0] / result.height
    scale = np.array([sx, sy], np.float32)
    for p in result.people:
        draw_pose(out, p.kpts2d * scale, p.defined, p.box_xyxy * np.tile(scale, 2))
    return out


def _worker_main(spec: EngineSpec, db_path: str, data_dir: str, jobs: Connection,
                 ready: mp.Queue, limits: JobLimits, server_pid: int) -> None:
    """A job worker process: load the model once, then, until a None arrives, say it is ready
    (its pid on `ready`) and run the job the server sends on `jobs` (`JobRunner._hand_over`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it stops us
    # the server's pid as the server saw it: a server killed while this worker was still
    # importing has left it to pid 1 already, and os.getppid() here would wait on pid 1 forever
    threading.Thread(target=_exit_with_parent, args=(server_pid,), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s job-worker %(message)s")
    engine = spec.build()
    store = TaskStore(db_path)
    while True:
        ready.put(os.getpid())
        try:
            header = jobs.recv()
        except EOFError:  # the server is gone
            break
        if header is None:
            break
        task_id, has_video, video_path, params = header
        video = jobs.recv_bytes() if has_video else None
        if not store.start(task_id, os.getpid()):
            continue  # cancelled or deleted while queued
        job_dir = Path(data_dir) / "jobs" / task_id
        try:
            data = video if video is not None else Path(video_path).read_bytes()
            result = process_video(
                engine, data, job_dir, overlay=bool(params.get("overlay")),
                name=params.get("name", "video"), max_side=params.get("max_side"),
                max_frames=limits.max_frames,
                on_progress=_progress_check(store, task_id, limits.max_seconds))
            store.complete(task_id, result)
            logger.info("job %s: %d frames at %.1f frames/s", task_id, result["frames"],
                        result["fps"])
        except JobStopped as exc:
            logger.warning("job %s stopped: %s", task_id, exc)
            if store.get(task_id) is None:  # deleted: its partial folder goes too
                shutil.rmtree(job_dir, ignore_errors=True)
            store.fail(task_id, str(exc))
        except Exception as exc:  # a job's failure is its record's, never the worker's
            logger.warning("job %s failed: %s", task_id, exc)
            store.fail(task_id, f"{type(exc).__name__}: {exc}")
    store.close()


def _progress_check(store: TaskStore, task_id: str,
                    max_seconds: float) -> Callable[[float], None]:
    """The `on_progress` of a worker's job: record progress; stop a job whose record was
    deleted (DELETE /tasks/{id}) or that ran past `max_seconds`."""
    t0 = time.monotonic()

    def check(fraction: float) -> None:
        if not store.progress(task_id, fraction):
            raise JobStopped("the task was deleted while it ran")
        if max_seconds and time.monotonic() - t0 > max_seconds:
            raise JobStopped(f"the job ran past {max_seconds / 60:g} minutes "
                             "(the server's --max-job-minutes)")

    return check


def prune_job_folders(store: TaskStore, data_dir: Path, keep_days: float) -> list[str]:
    """Remove the job folders of tasks finished more than `keep_days` ago, and those with no
    record at all (deleted tasks, partial folders of a crash whose record was deleted).

    Returns:
        The task ids whose folders were removed.
    """
    jobs = Path(data_dir) / "jobs"
    if keep_days <= 0 or not jobs.is_dir():
        return []
    cutoff = time.time() - keep_days * 86400
    removed = []
    for folder in jobs.iterdir():
        record = store.get(folder.name)
        if record is not None:
            done = record["completed_at"]
            if record["status"] in ("queued", "processing") or done is None \
                    or datetime.fromisoformat(done).timestamp() > cutoff:
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    if removed:
        logger.info("removed %d job folders (finished over %g days ago, or deleted)",
                    len(removed), keep_days)
    return removed


class JobRunner:
    """The job queue and its worker processes, watched by a monitor thread.

    Args:
        spec: the model every worker loads.
        store: the task records.
        data_dir: job folders go to `<data_dir>/jobs/`.
        workers: worker processes (>= 1).
        max_queue: queued jobs beyond which `submit` refuses (>= 1).
        limits: bounds on each job (`JobLimits`).
        keep_days: job folders of tasks finished longer ago are removed, at start and every
            `PRUNE_EVERY_S` (`prune_job_folders`; 0: kept forever).

    Raises:
        ValueError: on `workers` or `max_queue` < 1.
    """

    def __init__(self, spec: EngineSpec, store: TaskStore, data_dir: Path, *, workers: int = 1,
                 max_queue: int = 8, limits: JobLimits | None = None,
                 keep_days: float = 7.0) -> None:
        if workers < 1 or max_queue < 1:
            raise ValueError(f"need workers >= 1 and max_queue >= 1, got {workers}, {max_queue}")
        self.spec, self.store, self.data_dir = spec, store, Path(data_dir)
        self.workers, self.max_queue = workers, max_queue
        self.limits, self.keep_days = limits or JobLimits(), keep_days
        self._ctx = mp.get_context("spawn")  # no forked copy of the server's threads and models
        # Jobs wait here, in the server, where a cancelled one's upload is dropped at once, and
        # go to a worker only when it says it is ready: no job waits in a pipe.
        self._pending: deque[tuple[str, bytes | None, str | None, dict]] = deque()
        self._cond = threading.Condition()
        self._ready: mp.Queue = self._ctx.Queue()  # pids of workers waiting for a job
        self._procs: list[mp.Process] = []
        self._pipes: dict[int, Connection] = {}  # worker pid -> the end jobs are sent on
        # worker pid -> the header of the job last sent to it: a worker that dies before
        # starting it leaves a path job to be sent again (an upload's bytes went with it)
        self._handed: dict[int, tuple[str, bool, str | None, dict]] = {}
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None

    def start(self, running: Callable[[str | None], bool] = lambda owner: False) -> None:
        """Recover the records of servers that are gone (`running(owner)` False: see
        `serve.store.TaskStore.recover`), start the workers, the monitor and the dispatcher."""
        failed, again = self.store.recover(running)
        for task_id in failed:
            logger.warning("task %s failed: the server running it stopped", task_id)
        prune_job_folders(self.store, self.data_dir, self.keep_days)
        for _ in range(self.workers):
            self._procs.append(self._spawn())
        with self._cond:
            for task_id in again:  # queued tasks on files survive a restart
                record = self.store.get(task_id)
                self._pending.append((task_id, None, record["video_path"], record["params"]))
        self._monitor = threading.Thread(target=self._watch, name="job-monitor", daemon=True)
        self._monitor.start()
        self._dispatcher = threading.Thread(target=self._dispatch, name="job-dispatcher",
                                            daemon=True)
        self._dispatcher.start()

    def _spawn(self) -> mp.Process:
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_worker_main, name="stream-pose-job-worker", daemon=True,
            args=(self.spec, str(self.store.path), str(self.data_dir), receive, self._ready,
                  self.limits, os.getpid()))
        proc.start()
        receive.close()  # the worker's end: it holds its own copy
        self._pipes[proc.pid] = send
        logger.info("job worker started (pid %d)", proc.pid)
        return proc

    def submit(self, record: dict[str, Any], video: bytes | None) -> None:
        """Queue a created task record (`video` bytes for an upload, else its `video_path`).

        Raises:
            QueueFullError: `max_queue` jobs are queued already (the record is deleted: a refused
                job leaves no row behind).
        """
        with self._cond:
            if self.store.counts(mine=True)["queued"] > self.max_queue:  # this one too
                self.store.delete(record["id"])
                raise QueueFullError(f"{self.max_queue} jobs are queued already")
            self._pending.append((record["id"], video, record["video_path"], record["params"]))
            self._cond.notify()

    def full(self) -> bool:
        """Whether a job submitted now would be refused (checked again by `submit`)."""
        return self.store.counts(mine=True)["queued"] >= self.max_queue

    def cancel(self, task_id: str) -> bool:
        """Drop a job that no worker has taken yet, with its upload; False if none waits here
        (a job already handed to a worker is skipped by it: its record is no longer queued)."""
        with self._cond:
            for item in self._pending:
                if item[0] == task_id:
                    self._pending.remove(item)
                    return True
        return False

    def _dispatch(self) -> None:
        """Hand the waiting jobs, in order, to workers that say they are ready."""
        while not self._stop.is_set():
            try:
                pid = self._ready.get(timeout=MONITOR_INTERVAL_S)
            except queue_lib.Empty:
                continue
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop.is_set())
                if self._stop.is_set():
                    return
                item = self._pending.popleft()
            if self._hand_over(pid, item):
                self._handed[pid] = _header(item)
            else:
                with self._cond:  # that worker died: the job waits for the next one
                    self._pending.appendleft(item)
            del item  # an upload is the worker's now; keeping it would hold its bytes here

    def _hand_over(self, pid: int, item: tuple[str, bytes | None, str | None, dict]) -> bool:
        """Send a job to the ready worker `pid`: its header, then the upload's bytes straight
        from their buffer (a Queue would pickle a copy first, and its feeder thread keeps the
        last one). False when the worker is gone."""
        pipe = self._pipes.get(pid)
        if pipe is None:
            return False
        try:
            pipe.send(_header(item))
            if item[1] is not None:
                pipe.send_bytes(item[1])
        except (OSError, ValueError):  # a worker that died after saying it was ready
            return False
        return True

    def _watch(self) -> None:
        """Replace dead workers and fail the job each was processing; prune old job folders."""
        pruned = time.monotonic()
        while not self._stop.wait(MONITOR_INTERVAL_S):
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                prune_job_folders(self.store, self.data_dir, self.keep_days)
            for i, proc in enumerate(self._procs):
                if proc.is_alive():
                    continue
                reason = _exit_reason(proc.exitcode)
                lost = set(self.store.running_on(proc.pid))
                handed = self._handed.pop(proc.pid, None)
                if handed is not None and not self._send_again(handed, proc.pid, reason):
                    lost.add(handed[0])
                for task_id in lost:
                    if self.store.fail(task_id, f"job worker (pid {proc.pid}) {reason}; "
                                       "the job did not finish"):
                        logger.warning("job %s failed: worker pid %d %s", task_id, proc.pid,
                                       reason)
                pipe = self._pipes.pop(proc.pid, None)
                if pipe is not None:
                    pipe.close()
                if not self._stop.is_set():
                    self._procs[i] = self._spawn()

    def _send_again(self, header: tuple[str, bool, str | None, dict], pid: int,
                    reason: str) -> bool:
        """Queue again, first in line, a job sent to a worker that died before starting it
        (its record still queued) when it names a file; an upload's bytes died with the worker
        (False: the job fails). True also when its record is no longer queued (a started job
        is failed through `TaskStore.running_on`; a finished or deleted one needs nothing).
        """
        task_id, upload, video_path, params = header
        record = self.store.get(task_id)
        if record is None or record["status"] != "queued":
            return True
        if upload:
            return False
        logger.warning("job worker (pid %d) %s before starting job %s; the next worker takes it",
                       pid, reason, task_id)
        with self._cond:
            self._pending.appendleft((task_id, None, video_path, params))
            self._cond.notify()
        return True

    def alive_workers(self) -> int:
        """Worker processes running now."""
        return sum(p.is_alive() for p in self._procs)

    def worker_pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the monitor and the workers (a job in progress is ended and marked failed)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(2 * MONITOR_INTERVAL_S + 1.0)
        # jobs not started stay queued in the store (a restart recovers them)
        for pipe in self._pipes.values():
            try:
                pipe.send(None)  # read when the worker is done with its job, if any
            except (OSError, ValueError):
                pass  # a dead worker
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            for task_id in self.store.running_on(proc.pid):
                self.store.fail(task_id, "the server stopped during the job")
        for pipe in self._pipes.values():
            pipe.close()
        self._pipes.clear()
        self._ready.close()
        self._ready.join_thread()


def _header(item: tuple[str, bytes | None, str | None, dict]) -> tuple[str, bool, str | None,
                                                                        dict]:
    """What a worker is sent before a job's bytes: (task id, whether an upload follows, the
    video's path, the job's options)."""
    task_id, video, video_path, params = item
    return task_id, video is not None, video_path, params


def _exit_reason(exitcode: int | None) -> str:
    """'exited with status N' or 'was killed by SIGKILL' for a dead process's exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"
