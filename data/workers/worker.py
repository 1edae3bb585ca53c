"""The worker side of the producer processes: what one process runs, and what it is given.

`run_worker` is the entry point of a spawned producer process (`data.workers.pool.ProducerPool`
starts it): it builds its own source shard and teacher from the picklable factories of its
`WorkerSpec`, attaches to the shared `RingBuffer` and runs `data.producer.label_stream`. It talks
to the parent through one pipe: counters (which double as heartbeats), log records, and finally
"done" or a `WorkerError`. Pipes, not a shared queue: a worker killed while holding a queue's
lock would block the others.

Shards: worker w of rank r labels shard r * workers + w of world_size * workers (sources take
`shard` and `num_shards`), so ranks and workers never label the same video (`worker_shard`).

A spawned worker re-imports this package and the parent's `__main__` (CPython's spawn), so it
imports neither torch, Lightning nor any teacher library.
"""

from __future__ import annotations

import logging
import pickle
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Callable

from data.producer import ProducerStats, _close_quietly, label_stream
from data.ring_buffer import BufferHandle, RingBuffer
from labeler.base import Teacher, TeacherUnavailableError
from video_sources.base import VideoSource


def worker_shard(rank: int, worker: int, workers: int, world_size: int) -> tuple[int, int]:
    """(shard, num_shards) of producer `worker` of `workers` on DDP rank `rank` of `world_size`."""
    return rank * workers + worker, world_size * workers


def shard_kwargs(shard: int, num_shards: int) -> dict[str, int]:
    """Source keyword arguments for one shard; none when there is only one (any source works)."""
    return {} if num_shards == 1 else {"shard": shard, "num_shards": num_shards}



@dataclass(frozen=True)
class WorkerSpec:
    """Everything a producer process needs, picklable.

    Attributes:
        source: factory called as `source(split="train", **shard_kwargs(shard, num_shards))`.
        teacher: factory of the worker's own teacher.
        buffer: handle of the shared ring buffer; it carries the crop side
            (`BufferHandle.crop_size`).
        shard, num_shards: this worker's part of the stream.
        reads_per_overwrite: pacing against the trainer (see `label_stream`).
        heartbeat_s: seconds between reports.
        log_level: level of the worker's root logger (records are forwarded to the parent).
    """

    source: Callable[..., VideoSource]
    teacher: Callable[[], Teacher]
    buffer: BufferHandle
    shard: int
    num_shards: int
    reads_per_overwrite: float | None
    heartbeat_s: float
    log_level: int


@dataclass(frozen=True)
class WorkerError:
    """Why a worker ended: its error text and traceback, and whether a restart is pointless.

    Attributes:
        text: "ExceptionType: message", or what the parent saw (signal, missing heartbeat).
        traceback: the worker's formatted traceback ("" when it sent none).
        fatal: True when a restart would fail the same way.
        exception: the pickled exception, if it pickles.
    """

    text: str
    traceback: str = ""
    fatal: bool = False
    exception: bytes | None = None


