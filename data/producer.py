"""The labelling loop: frames from a source, people from a teacher, crops into a ring buffer.

`label_stream` is the synchronous loop (used by `pipeline.py --dry-run` and to build the frozen
validation set); `Producer` runs it in a daemon thread beside the trainer, and
`data.workers.ProducerPool` in spawned processes. Both are `StreamProducer`s, the one interface
the DataModule, the callbacks and the benchmarks use. One bad frame or video never ends the stream:
teacher errors are logged (rate-limited), counted and skipped. Only a `TeacherUnavailableError`
is fatal. The source is iterated a few frames ahead in a background thread (`data.prefetch`), so
that decoding overlaps the teacher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Generator, Iterable, Iterator, Protocol

from data.prefetch import PrefetchIterator
from data.ring_buffer import RingBuffer
from labeler.base import Teacher, TeacherUnavailableError
from stream_pose.codec import crop_sample
from stream_pose.types import Frame, PersonLabel, VideoRef
from video_sources.base import SourceStats, VideoSource

logger = logging.getLogger(__name__)

# Frames decoded ahead of the teacher (data.prefetch): enough to ride out a slow frame (a
# keyframe, a new video's first frame), few because each one is a whole decoded frame.
PREFETCH_FRAMES = 2
# Sources whose frames are made in Python, holding the GIL (`VideoSource.kind`): a second thread
# only adds GIL contention there. Measured on 2 cores, synthetic frames with the oracle: 0.81 ms
# per frame labelled in one thread, 1.00 ms (1.25 CPU ms) with the source in its own.
GIL_BOUND_SOURCES = frozenset({"synthetic"})
LOGGED_ERRORS_PER_VIDEO = 3  # teacher errors logged in full per video; the rest are summarised
SKIP_AFTER_FAILURES = 10  # a video whose first N frames all fail is skipped


class ProducerFailedError(RuntimeError):
    """The producers stopped for good (crash, restarts used up); the message says why."""


class ProducerStalledError(ProducerFailedError):
    """A producer thread made no progress for `stall_timeout_s` (`Producer`); a thread cannot be
    killed or restarted, so the run fails with where it was stuck."""


@dataclass
class LabelStats:
    """Labelling counters, for one video or for the whole stream.

    Attributes:
        frames: frames given to the teacher.
        frames_with_person: frames where it found at least one person.
        persons: labels returned.
        visible_joints: sum over labels of visible joints (see `mean_visible_joints`).
        samples_pushed: crops written to the buffer.
        rejected: labels dropped because no crop could be cut (degenerate person box) or kept
            (a JPEG crop over its slot budget).
        errors: frames on which `teacher.label` raised.
        teacher_s: seconds inside `teacher.label`.
        crop_s: seconds cropping and pushing.
        wall_s: seconds of the whole loop, waits for the source included, pauses excluded.
        source_wait_s: seconds the loop waited for the source's next frame: all of decoding
            when it decodes in the loop's thread, only what the teacher's time did not hide
            when it decodes ahead (`prefetch_frames`).
        paused_s: seconds the producer waited for the trainer to read (see `reads_per_overwrite`).
    """

    frames: int = 0
    frames_with_person: int = 0
    persons: int = 0
    visible_joints: int = 0
    samples_pushed: int = 0
    rejected: int = 0
    errors: int = 0
    teacher_s: float = 0.0
    crop_s: float = 0.0
    wall_s: float = 0.0
    source_wait_s: float = 0.0
    paused_s: float = 0.0

    @property
    def mean_visible_joints(self) -> float:
        """Visible joints per labelled person (of 27)."""
        return self.visible_joints / self.persons if self.persons else 0.0

    @property
    def teacher_fps(self) -> float:
        """Frames per second of the teacher alone."""
        return self.frames / self.teacher_s if self.teacher_s > 0 else 0.0

    @property
    def label_fps(self) -> float:
        """Frames per second end to end (decode, teacher, crop, push)."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def __add__(self, other: LabelStats) -> LabelStats:
        """Field-wise sum (e.g. over producer processes; the fps properties become means)."""
        return LabelStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})


