"""A labelling farm on Ray (`producer=ray`): teacher actors label shards of the stream, and the
trainer's ring buffer is fed through Ray's object store.

    python -m train.train experiment=real_cpu producer=ray producer.actors=2          # local Ray
    python -m train.train experiment=real_gpu producer=ray producer.address=auto \\
        producer.actors=16 producer.num_gpus_per_actor=1                              # a cluster

Each `LabellingActor` builds its own source shard and teacher, as a producer process does, and
runs `data.producer.label_stream` in a thread into a `ChunkSink`: the crops and labels of whole
frames are stacked into `SampleChunk`s that wait in a small queue (`queue_chunks`). When nobody
takes them, the labelling thread blocks on that queue: backpressure reaches the teacher.
`RayProducer`, in the trainer's process, keeps one `next_chunk` call in flight per actor, pushes
each chunk's samples into the ring buffer (the trainer sees the same `Batch` as with the process
pool) and paces itself against the trainer (`reads_per_overwrite`), as the pool's workers do.
Labelling GPUs and training GPUs scale apart: many actors may feed one trainer.

The stream's cursor lives in `RayProducer`, not in the actors: the videos delivered whole, and
the last frame delivered of the current one. An actor that dies (killed, out of memory, its node
lost) is replaced by one that skips those videos and frames, so nothing delivered is labelled
twice and nothing undelivered is lost (what the dead actor had not delivered is labelled again).

Nothing raw reaches the disk: a local Ray is started with object spilling off and its store in
/dev/shm (`start_local_ray`), so crops live in memory only; Ray writes only its logs to disk.
On a cluster (`address`), the cluster's own settings apply: disable spilling there too
(`automatic_object_spilling_enabled: false` in its system config).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np

from data.producer import ProducerFailedError, ProducerStats, combine_stats, label_stream
from data.ring_buffer import RingBuffer
from data.workers.worker import shard_kwargs, worker_shard
from labeler.base import Teacher, TeacherUnavailableError
from stream_pose.types import Frame, Sample
from video_sources.base import VideoSource

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class RayFarmSettings:
    """The labelling farm (conf/producer/ray.yaml).

    Attributes:
        actors: teacher actors per trainer rank (each labels its own shard).
        address: a running Ray cluster ("auto", "ray://host:10001"); None starts a local Ray
            on this machine.
        num_cpus_per_actor, num_gpus_per_actor: Ray resources each actor holds.
        object_store_mb: the local Ray's object store (in /dev/shm).
        chunk_samples: samples per chunk (whole frames: a chunk may exceed it by one frame).
        queue_chunks: chunks an actor labels ahead of the trainer before its teacher waits.
        max_restarts: replacements per actor before the run fails.
        poll_s: longest wait of one `next_chunk` call (an empty answer doubles as a heartbeat).
        stall_timeout_s: an actor that labels no frame this long (and is not held back by
            backpressure) is killed and replaced.
    """

    actors: int = 2
    address: str | None = None
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    object_store_mb: int = 512
    chunk_samples: int = 64
    queue_chunks: int = 2
    max_restarts: int = 3
    poll_s: float = 1.0
    stall_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.actors < 1 or self.chunk_samples < 1 or self.queue_chunks < 1:
            raise ValueError(f"producer.actors, chunk_samples and queue_chunks must be >= 1, got "
                             f"{self.actors}, {self.chunk_samples}, {self.queue_chunks}")
        if self.max_restarts < 0 or min(self.poll_s, self.stall_timeout_s) <= 0:
            raise ValueError("producer.max_restarts must be >= 0 and the timeouts > 0")

    workers = property(lambda self: self.actors)  # shards per rank, as ProducerSettings.workers
    shared_buffer = False  # the trainer's process writes the buffer itself

    def build(self, source: Callable[..., VideoSource], teacher: Callable[[], Teacher],
              buffer: RingBuffer, *, rank: int, world_size: int,
              reads_per_overwrite: float | None) -> RayProducer:
        """The `StreamProducer` of these settings (see `data.workers.ProducerSettings.build`)."""
        return RayProducer(source, teacher, buffer, settings=self, rank=rank,
                           world_size=world_size, reads_per_overwrite=reads_per_overwrite)


@dataclass
class SampleChunk:
    """Crops and labels of whole frames of one video, stacked (`stream_pose.types.Sample`
    fields with a leading `[N]`), as they cross Ray's object store.

    Attributes:
        image: `[N, 3, S, S]` uint8 RGB crops. kpts2d `[N, J, 2]`, kpts3d `[N, J, 3]` (metres,
            pelvis-relative), visibility `[N, J]`, K_crop `[N, 3, 3]`: float32.
        video_id: the one video they come from.
        frame_index, track_id: `[N]` int64.
        stats: the actor's counters when the chunk was sealed.
    """

    image: np.ndarray
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    visibility: np.ndarray
    K_crop: np.ndarray
    video_id: str
    frame_index: np.ndarray
    track_id: np.ndarray
    stats: ProducerStats | None = None

    @staticmethod
    def stack(samples: list[Sample]) -> SampleChunk:
        """One chunk of samples of one video (in order)."""
        return SampleChunk(
            np.stack([s.image for s in samples]), np.stack([s.kpts2d for s in samples]),
            np.stack([s.kpts3d for s in samples]), np.stack([s.visibility for s in samples]),
            np.stack([s.K_crop for s in samples]), samples[0].video_id,
            np.array([s.frame_index for s in samples], np.int64),
            np.array([s.track_id for s in samples], np.int64))

    def samples(self) -> Iterator[Sample]:
        """The samples again (views into the chunk's arrays)."""
        for i in range(len(self.frame_index)):
            yield Sample(self.image[i], self.kpts2d[i], self.kpts3d[i], self.visibility[i],
                         self.K_crop[i], self.video_id, int(self.frame_index[i]),
                         int(self.track_id[i]))

    @property
    def last_frame(self) -> int:
        return int(self.frame_index[-1])


@dataclass(frozen=True)
class Heartbeat:
    """`next_chunk`'s answer when no chunk was ready in time: the actor's counters."""

    stats: ProducerStats
    finished: bool = False  # its shard ran out and every chunk was taken
    error: BaseException | None = None  # the labelling thread's fatal error


class ChunkSink:
    """What `label_stream` pushes into inside an actor: samples gathered into chunks of whole
    frames of one video, sealed into a bounded queue (`put` blocks while it is full).

    Args:
        crop_size: S, the trainer's buffer's crop side (`RingBuffer.crop_size`).
        chunk_samples: a chunk is sealed at the first frame boundary at or past this size, and
            at every change of video.
        queue_chunks: sealed chunks waiting to be taken.
    """

    def __init__(self, crop_size: int, chunk_samples: int, queue_chunks: int) -> None:
        self.crop_size, self.chunk_samples = crop_size, chunk_samples
        self.ready: queue.Queue[SampleChunk] = queue.Queue(maxsize=queue_chunks)
        self.stop = threading.Event()
        self._open: list[Sample] = []
        self.stats: ProducerStats | None = None

    def push(self, sample: Sample) -> None:
        """Add one sample; seal the open chunk first at a frame or video boundary."""
        if self._open:
            last = self._open[-1]
            new_video = sample.video_id != last.video_id
            new_frame = new_video or sample.frame_index != last.frame_index
            if new_video or (new_frame and len(self._open) >= self.chunk_samples):
                self.seal()
        self._open.append(sample)

    def seal(self) -> None:
        """Queue the open chunk (blocks while the queue is full, until `stop`)."""
        if not self._open:
            return
        chunk = SampleChunk.stack(self._open)
        self._open = []
        chunk.stats = self.stats.copy() if self.stats is not None else None
        while not self.stop.is_set():
            try:
                self.ready.put(chunk, timeout=0.2)
                return
            except queue.Full:
                continue

    def wait_for_reads(self, *_: Any) -> float:
        """Pacing happens in the trainer's process (`RayProducer`); never waits here."""
        return 0.0


class _ResumedSource:
    """A source that skips the frames of `video_id` up to `last_frame` (delivered already)."""

    def __init__(self, source: VideoSource, video_id: str | None, last_frame: int) -> None:
        self.source, self.video_id, self.last_frame = source, video_id, last_frame
        self.kind = getattr(source, "kind", None)

    @property
    def stats(self):
        return getattr(self.source, "stats", None)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            if frame.video.id == self.video_id and frame.index <= self.last_frame:
                continue
            yield frame


class LabellingActor:
    """One teacher on one shard, labelling into a `ChunkSink` in a thread (a Ray actor class;
    `RayProducer` wraps it with `ray.remote`).

    Args:
        source, teacher: picklable factories, as for the process pool.
        crop_size: S of the trainer's buffer.
        shard, num_shards: this actor's part of the stream.
        skip_ids: videos delivered already (a replaced actor's, a resumed run's).
        resume: (video id, last frame delivered) of a video to continue, or None.
        chunk_samples, queue_chunks: see `RayFarmSettings`.
    """

    def __init__(self, source: Callable[..., VideoSource], teacher: Callable[[], Teacher],
                 crop_size: int, shard: int, num_shards: int, skip_ids: frozenset[str],
                 resume: tuple[str, int] | None, chunk_samples: int, queue_chunks: int) -> None:
        kwargs = shard_kwargs(shard, num_shards)
        if skip_ids:
            kwargs["skip_ids"] = skip_ids
        self.source = _ResumedSource(source(split="train", **kwargs), *(resume or (None, -1)))
        self.teacher = teacher()
        self.sink = ChunkSink(crop_size, chunk_samples, queue_chunks)
        self.stats = ProducerStats()
        self.sink.stats = self.stats
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stream-pose-ray-label",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            label_stream(self.source, self.teacher, self.sink, stop=self.sink.stop,
                         stats=self.stats)
            self.sink.seal()
        except BaseException as exc:  # handed to the trainer by next_chunk
            self.error = exc
        finally:
            self.done.set()

    def next_chunk(self, timeout_s: float) -> SampleChunk | Heartbeat:
        """The next sealed chunk, or a `Heartbeat` when none came within `timeout_s`."""
        try:
            return self.sink.ready.get(timeout=timeout_s)
        except queue.Empty:
            finished = self.done.is_set() and self.sink.ready.empty()
            error = self.error
            if isinstance(error, TeacherUnavailableError):
                error = TeacherUnavailableError(str(error))  # drop an unpicklable cause
            return Heartbeat(self.stats.copy(), finished and error is None, error)

    def pid(self) -> int:
        """The actor's process id (for audits and fault injection)."""
        return os.getpid()

    def close(self) -> None:
        """Stop labelling and release the teacher."""
        self.sink.stop.set()
        self.thread.join(10.0)
        close = getattr(self.teacher, "close", None)
        if close is not None:
            close()


