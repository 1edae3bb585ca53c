"""The pool side of the producer processes: spawning, supervising and stopping them.

`ProducerPool` spawns `workers` processes (spawn start method: safe with CUDA and on macOS), each
running `data.workers.worker.run_worker` on its own shard. A monitor thread in the parent
supervises them:

- a worker that dies (exception, SIGKILL, segfault: seen through its process sentinel), stops
  sending heartbeats (hung) or makes no progress (no frame, no video read or skipped, and not
  paused for the trainer) for `stall_timeout_s` while its heartbeat thread still reports
  (stalled: a trickling download, a stuck teacher) is logged with what it was doing and
  restarted, at most
  `max_restarts` times per worker; then, or at once for errors that would only repeat (a
  `TeacherUnavailableError`, or a source or teacher that cannot be built), the pool fails:
  `error` and `failure_reason()` say why, and the trainer raises it (`StreamDataModule`);
- workers report counters, heartbeats, errors and log records through one pipe each
  (`data.workers.worker`), which the monitor thread alone reads and writes.

This module imports neither torch, Lightning nor any teacher library (spawned workers import
the package).
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from data.producer import (
    Producer,
    ProducerFailedError,
    ProducerStats,
    StreamProducer,
    combine_stats,
    describe_doing,
    progress_mark,
)
from data.ring_buffer import RingBuffer
from data.workers.worker import WorkerError, WorkerSpec, run_worker, shard_kwargs, worker_shard
from labeler.base import Teacher
from video_sources.base import VideoSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProducerSettings:
    """How many producer processes run and how they are supervised (conf/producer).

    Attributes:
        workers: producer processes; 0 labels in a thread of the trainer's process instead.
        max_restarts: restarts allowed per worker before the run fails with its error.
        heartbeat_s: seconds between a worker's reports (counters double as heartbeats).
        heartbeat_timeout_s: a running worker silent this long is taken for hung and restarted.
        startup_timeout_s: the same limit before a worker's first report (spawn re-imports the
            parent's main module, and the teacher loads its model).
        stall_timeout_s: a worker that reports but makes no progress this long (no frame
            decoded, no video read or skipped, not paused for the trainer) is taken for
            stalled and restarted; keep it above the source's download time limit. With
            `workers=0` the thread fails the run instead (a thread cannot be restarted).
        stop_timeout_s: seconds a stopping worker gets to finish its frame before SIGTERM.
    """

    workers: int = 1
    max_restarts: int = 3
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 120.0
    startup_timeout_s: float = 300.0
    stall_timeout_s: float = 300.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.workers < 0 or self.max_restarts < 0:
            raise ValueError(f"workers and max_restarts must be >= 0, got {self.workers}, "
                             f"{self.max_restarts}")
        if min(self.heartbeat_s, self.heartbeat_timeout_s, self.startup_timeout_s,
               self.stall_timeout_s, self.stop_timeout_s) <= 0:
            raise ValueError("heartbeat and timeout settings must be > 0 seconds")

    @property
    def shared_buffer(self) -> bool:
        """Producer processes write the buffer from other processes: it must be shared."""
        return self.workers > 0

    def build(self, source: Callable[..., VideoSource], teacher: Callable[[], Teacher],
              buffer: RingBuffer, *, rank: int, world_size: int,
              reads_per_overwrite: float | None) -> StreamProducer:
        """The producer of these settings on DDP rank `rank`: a `ProducerPool`, or with
        `workers=0` a `data.producer.Producer` thread on the rank's whole shard.

        Args:
            source: factory of sources (`source(split="train", shard=, num_shards=)`).
            teacher: factory of teachers.
            buffer: the training buffer (shared when `shared_buffer`).
            rank, world_size: this trainer's place among DDP ranks.
            reads_per_overwrite: pacing against the trainer (`label_stream`).
        """
        if self.workers > 0:
            return ProducerPool(source, teacher, buffer, settings=self, rank=rank,
                                world_size=world_size, reads_per_overwrite=reads_per_overwrite)
        return Producer(source(split="train", **shard_kwargs(rank, world_size)), teacher, buffer,
                        reads_per_overwrite=reads_per_overwrite,
                        stall_timeout_s=self.stall_timeout_s)



@dataclass
class _Worker:
    """The parent's view of one worker slot, across restarts."""

    index: int
    process: multiprocessing.process.BaseProcess | None = None
    conn: Connection | None = None
    past: ProducerStats = field(default_factory=ProducerStats)  # earlier incarnations
    live: ProducerStats = field(default_factory=ProducerStats)  # the current one
    restarts: int = 0
    started: float = 0.0
    last_report: float | None = None
    last_stats: float | None = None  # when its last counters arrived
    ended: WorkerError | None = None  # why the current incarnation ended, if it said
    finished: bool = False  # its source ran out (a clean end, not restarted)
    progress: tuple | None = None  # counters that move when it works (see `progress_mark`)
    last_progress: float = 0.0  # when they last moved (or it was paused for the trainer)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None