@dataclass
class ProducerStats:
    """What a labelling run did.

    Attributes:
        total: counters over the whole stream.
        per_video: counters per video id, in the order the videos arrived.
        refs: where each video of `per_video` came from (its `VideoRef`: kind, uri, licence,
            attribution), by id; metadata only, for the models' provenance manifests
            (`stream_pose.provenance`). Set before the video's `per_video` entry.
        teacher: name of the teacher that labelled (`Teacher.name`), "" before the first video.
        skipped_videos: ids of videos skipped because the teacher failed on all their first frames.
        source_stats: the source's own counters (decoded, skipped videos), when it has them.
        last_error: text of the last teacher error, if any.
        paused: True while the producer waits for the trainer to read (`reads_per_overwrite`):
            no frames then, and no stall either.
    """

    total: LabelStats = field(default_factory=LabelStats)
    per_video: dict[str, LabelStats] = field(default_factory=dict)
    refs: dict[str, VideoRef] = field(default_factory=dict)
    teacher: str = ""
    skipped_videos: list[str] = field(default_factory=list)
    source_stats: SourceStats | None = None
    last_error: str | None = None
    paused: bool = False

    def copy(self) -> ProducerStats:
        """A copy that later updates from the labelling thread do not change."""
        src = self.source_stats
        if src is not None:
            src = dataclasses.replace(src, skipped=list(src.skipped))
        return ProducerStats(
            total=dataclasses.replace(self.total),
            # dict() first: one atomic copy under the GIL, safe while the thread inserts
            per_video={k: dataclasses.replace(v) for k, v in dict(self.per_video).items()},
            refs=dict(self.refs),  # VideoRef is frozen: the dict copy is enough
            teacher=self.teacher,
            skipped_videos=list(self.skipped_videos),
            source_stats=src,
            last_error=self.last_error,
            paused=self.paused,
        )


class StreamProducer(Protocol):
    """What keeps the training buffer filled: `Producer` (a thread) or `ProducerPool` (processes).

    `StreamDataModule` starts one, waits on `failure_reason`, reads its counters for telemetry
    and checkpoints, and stops it; nothing else may be assumed of it.
    """

    def start(self) -> None:
        """Start labelling into the buffer (once; a second call raises `RuntimeError`)."""

    def stop(self) -> None:
        """Stop labelling and release the sources and teachers; idempotent."""

    @property
    def is_alive(self) -> bool:
        """True while some labelling thread or process runs."""

    @property
    def error(self) -> BaseException | None:
        """The exception that ended labelling for good, if one did."""

    @property
    def stats(self) -> ProducerStats:
        """All counters combined (a copy)."""

    @property
    def restarts(self) -> int:
        """Labelling processes restarted after dying (always 0 for a thread)."""

    @property
    def stalls(self) -> int:
        """Of those, processes killed for making no progress (always 0 for a thread)."""

    def worker_stats(self) -> list[ProducerStats]:
        """Counters of each worker, in worker order (a worker labels shard
        `data.workers.worker_shard(rank, w, len(list), world_size)`); copies."""

    def refresh_stats(self, timeout_s: float = 5.0) -> bool:
        """Bring `stats` and `worker_stats` up to date now, waiting at most `timeout_s`;
        False when some worker did not answer in time."""

    def failure_reason(self) -> str | None:
        """Why no more samples will come (crash, the stream ran out), or None while it runs
        (or was stopped); meant as `RingBuffer.wait_for(abort=...)`."""


def progress_mark(stats: ProducerStats) -> tuple:
    """Counters that move while a producer works: frames labelled, videos skipped and (a video
    can take a while to fetch) frames decoded, videos read and skipped by its source. A producer
    whose mark stays the same, and which is not paused for the trainer, is stalled."""
    src = stats.source_stats
    return (stats.total.frames, len(stats.skipped_videos),
            *((src.frames, src.videos_ok, src.videos_skipped) if src is not None else ()))


def describe_doing(stats: ProducerStats) -> str:
    """What a producer was at, from its counters: for a stall message."""
    src = stats.source_stats
    video = src.current if src is not None and src.current else (
        next(reversed(stats.per_video), None))
    where = f"on video {video}" if video else "before its first video"
    return f"{where} ({stats.total.frames} frames labelled)"