@dataclass
class _Slot:
    """The trainer's view of one actor, across replacements: its shard and cursor."""

    index: int
    shard: int
    num_shards: int
    actor: Any = None
    call: Any = None  # the ObjectRef of its `next_chunk` in flight
    delivered: list[str] = field(default_factory=list)  # videos, in order (the last may be open)
    last_frame: int = -1  # of delivered[-1]
    past: ProducerStats = field(default_factory=ProducerStats)
    live: ProducerStats = field(default_factory=ProducerStats)
    restarts: int = 0
    finished: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    last_frames: int = 0
    paused: bool = False


def start_local_ray(settings: RayFarmSettings) -> bool:
    """`ray.init` on this machine, with the object store in /dev/shm and spilling off, so that
    no crop reaches the disk; or connect to `settings.address`. Does nothing if Ray is up.

    Returns:
        True when this call started (or connected) Ray, False when it was up already.

    Raises:
        ProducerFailedError: Ray is not installed, or /dev/shm cannot hold the object store.
    """
    try:
        import ray
    except ImportError as exc:
        raise ProducerFailedError("producer=ray needs Ray: pip install 'stream-pose[ray]'") from exc
    if ray.is_initialized():
        return False
    if settings.address:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=True)
        return True
    need = settings.object_store_mb * 1024 * 1024
    if not os.path.isdir(SHM_DIR) or shutil.disk_usage(SHM_DIR).free < need:
        raise ProducerFailedError(
            f"{SHM_DIR} cannot hold a {settings.object_store_mb} MB object store; lower "
            "producer.object_store_mb (crops must not spill to disk)")
    ray.init(num_cpus=max(os.cpu_count() or 1, int(settings.actors * settings.num_cpus_per_actor)),
             include_dashboard=False, object_store_memory=need, _plasma_directory=SHM_DIR,
             _system_config={"automatic_object_spilling_enabled": False},
             log_to_driver=True, logging_level=logging.WARNING)
    return True