class _Channel:
    """The worker's end of its pipe; sends are locked (the heartbeat and main threads both send)."""

    def __init__(self, conn: Connection):
        self.conn, self._lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self.conn.send(message)

    def stop_requested(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for "stop"; True on it, or when the parent is gone (EOF)."""
        try:
            return self.conn.poll(timeout_s) and self.conn.recv() == "stop"
        except (EOFError, OSError):
            return True


class _LogForwarder(logging.Handler):
    """Sends the worker's log records to the parent, which logs them under the same names."""

    def __init__(self, channel: _Channel):
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        try:
            self.channel.send(("log", {"name": record.name, "levelno": record.levelno,
                                       "levelname": record.levelname, "msg": text}))
        except OSError:  # the parent is gone; nobody to tell
            pass


class _Heartbeat(threading.Thread):
    """Reports the worker's counters every `every_s`, and at once on any other message from the
    parent ("report": `ProducerPool.refresh_stats`); watches the pipe for "stop".

    Reports carry only the per-video counters that changed since the last one (and the
    `VideoRef`s of those videos), so a long stream of short videos does not make each report
    longer. On "stop" (or the parent's death) it sets `stop` and, after a second, closes the
    source, which wakes a source resting between passes.
    """

    def __init__(self, channel: _Channel, stats: ProducerStats, stop: threading.Event,
                 every_s: float):
        super().__init__(name="stream-pose-heartbeat", daemon=True)
        self.channel, self.stats, self.stop_event, self.every_s = channel, stats, stop, every_s
        self.source: VideoSource | None = None
        self._done = threading.Event()
        self._sent: dict[str, int] = {}  # video id -> frames at the last report

    def run(self) -> None:
        while not self._done.is_set():
            self.report()
            if self.stop_event.is_set():
                self._done.wait(self.every_s)
            elif self.channel.stop_requested(self.every_s):
                self.stop_event.set()
                if not self._done.wait(1.0) and self.source is not None:
                    _close_quietly(self.source, "source")

    def finish(self) -> None:
        """Stop reporting, then send the last counters."""
        self._done.set()
        self.join()
        self.report()

    def report(self) -> None:
        per_video = dict(self.stats.per_video)  # one atomic copy under the GIL
        changed = {v: replace(s) for v, s in per_video.items()
                   if self._sent.get(v) != s.frames}  # copies of the few that changed only
        self._sent.update({v: s.frames for v, s in changed.items()})
        refs = dict(self.stats.refs)  # after per_video: label_stream sets a ref first
        snap = replace(self.stats, per_video={}, refs={}).copy()
        snap.per_video = changed
        snap.refs = {v: refs[v] for v in changed if v in refs}
        try:
            self.channel.send(("stats", snap))
        except OSError:
            self.stop_event.set()  # the parent is gone: stop labelling


def run_worker(spec: WorkerSpec, index: int, conn: Connection) -> None:
    """Entry point of producer process `index`: label `spec`'s shard into the shared buffer.

    Sends ("stats", ProducerStats) reports, ("log", record) messages and finally ("done",) or
    ("error", WorkerError). Ignores SIGINT: on Ctrl-C the parent stops its workers itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(conn)
    root = logging.getLogger()
    root.handlers = [_LogForwarder(channel)]
    root.setLevel(spec.log_level)
    stats, stop = ProducerStats(), threading.Event()
    heartbeat = _Heartbeat(channel, stats, stop, spec.heartbeat_s)
    heartbeat.start()
    outcome: tuple = ("done",)
    built, buffer, teacher, source = False, None, None, None
    try:
        buffer = RingBuffer.attach(spec.buffer, writer=index)
        teacher = spec.teacher()
        source = spec.source(split="train", **shard_kwargs(spec.shard, spec.num_shards))
        heartbeat.source, built = source, True
        label_stream(source, teacher, buffer, stop=stop, stats=stats,
                     reads_per_overwrite=spec.reads_per_overwrite)
    except BaseException as exc:
        # Building the source or teacher would fail the same way again: no restart.
        outcome = ("error", _error_report(exc, fatal=not built))
    finally:
        heartbeat.finish()
        for obj, what in ((teacher, "teacher"), (source, "source"), (buffer, "buffer")):
            if obj is not None:
                _close_quietly(obj, what)
    try:
        channel.send(outcome)
    except OSError:  # the parent is gone
        pass
    if outcome[0] == "error":
        sys.exit(1)


def _error_report(exc: BaseException, fatal: bool) -> WorkerError:
    try:
        pickled = pickle.dumps(exc)
    except Exception:  # an exception with unpicklable state: the text will do
        pickled = None
    return WorkerError(
        text=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        fatal=fatal or isinstance(exc, TeacherUnavailableError),
        exception=pickled,
    )