def combine_stats(parts: Iterable[ProducerStats]) -> ProducerStats:
    """One `ProducerStats` for several producers (or several runs of one), in the given order.

    Totals, per-video and source counters add up (a video labelled by two parts sums); refs
    are united (the first part's wins); skipped videos are merged in order, without repeats;
    `last_error` and `teacher` are the last part's that has one.
    """
    out = ProducerStats()
    for part in parts:
        out.total = out.total + part.total
        for vid, ref in part.refs.items():
            out.refs.setdefault(vid, ref)
        for vid, st in part.per_video.items():
            out.per_video[vid] = out.per_video.get(vid, LabelStats()) + st
        out.teacher = part.teacher or out.teacher
        out.skipped_videos += [v for v in part.skipped_videos if v not in out.skipped_videos]
        out.source_stats = _add_source_stats(out.source_stats, part.source_stats)
        out.last_error = part.last_error or out.last_error
    return out


def _add_source_stats(a: SourceStats | None, b: SourceStats | None) -> SourceStats | None:
    if a is None or b is None:
        return a or b
    return SourceStats(videos_ok=a.videos_ok + b.videos_ok,
                       videos_skipped=a.videos_skipped + b.videos_skipped,
                       frames=a.frames + b.frames, skipped=[*a.skipped, *b.skipped],
                       current=b.current or a.current)


class _VideoState:
    """One pass over one video: its id, its counters, its errors so far, whether it is skipped."""

    def __init__(self, frame: Frame, stats: LabelStats, skip: bool):
        self.id, self.last_index, self.stats = frame.video.id, frame.index, stats
        self.frames = self.successes = self.errors = 0  # this pass only (a looped video repeats)
        self.skip = skip

    def is_new(self, frame: Frame) -> bool:
        """A new video starts when the id changes or the index goes back (a looped list)."""
        return frame.video.id != self.id or frame.index <= self.last_index


def label_stream(
    source: VideoSource,
    teacher: Teacher,
    buffer: RingBuffer,
    *,
    stop: threading.Event | None = None,
    stats: ProducerStats | None = None,
    max_samples: int | None = None,
    reads_per_overwrite: float | None = None,
    prefetch_frames: int | None = None,
) -> ProducerStats:
    """Label every frame of `source` with `teacher` and push one crop per person into `buffer`.

    Calls `teacher.reset()` before the first frame of every video. A frame on which the teacher
    raises is logged (the first few per video, then a summary), counted and skipped; a video whose
    first `SKIP_AFTER_FAILURES` frames all fail is skipped to its end.

    Args:
        source: frames, video after video.
        teacher: labels one frame at a time.
        buffer: where the crops go; crops are cut to its side `buffer.crop_size` (S pixels),
            the one owner of that setting.
        stop: when set (anything with `is_set()`), the loop returns after the current frame.
        stats: counters to add to (a `Producer` passes its live ones); default: new ones.
        max_samples: return once this call has pushed at least this many samples.
        reads_per_overwrite: once the buffer is full, wait after each frame until the trainer
            has read this many samples per overwritten one (`RingBuffer.wait_for_reads`);
            None never waits (a dry run has no reader).
        prefetch_frames: frames the source decodes ahead in a background thread
            (`data.prefetch`), overlapping decoding with the teacher; 0 decodes in this
            thread, between teacher calls; None: `default_prefetch(source)`.

    Returns:
        The counters, with `source_stats` taken from the source (which, decoding ahead, may
        count up to `prefetch_frames` + 1 frames the teacher has not labelled yet), `teacher`
        its name and `refs` every video's `VideoRef`.

    Raises:
        TeacherUnavailableError: the teacher cannot run at all.
        ValueError: if prefetch_frames < 0.
        Whatever the source raises (re-raised in this thread when it decodes ahead).
    """
    prefetch_frames = default_prefetch(source) if prefetch_frames is None else prefetch_frames
    if prefetch_frames < 0:
        raise ValueError(f"prefetch_frames must be >= 0, got {prefetch_frames}")
    stats = stats if stats is not None else ProducerStats()
    stats.source_stats = getattr(source, "stats", None)
    stats.teacher = str(getattr(teacher, "name", "") or type(teacher).__name__)
    enough = None if max_samples is None else stats.total.samples_pushed + max_samples
    video: _VideoState | None = None
    tick = time.perf_counter()
    with _frames(source, prefetch_frames, stop) as frames:
        for frame in frames:
            waited = time.perf_counter() - tick
            if stop is not None and stop.is_set():
                break
            if video is None or video.is_new(frame):
                _end_video(video)
                video = _start_video(frame, teacher, stats)
            video.last_index = frame.index
            if not video.skip:
                _label_frame(frame, teacher, buffer, video, stats)
            now = time.perf_counter()
            _count((video.stats, stats.total), wall_s=now - tick, source_wait_s=waited)
            tick = now
            if enough is not None and stats.total.samples_pushed >= enough:
                break
            if reads_per_overwrite is not None:
                stats.paused = True
                try:
                    stats.total.paused_s += buffer.wait_for_reads(reads_per_overwrite, stop)
                finally:
                    stats.paused = False
                tick = time.perf_counter()
    _end_video(video)
    return stats