class _RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the `__cause__` of its re-raised error."""

    def __str__(self) -> str:
        return self.args[0]


class ProducerPool:
    """`workers` producer processes filling one shared `RingBuffer`, restarted when they die.

    A `data.producer.StreamProducer`, like the in-process `data.producer.Producer`, so
    `StreamDataModule` and benchmarks can use either.

    Args:
        source: factory of video sources, called in each worker as
            `source(split="train", shard=..., num_shards=...)` (no shard arguments when there
            is a single shard); must be picklable (a Hydra `_partial_`, a module-level class).
        teacher: picklable factory of teachers; each worker makes its own.
        buffer: a shared ring buffer (`RingBuffer(..., shared=True)`), owned by this process;
            it sets the crop side (`buffer.crop_size`).
        settings: worker count and supervision (`ProducerSettings`; `workers` >= 1).
        rank, world_size: this trainer's place among DDP ranks (0 and 1 without DDP).
        reads_per_overwrite: pacing against the trainer (see `label_stream`).

    Raises:
        ValueError: a process-local buffer, workers < 1 or a bad rank.
    """

    def __init__(
        self,
        source: Callable[..., VideoSource],
        teacher: Callable[[], Teacher],
        buffer: RingBuffer,
        *,
        settings: ProducerSettings = ProducerSettings(),
        rank: int = 0,
        world_size: int = 1,
        reads_per_overwrite: float | None = None,
    ):
        if not buffer.shared:
            raise ValueError("producer processes need a shared buffer: RingBuffer(shared=True)")
        if settings.workers < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need workers >= 1 and 0 <= rank < world_size, got "
                             f"{settings.workers}, {rank}, {world_size}")
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self._source, self._teacher, self._buffer = source, teacher, buffer
        self._reads_per_overwrite = reads_per_overwrite
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = [_Worker(w) for w in range(settings.workers)]
        self._lock = threading.Lock()  # guards the workers' counters (monitor vs. readers)
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)  # wakes the monitor on stop
        self._error: BaseException | None = None
        self._error_text: str | None = None
        self._stalls = 0
        self._stop_timeout_s = settings.stop_timeout_s
        self._monitor = threading.Thread(target=self._supervise, name="stream-pose-pool",
                                         daemon=True)

    # Public interface

    def start(self) -> None:
        """Spawn the workers and the monitor thread.

        Raises:
            RuntimeError: if it was started before.
            TypeError: the source or teacher factory cannot be pickled (a lambda, a local
                class); the workers started so far are stopped.
        """
        if self._monitor.ident is not None:
            raise RuntimeError("the producer pool was started already")
        try:
            for worker in self._workers:
                self._spawn(worker)
        except BaseException:
            for worker in self._workers:
                if worker.alive:
                    _terminate(worker.process)
            raise
        self._monitor.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask every worker to finish its frame and exit; SIGTERM, then SIGKILL, stragglers.

        Idempotent. Waits at most about `timeout_s` (default `settings.stop_timeout_s`) plus a
        few seconds for the kills.
        """
        self._stopping.set()
        if self._monitor.ident is None:
            return
        if timeout_s is not None:
            self._stop_timeout_s = timeout_s
        try:
            self._wake_w.send_bytes(b"stop")
        except OSError:  # closed by an earlier stop
            pass
        self._monitor.join(self._stop_timeout_s + 10.0)
        if self._monitor.is_alive():
            logger.warning("producer pool monitor did not stop; its workers are daemons")
            return
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ProducerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        """True while at least one worker process runs."""
        return any(w.alive for w in self._workers)

    @property
    def error(self) -> BaseException | None:
        """The error that failed the pool (the worker's own exception type when it pickles)."""
        return self._error

    @property
    def restarts(self) -> int:
        """Worker restarts so far, all workers together."""
        return sum(w.restarts for w in self._workers)

    @property
    def stalls(self) -> int:
        """Workers killed so far for making no progress (`ProducerSettings.stall_timeout_s`)."""
        return self._stalls

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker slot's current process (None if it is not running)."""
        return [w.process.pid if w.alive else None for w in self._workers]

    @property
    def stats(self) -> ProducerStats:
        """All workers' counters combined (restarted incarnations included); a copy."""
        with self._lock:
            return combine_stats(p for w in self._workers for p in (w.past, w.live))

    def worker_stats(self) -> list[ProducerStats]:
        """Each worker slot's counters (all its incarnations), in worker order; copies."""
        with self._lock:
            return [combine_stats([w.past, w.live]) for w in self._workers]

    def refresh_stats(self, timeout_s: float = 5.0) -> bool:
        """Have every running worker report its counters now, rather than within `heartbeat_s`
        (e.g. the videos used, for a checkpoint); wait at most `timeout_s` for them.

        Returns:
            True when every worker that had reported answered in time (or none runs).
        """
        if self._monitor.ident is None or self._stopping.is_set():
            return True  # not started, or stopping: the counters are what they will be
        asked = time.monotonic()
        try:
            self._wake_w.send_bytes(b"report")  # the monitor thread asks: it owns the pipes
        except OSError:  # closed by a concurrent stop
            return True
        while time.monotonic() - asked < timeout_s:
            if not any(w.alive and w.last_stats is not None and w.last_stats < asked
                       for w in self._workers):
                return True
            time.sleep(0.005)
        return False

    def failure_reason(self) -> str | None:
        """Why no more samples will come, or None while the workers run (or were stopped).

        Meant as `RingBuffer.wait_for(abort=pool.failure_reason)`.
        """
        if self._error_text is not None:
            return self._error_text
        if all(w.finished for w in self._workers) and not self._stopping.is_set():
            total = self.stats.total
            return (f"producers finished: the sources ran out after {total.frames} frames "
                    f"({total.samples_pushed} samples, {total.errors} teacher errors)")
        return None

    # Worker lifecycle (monitor thread, except the first spawns)

    def _spawn(self, worker: _Worker) -> None:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        shard, num_shards = worker_shard(self.rank, worker.index, self.settings.workers,
                                         self.world_size)
        spec = WorkerSpec(
            source=self._source, teacher=self._teacher, buffer=self._buffer.handle,
            shard=shard, num_shards=num_shards,
            reads_per_overwrite=self._reads_per_overwrite, heartbeat_s=self.settings.heartbeat_s,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        process = self._ctx.Process(target=run_worker, args=(spec, worker.index, child_end),
                                    name=f"stream-pose-producer-{worker.index}", daemon=True)
        try:
            process.start()
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            parent_end.close()
            raise TypeError(
                f"producer processes need picklable source and teacher factories ({exc}): use "
                "module-level classes or functions (Hydra _partial_ configs are), or "
                "producer.workers=0 to label in a thread"
            ) from exc
        finally:
            child_end.close()  # the child holds its own copy: EOF here means the child is gone
        worker.process, worker.conn, worker.started = process, parent_end, time.monotonic()
        worker.last_report, worker.last_stats = None, None
        worker.ended, worker.finished = None, False
        worker.progress, worker.last_progress = None, time.monotonic()
        logger.info("producer %d started (pid %d, shard %d of %d)", worker.index, process.pid,
                    shard, spec.num_shards)

    def _supervise(self) -> None:
        """Monitor thread: route messages, restart dead or hung workers, stop them at the end."""
        try:
            while not (self._stopping.is_set() or self._error is not None):
                self._poll(self.settings.heartbeat_s)
                self._check_heartbeats()
        except Exception as exc:  # a bug here must fail the run, not silently stop supervision
            logger.exception("producer pool monitor failed")
            self._fail(ProducerFailedError(f"producer pool monitor failed: {exc}"), str(exc))
        finally:
            self._shutdown()

    def _poll(self, timeout_s: float) -> None:
        """Wait for messages, deaths or a wake-up; handle what arrived."""
        live = [w for w in self._workers if w.alive]
        by_object: dict[Any, _Worker] = {w.conn: w for w in live if w.conn is not None}
        by_object.update({w.process.sentinel: w for w in live})
        ready = wait([*by_object, self._wake_r], timeout_s)
        for obj in ready:
            if obj is self._wake_r:
                # Consumed, or every later wait returns at once. Any message but "stop" makes
                # a worker's heartbeat report at once (see `_Heartbeat.run`).
                if self._wake_r.recv_bytes() == b"report":
                    self._send_all("report")
                continue
            worker = by_object[obj]
            self._drain(worker)
            if obj is worker.process.sentinel:
                worker.process.join()
                self._on_exit(worker)

    def _drain(self, worker: _Worker) -> None:
        """Handle every message waiting in the worker's pipe."""
        conn = worker.conn
        try:
            while conn is not None and conn.poll():
                self._handle(worker, conn.recv())
        except (EOFError, OSError, pickle.UnpicklingError):  # the worker is gone (maybe mid-send)
            conn.close()
            worker.conn = None

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        worker.last_report = time.monotonic()
        if kind == "stats":
            with self._lock:
                _merge_report(worker.live, message[1])
            worker.last_stats = worker.last_report
            progress = progress_mark(worker.live)
            if progress != worker.progress or worker.live.paused:
                worker.progress, worker.last_progress = progress, worker.last_report
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            record.msg, record.args = f"[producer {worker.index}] {record.msg}", None
            logging.getLogger(record.name).handle(record)
        elif kind == "error":
            worker.ended = message[1]
        elif kind == "done":
            worker.finished = True

    def _retire_stats(self, worker: _Worker) -> None:
        """Fold the ended incarnation's counters into the worker's past ones."""
        with self._lock:
            worker.past, worker.live = combine_stats([worker.past, worker.live]), ProducerStats()

    def _on_exit(self, worker: _Worker) -> None:
        """A worker process ended: note it, then restart it or fail the pool."""
        self._retire_stats(worker)
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        if self._stopping.is_set():
            return
        if worker.finished and worker.ended is None:
            logger.info("producer %d finished: its source ran out", worker.index)
            return
        ended = worker.ended or WorkerError(_exit_text(worker.process.exitcode))
        if self._buffer.release_lock_of(worker.process.pid):
            logger.warning("producer %d (pid %d) died holding the buffer lock: released",
                           worker.index, worker.process.pid)
        abandoned = self._buffer.abandon_writes(worker.index)
        where = f"producer {worker.index} (pid {worker.process.pid})"
        if ended.fatal or worker.restarts >= self.settings.max_restarts:
            why = "not restarted: it would fail again" if ended.fatal else (
                f"not restarted: {worker.restarts} restarts used (max_restarts)")
            logger.error("%s failed: %s; %s%s", where, ended.text, why, _indent(ended.traceback))
            self._fail(_exception(ended), f"{where} failed: {ended.text} ({why})")
            return
        worker.restarts += 1
        logger.error("%s died: %s; restarting it (%d/%d)%s%s", where, ended.text,
                     worker.restarts, self.settings.max_restarts,
                     f"; {abandoned} half-written slot(s) abandoned" if abandoned else "",
                     _indent(ended.traceback))
        self._spawn(worker)

    def _check_heartbeats(self) -> None:
        """Kill a worker silent for too long; `_on_exit` then restarts it."""
        now = time.monotonic()
        for worker in self._workers:
            if not worker.alive or worker.ended is not None:
                continue
            if worker.last_report is None:
                silent, limit = now - worker.started, self.settings.startup_timeout_s
            else:
                silent, limit = now - worker.last_report, self.settings.heartbeat_timeout_s
            if silent > limit:
                worker.ended = WorkerError(f"no heartbeat for {silent:.1f} s (hung); killed")
                logger.warning("producer %d sent no report for %.1f s: killing it", worker.index,
                               silent)
                worker.process.kill()
            elif worker.last_stats is not None and (
                    now - worker.last_progress > self.settings.stall_timeout_s):
                self._kill_stalled(worker, now - worker.last_progress)

    def _kill_stalled(self, worker: _Worker, idle_s: float) -> None:
        """Kill a worker that reports but does nothing; `_on_exit` then restarts it."""
        doing = describe_doing(worker.live)
        worker.ended = WorkerError(f"no progress for {idle_s:.0f} s while {doing} (stalled; "
                                   "see producer.stall_timeout_s); killed")
        logger.warning("producer %d made no progress for %.0f s while %s: killing it "
                       "(producer.stall_timeout_s=%g)", worker.index, idle_s, doing,
                       self.settings.stall_timeout_s)
        self._stalls += 1
        worker.process.kill()

    def _fail(self, error: BaseException, text: str) -> None:
        self._error_text = text
        self._error = error

    def _send_all(self, message: str) -> None:
        """Send `message` to every running worker (monitor thread only)."""
        for worker in self._workers:
            if worker.alive and worker.conn is not None:
                try:
                    worker.conn.send(message)
                except OSError:  # it is dying: its sentinel will tell
                    pass

    def _shutdown(self) -> None:
        """Stop every worker: "stop" first, SIGTERM after `stop_timeout_s`, then SIGKILL."""
        self._stopping.set()  # also after a failure: a worker ending now is not restarted
        self._send_all("stop")
        deadline = time.monotonic() + self._stop_timeout_s
        while any(w.alive for w in self._workers) and time.monotonic() < deadline:
            self._poll(0.1)  # keep draining: a worker blocked on a full pipe never exits
        for worker in self._workers:
            if worker.alive:
                logger.warning("producer %d did not stop in %.1f s: terminating it",
                               worker.index, self._stop_timeout_s)
                _terminate(worker.process)
            if worker.conn is not None:
                self._drain(worker)
                if worker.conn is not None:
                    worker.conn.close()
                    worker.conn = None
        for worker in self._workers:
            self._retire_stats(worker)


def _merge_report(live: ProducerStats, report: ProducerStats) -> None:
    """Fold a worker report (cumulative totals, changed videos and their refs only) into its
    live counters."""
    live.total, live.skipped_videos = report.total, report.skipped_videos
    live.source_stats, live.last_error = report.source_stats, report.last_error
    live.paused, live.teacher = report.paused, report.teacher
    live.refs.update(report.refs)
    live.per_video.update(report.per_video)


def _exception(ended: WorkerError) -> BaseException:
    """The worker's own exception when it unpickles, with its traceback as the cause."""
    exc: BaseException | None = None
    if ended.exception is not None:
        try:
            exc = pickle.loads(ended.exception)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = ProducerFailedError(ended.text)
    if ended.traceback:
        exc.__cause__ = _RemoteTraceback(ended.traceback)
    return exc


def _indent(text: str) -> str:
    """A worker's traceback as an indented block under the parent's log line ("" if none)."""
    return "".join(f"\n    {line}" for line in text.rstrip().splitlines())


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode} without reporting an error"


def _terminate(process: multiprocessing.process.BaseProcess) -> None:
    process.terminate()
    process.join(2.0)
    if process.exitcode is None:
        process.kill()
        process.join(2.0)