class RayProducer:
    """`actors` Ray actors labelling this rank's shards into `buffer` (a `StreamProducer`).

    Args:
        source, teacher: picklable factories (Ray pickles them with cloudpickle).
        buffer: the trainer's ring buffer (process-local or shared).
        settings: `RayFarmSettings`.
        rank, world_size: this trainer's place among DDP ranks; actor a of rank r labels shard
            `worker_shard(r, a, actors, world_size)`, as the pool's workers do.
        reads_per_overwrite: pacing against the trainer (see `data.producer.label_stream`).
        skip_ids: videos a resumed run used already.
    """

    def __init__(self, source: Callable[..., VideoSource], teacher: Callable[[], Teacher],
                 buffer: RingBuffer, *, settings: RayFarmSettings = RayFarmSettings(),
                 rank: int = 0, world_size: int = 1, reads_per_overwrite: float | None = None,
                 skip_ids: frozenset[str] = frozenset()) -> None:
        self.settings, self.buffer = settings, buffer
        self._source, self._teacher, self._skip = source, teacher, frozenset(skip_ids)
        self._reads_per_overwrite = reads_per_overwrite
        self._slots = [_Slot(a, *worker_shard(rank, a, settings.actors, world_size))
                       for a in range(settings.actors)]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._ended: str | None = None
        self._stalls = 0
        self._owns_ray = False  # shut Ray down on stop only if start started it
        self._thread = threading.Thread(target=self._feed, name="stream-pose-ray-feed",
                                        daemon=True)

    # StreamProducer

    def start(self) -> None:
        """Start Ray (if needed), the actors and the feeding thread.

        Raises:
            RuntimeError: started before.
            ProducerFailedError: Ray cannot start here.
        """
        if self._thread.ident is not None:
            raise RuntimeError("the Ray producer was started already")
        self._owns_ray = start_local_ray(self.settings)
        for slot in self._slots:
            self._launch(slot)
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding and kill the actors (and the Ray that `start` started); idempotent."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(self.settings.poll_s + 10.0)
        import ray

        for slot in self._slots:
            if slot.actor is not None:
                try:
                    ray.get(slot.actor.close.remote(), timeout=10)
                except Exception:  # a dead or busy actor: killed below either way
                    pass
                ray.kill(slot.actor)
                slot.actor = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def stats(self) -> ProducerStats:
        return combine_stats(self.worker_stats())

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._slots)

    @property
    def stalls(self) -> int:
        return self._stalls

    def worker_stats(self) -> list[ProducerStats]:
        """Counters per actor slot (its replaced actors' included), in shard order."""
        with self._lock:
            return [combine_stats([s.past, s.live]) for s in self._slots]

    def refresh_stats(self, timeout_s: float = 5.0) -> bool:
        """Counters arrive with every chunk and heartbeat (every `poll_s`): nothing to ask."""
        return self._thread.is_alive() or self._ended is not None

    def failure_reason(self) -> str | None:
        if self._error is not None:
            return f"the Ray labelling farm failed: {self._error}"
        return self._ended

    def cursor(self) -> dict[str, tuple[list[str], int]]:
        """What each shard delivered: {"<shard>/<num_shards>": (videos in order, last frame of
        the last one)}: a replaced actor starts after it."""
        with self._lock:
            return {f"{s.shard}/{s.num_shards}": (list(s.delivered), s.last_frame)
                    for s in self._slots}

    # The feeding thread

    def _launch(self, slot: _Slot) -> None:
        """A new actor for `slot`, after its cursor, with its first call in flight."""
        import ray

        remote = ray.remote(num_cpus=self.settings.num_cpus_per_actor,
                             num_gpus=self.settings.num_gpus_per_actor,
                             max_restarts=0)(LabellingActor)
        done = frozenset(slot.delivered[:-1]) | self._skip
        resume = (slot.delivered[-1], slot.last_frame) if slot.delivered else None
        slot.actor = remote.remote(self._source, self._teacher, self.buffer.crop_size, slot.shard,
                                   slot.num_shards, done, resume, self.settings.chunk_samples,
                                   self.settings.queue_chunks)
        slot.call = slot.actor.next_chunk.remote(self.settings.poll_s)
        slot.last_progress = time.monotonic()

    def _feed(self) -> None:
        import ray

        try:
            while not self._stopping.is_set():
                calls = {s.call: s for s in self._slots if s.call is not None}
                if not calls:
                    self._ended = "the Ray labelling farm ran out of videos"
                    return
                ready, _ = ray.wait(list(calls), num_returns=1, timeout=self.settings.poll_s)
                for ref in ready:
                    self._answer(calls[ref], ref)
                self._check_stalls()
        except BaseException as exc:
            logger.error("Ray labelling farm failed: %s", exc)
            self._error = exc

    def _answer(self, slot: _Slot, ref: Any) -> None:
        """Take one answer of `slot`'s actor: push a chunk, note a heartbeat, or replace it."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        slot.call = None
        try:
            answer = ray.get(ref)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            self._replace(slot, f"actor died: {type(exc).__name__}")
            return
        if isinstance(answer, Heartbeat):
            if answer.error is not None:
                raise answer.error
            self._note(slot, answer.stats)
            if answer.finished:
                slot.finished = True
                return
        else:
            self._push(slot, answer)
        slot.call = slot.actor.next_chunk.remote(self.settings.poll_s)

    def _push(self, slot: _Slot, chunk: SampleChunk) -> None:
        for sample in chunk.samples():
            self.buffer.push(sample)
        with self._lock:
            if not slot.delivered or slot.delivered[-1] != chunk.video_id:
                slot.delivered.append(chunk.video_id)
            slot.last_frame = chunk.last_frame
        if chunk.stats is not None:
            self._note(slot, chunk.stats)
        if self._reads_per_overwrite is not None:
            slot.paused = True
            self.buffer.wait_for_reads(self._reads_per_overwrite, self._stopping)
            slot.paused = False
            slot.last_progress = time.monotonic()

    def _note(self, slot: _Slot, stats: ProducerStats) -> None:
        with self._lock:
            slot.live = stats
        if stats.total.frames != slot.last_frames or stats.paused:
            slot.last_frames, slot.last_progress = stats.total.frames, time.monotonic()

    def _check_stalls(self) -> None:
        import ray

        now = time.monotonic()
        for slot in self._slots:
            if slot.finished or slot.actor is None or slot.paused:
                continue
            if now - slot.last_progress > self.settings.stall_timeout_s:
                self._stalls += 1
                ray.kill(slot.actor)
                self._replace(slot, f"no frame labelled in {self.settings.stall_timeout_s:.0f} s")

    def _replace(self, slot: _Slot, why: str) -> None:
        """Start a new actor for `slot` after its cursor, or fail when restarts are used up."""
        if slot.restarts >= self.settings.max_restarts:
            raise ProducerFailedError(f"Ray actor for shard {slot.shard}/{slot.num_shards}: "
                                      f"{why}; {slot.restarts} restarts used up")
        with self._lock:
            slot.past = combine_stats([slot.past, _delivered_only(slot.live, slot)])
            slot.live = ProducerStats()
        slot.restarts += 1
        logger.warning("Ray actor for shard %d/%d: %s; restarting after video %s frame %d",
                       slot.shard, slot.num_shards, why,
                       slot.delivered[-1] if slot.delivered else "-", slot.last_frame)
        slot.last_frames = 0
        self._launch(slot)


def _delivered_only(stats: ProducerStats, slot: _Slot) -> ProducerStats:
    """A dead actor's counters for the videos it delivered (the rest is labelled again)."""
    delivered = set(slot.delivered)
    return replace(stats, per_video={v: s for v, s in stats.per_video.items() if v in delivered},
                   refs={v: r for v, r in stats.refs.items() if v in delivered})