def default_prefetch(source: VideoSource) -> int:
    """Frames to decode ahead for `source`: `PREFETCH_FRAMES`, or 0 for the sources in
    `GIL_BOUND_SOURCES` (by `source.kind`), whose frames a second thread cannot overlap."""
    return 0 if getattr(source, "kind", None) in GIL_BOUND_SOURCES else PREFETCH_FRAMES


def _frames(source: VideoSource, prefetch_frames: int,
            stop: threading.Event | None) -> ContextManager[Iterator[Frame]]:
    """The source's frames, decoded `prefetch_frames` ahead in a thread, or in this one (0).

    Either way, leaving the context closes the source's iterator (and with it the decoder).
    """
    if prefetch_frames > 0:
        return PrefetchIterator(source, prefetch_frames, stop=stop)
    return contextlib.closing(_inline(source))


def _inline(source: VideoSource) -> Generator[Frame, None, None]:
    yield from source  # closing this generator closes the source's iterator too (PEP 380)


def _start_video(frame: Frame, teacher: Teacher, stats: ProducerStats) -> _VideoState:
    vid = frame.video.id
    skip = vid in stats.skipped_videos  # the teacher failed on it before: don't retry each loop
    if not skip:
        teacher.reset()
    stats.refs.setdefault(vid, frame.video)  # before per_video: a report never lacks a ref
    return _VideoState(frame, stats.per_video.setdefault(vid, LabelStats()), skip)


def _end_video(video: _VideoState | None) -> None:
    """Summarise the errors that were counted but not logged."""
    if video is not None and video.errors > LOGGED_ERRORS_PER_VIDEO:
        logger.warning(
            "video %s: teacher failed on %d of %d frames (%d not logged)",
            video.id, video.errors, video.frames, video.errors - LOGGED_ERRORS_PER_VIDEO,
        )


def _label_frame(
    frame: Frame,
    teacher: Teacher,
    buffer: RingBuffer,
    video: _VideoState,
    stats: ProducerStats,
) -> None:
    """Label one frame and push its crops, updating the video's and the total counters."""
    counters = (video.stats, stats.total)
    video.frames += 1
    t0 = time.perf_counter()
    try:
        labels = teacher.label(frame)
    except TeacherUnavailableError:
        raise
    except Exception as exc:  # one bad frame must not end the stream
        _count(counters, frames=1, errors=1, teacher_s=time.perf_counter() - t0)
        video.errors += 1
        stats.last_error = f"{type(exc).__name__}: {exc}"
        _on_teacher_error(frame, video, stats, exc)
        return
    t1 = time.perf_counter()
    video.successes += 1
    pushed, rejected = _push_crops(frame, labels, buffer)
    _count(
        counters,
        frames=1,
        frames_with_person=int(bool(labels)),
        persons=len(labels),
        visible_joints=int(sum(float(lb.visibility.sum()) for lb in labels)),
        samples_pushed=pushed,
        rejected=rejected,
        teacher_s=t1 - t0,
        crop_s=time.perf_counter() - t1,
    )


def _push_crops(
    frame: Frame, labels: list[PersonLabel], buffer: RingBuffer
) -> tuple[int, int]:
    """Crop every labelled person to `buffer.crop_size` into the buffer; returns
    (pushed, rejected)."""
    pushed = rejected = 0
    for label in labels:
        try:
            sample = crop_sample(frame, label, buffer.crop_size)
        except ValueError as exc:  # degenerate box: nothing to crop
            _log_rejected(frame, exc)
            rejected += 1
            continue
        try:
            buffer.push(sample)
        except ValueError as exc:  # JPEG over its slot budget, non-finite values after cropping
            _log_rejected(frame, exc)
            rejected += 1
            continue
        pushed += 1
    return pushed, rejected


def _log_rejected(frame: Frame, exc: Exception) -> None:
    logger.debug("video %s frame %d: no crop: %s", frame.video.id, frame.index, exc)


def _on_teacher_error(
    frame: Frame, video: _VideoState, stats: ProducerStats, exc: Exception
) -> None:
    """Log the first few errors of a video; skip the video if it never worked at all."""
    n = video.errors
    if n <= LOGGED_ERRORS_PER_VIDEO:
        logger.warning(
            "teacher failed on video %s frame %d: %s: %s%s",
            frame.video.id, frame.index, type(exc).__name__, exc,
            " (further errors of this video are counted, not logged)"
            if n == LOGGED_ERRORS_PER_VIDEO else "",
        )
    if video.successes == 0 and n >= SKIP_AFTER_FAILURES:
        video.skip = True
        stats.skipped_videos.append(video.id)
        logger.warning(
            "skipping video %s: the teacher failed on its first %d frames (last: %s)",
            video.id, n, stats.last_error,
        )


def _count(counters: tuple[LabelStats, ...], **deltas: float) -> None:
    for c in counters:
        for name, delta in deltas.items():
            setattr(c, name, getattr(c, name) + delta)


class Producer:
    """Runs `label_stream` in a daemon thread that owns its teacher.

    The teacher is built inside the thread by `teacher_factory` (one teacher per producer:
    MediaPipe's graph is not thread-safe). The thread closes the teacher and the source when it
    ends, whatever the reason. `data.workers.ProducerPool` is the same in processes;
    `producer.workers=0` picks this one (debugging, fast tests). A `StreamProducer`: one worker,
    never restarted, whose counters are always current.

    A watchdog thread checks `progress_mark` of the counters: when it stays put for
    `stall_timeout_s` while the producer is not paused for the trainer (a trickling download, a
    stuck teacher), the producer fails with `ProducerStalledError` naming the video and the line
    the thread is stuck on, and is asked to stop. A thread cannot be killed, so unlike the
    process pool nothing restarts it: the trainer stops at its next batch
    (`StreamDataModule.check_producers`) instead of training on a frozen buffer.

    Args:
        source: the frames to label; iterated and closed by the thread.
        teacher_factory: makes the teacher, e.g. a Hydra `_partial_` of a teacher class.
        buffer: where the crops go; it sets the crop side (`buffer.crop_size`).
        reads_per_overwrite: pacing against the trainer (see `label_stream`); None: never wait.
        stall_timeout_s: seconds without progress before the producer fails as stalled
            (`producer.stall_timeout_s`); None: never.
    """

    def __init__(
        self,
        source: VideoSource,
        teacher_factory: Callable[[], Teacher],
        buffer: RingBuffer,
        reads_per_overwrite: float | None = None,
        stall_timeout_s: float | None = None,
    ):
        if stall_timeout_s is not None and stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0 or None, got {stall_timeout_s}")
        self._source, self._teacher_factory = source, teacher_factory
        self._buffer = buffer
        self._reads_per_overwrite = reads_per_overwrite
        self._stall_timeout_s = stall_timeout_s
        self._stop = threading.Event()
        self._stats = ProducerStats()
        self._error: BaseException | None = None
        self._stalls = 0
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="stream-pose-producer", daemon=True)

    def start(self) -> None:
        """Start the labelling thread (and its watchdog, with a `stall_timeout_s`).

        Raises:
            RuntimeError: if it was started before.
        """
        self._thread.start()
        if self._stall_timeout_s is not None:
            threading.Thread(target=self._watch, name="stream-pose-producer-watchdog",
                             daemon=True).start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop after its current frame and join it; idempotent.

        A thread still inside the source after a second has its source closed (which wakes a
        resting or downloading source); one still blocked after `timeout_s` is logged and left to
        finish on its own: it is a daemon and exits with the interpreter.
        """
        self._stop.set()
        if not self._thread.ident:  # never started: nobody else will close the source
            self._close_source()
            return
        self._thread.join(min(1.0, timeout_s))
        if self._thread.is_alive():
            # Blocked inside the source (a looping Pexels source resting between passes, a slow
            # download): closing it from here wakes it. Thread-safe for our sources.
            self._close_source()
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("producer did not stop within %.1f s; left as a daemon", timeout_s)

    @property
    def is_alive(self) -> bool:
        """True while the labelling thread runs."""
        return self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the thread, if one did."""
        return self._error

    @property
    def stats(self) -> ProducerStats:
        """A copy of the live counters, taken without stopping the thread."""
        return self._stats.copy()

    @property
    def restarts(self) -> int:
        """Always 0: a thread is not restarted."""
        return 0

    @property
    def stalls(self) -> int:
        """1 once the thread was found stalled (see the class docstring), else 0."""
        return self._stalls

    def worker_stats(self) -> list[ProducerStats]:
        """`[stats]`: the thread is the only worker."""
        return [self.stats]

    def refresh_stats(self, timeout_s: float = 5.0) -> bool:
        """True at once: the thread's counters are always current."""
        return True

    def failure_reason(self) -> str | None:
        """Why no more samples will come, or None while the producer runs (or was stopped).

        Meant as `RingBuffer.wait_for(abort=producer.failure_reason)`.
        """
        if self._error is not None:
            return f"producer failed: {type(self._error).__name__}: {self._error}"
        if self._finished and not self._stop.is_set():
            total = self._stats.total
            return (
                f"producer finished: the source ran out after {total.frames} frames "
                f"({total.samples_pushed} samples, {total.errors} teacher errors)"
            )
        return None

    def _run(self) -> None:
        teacher = None
        try:
            teacher = self._teacher_factory()
            label_stream(
                self._source, teacher, self._buffer,
                stop=self._stop, stats=self._stats, reads_per_overwrite=self._reads_per_overwrite,
            )
            logger.info("producer finished: %d frames, %d samples",
                        self._stats.total.frames, self._stats.total.samples_pushed)
        except BaseException as exc:  # kept for the trainer: a dead producer must be visible
            if self._error is None:  # a stall found by the watchdog stays the reason
                self._error = exc
            logger.error("producer failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        finally:
            if teacher is not None:
                _close_quietly(teacher, "teacher")
            self._close_source()
            self._finished = True

    def _close_source(self) -> None:
        _close_quietly(self._source, "source")

    def _watch(self) -> None:
        """Watchdog: fail the producer once its counters stop moving (see the class docstring)."""
        timeout = float(self._stall_timeout_s)
        mark, since = progress_mark(self._stats), time.monotonic()
        while not self._stop.wait(min(1.0, timeout / 10)) and self._thread.is_alive():
            now, current = time.monotonic(), progress_mark(self._stats)
            if current != mark or self._stats.paused:
                mark, since = current, now
            elif now - since > timeout:
                self._fail_stalled(now - since)
                return

    def _fail_stalled(self, idle_s: float) -> None:
        doing, line = describe_doing(self._stats), _stuck_at(self._thread)
        error = ProducerStalledError(
            f"the producer thread made no progress for {idle_s:.0f} s {doing}, stuck at {line} "
            f"(producer.stall_timeout_s={self._stall_timeout_s:g}); a thread cannot be "
            f"restarted: producer.workers >= 1 restarts stalled producers")
        logger.error("%s", error)  # logged before anyone polling `error` can see it
        self._stalls, self._error = 1, error
        self._stop.set()  # it stops at its next frame, if it ever gets one


_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _stuck_at(thread: threading.Thread) -> str:
    """Where `thread` is now: its innermost frame (`file:line in function`) and, when that is in
    a library, the innermost frame of this project's code that called it."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "an unknown line (the thread has ended)"
    stack = traceback.extract_stack(frame)

    def where(entry: traceback.FrameSummary) -> str:
        return f"{Path(entry.filename).name}:{entry.lineno} in {entry.name}"

    ours = [e for e in stack if Path(e.filename).resolve().is_relative_to(_PROJECT_ROOT)
            and ".venv" not in Path(e.filename).parts]
    if not ours or ours[-1] is stack[-1]:
        return where(stack[-1])
    return f"{where(stack[-1])}, called from {where(ours[-1])}"


def _close_quietly(obj: object, what: str) -> None:
    """Close `obj`, logging (not raising) a failure: closing must not hide the real error."""
    try:
        obj.close()
    except Exception:
        logger.exception("closing the %s failed", what)
