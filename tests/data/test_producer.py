"""The labelling loop and its thread: stats, resets, error handling, stopping, failure reasons,
and decoding ahead of the teacher (data.prefetch)."""

import importlib.util
import logging
import threading
import time

import numpy as np
import pytest

from data.prefetch import PrefetchIterator
from data.producer import (
    LOGGED_ERRORS_PER_VIDEO,
    PREFETCH_FRAMES,
    SKIP_AFTER_FAILURES,
    LabelStats,
    Producer,
    ProducerStalledError,
    ProducerStats,
    combine_stats,
    default_prefetch,
    label_stream,
)
from data.ring_buffer import BufferStarvedError, RingBuffer
from labeler.base import TeacherUnavailableError
from stream_pose.camera import default_K
from stream_pose.codec import label_from_camera
from stream_pose.skeleton import PELVIS
from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats

HW = (48, 64)
S = 32


class FakeSource:
    """Frames of random noise: `videos` is [(id, n_frames)]; `repeats` passes (None: forever)."""

    kind = "fake"

    def __init__(self, videos, repeats=1, delay_s=0.0):
        self.videos, self.repeats, self.delay_s = videos, repeats, delay_s
        self.stats = SourceStats()
        self.closed = False

    def __iter__(self):
        rng = np.random.default_rng(0)
        passes = 0
        while self.repeats is None or passes < self.repeats:
            for vid, n in self.videos:
                self.stats.videos_ok += 1
                for i in range(n):
                    time.sleep(self.delay_s)
                    self.stats.frames += 1
                    image = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
                    yield Frame(image, i, i / 30, VideoRef(vid, "fake"), K=default_K(*HW))
            passes += 1

    def close(self):
        self.closed = True


def _person(k: int) -> np.ndarray:
    """`[27, 3]` camera-frame joints of person k, about 4 m in front of the camera."""
    rng = np.random.default_rng(k)
    return rng.normal(0, 0.15, (27, 3)) + np.array([0.2 * k, 0.0, 4.0])


class FakeTeacher:
    """Labels `persons` people per frame; raises RuntimeError where `fails(frame)` is True."""

    name, device = "fake", "cpu"

    def __init__(self, persons=1, fails=lambda frame: False, error=RuntimeError("boom")):
        self.persons, self.fails, self.error = persons, fails, error
        self.events: list[tuple] = []
        self.closed = False

    def label(self, frame):
        self.events.append(("label", frame.video.id, frame.index))
        if self.fails(frame):
            raise self.error
        return [
            label_from_camera(_person(k), frame.K, frame.hw, track_id=k, confidence=1.0,
                              teacher=self.name)
            for k in range(self.persons)
        ]

    def reset(self):
        self.events.append(("reset",))

    def close(self):
        self.closed = True


def test_stats_per_video_and_total():
    source, teacher = FakeSource([("a", 3), ("b", 5)]), FakeTeacher(persons=2)
    buffer = RingBuffer(100, S)
    stats = label_stream(source, teacher, buffer)
    assert list(stats.per_video) == ["a", "b"]
    a, b, total = stats.per_video["a"], stats.per_video["b"], stats.total
    assert (a.frames, a.persons, a.samples_pushed) == (3, 6, 6)
    assert (b.frames, b.frames_with_person, b.samples_pushed) == (5, 5, 10)
    assert (total.frames, total.samples_pushed, total.errors) == (8, 16, 0)
    assert len(buffer) == 16
    visible = sum(
        label_from_camera(_person(k), default_K(*HW), HW, track_id=k, confidence=1,
                          teacher="x").visibility.sum()
        for k in range(2)
    )
    assert total.mean_visible_joints == pytest.approx(visible / 2)
    assert 0 < total.teacher_s <= total.wall_s and total.label_fps <= total.teacher_fps
    assert stats.source_stats is source.stats and source.stats.frames == 8


def test_teacher_is_reset_before_every_video_including_loops():
    teacher = FakeTeacher()
    label_stream(FakeSource([("a", 3), ("b", 2)], repeats=2), teacher, RingBuffer(50, S))
    resets = [i for i, e in enumerate(teacher.events) if e == ("reset",)]
    assert len(resets) == 4  # a, b, a, b
    firsts = [i for i, e in enumerate(teacher.events) if e[0] == "label" and e[2] == 0]
    assert [i - 1 for i in firsts] == resets  # each reset right before a video's first frame


def test_a_single_looped_video_is_reset_each_pass():
    teacher = FakeTeacher()
    stats = label_stream(FakeSource([("only", 4)], repeats=3), teacher, RingBuffer(50, S))
    assert teacher.events.count(("reset",)) == 3
    assert stats.per_video["only"].frames == 12


def test_teacher_errors_are_counted_logged_sparingly_and_skipped(caplog):
    teacher = FakeTeacher(fails=lambda f: f.index % 2 == 1)
    with caplog.at_level(logging.WARNING, logger="data.producer"):
        stats = label_stream(FakeSource([("v", 20)]), teacher, RingBuffer(50, S))
    v = stats.per_video["v"]
    assert (v.frames, v.errors, v.samples_pushed) == (20, 10, 10)
    assert stats.last_error == "RuntimeError: boom" and stats.skipped_videos == []
    logged = [r.getMessage() for r in caplog.records]
    assert sum("frame" in m and "boom" in m for m in logged) == LOGGED_ERRORS_PER_VIDEO
    assert any(f"({10 - LOGGED_ERRORS_PER_VIDEO} not logged)" in m for m in logged)
    assert "video v frame 1" in logged[0]


def test_a_video_that_always_fails_is_skipped():
    teacher = FakeTeacher(fails=lambda f: f.video.id == "bad")
    stats = label_stream(FakeSource([("bad", 25), ("good", 3)]), teacher, RingBuffer(50, S))
    bad = stats.per_video["bad"]
    assert (bad.frames, bad.errors) == (SKIP_AFTER_FAILURES, SKIP_AFTER_FAILURES)
    assert stats.skipped_videos == ["bad"]
    assert sum(e[:2] == ("label", "bad") for e in teacher.events) == SKIP_AFTER_FAILURES
    assert stats.per_video["good"].samples_pushed == 3


def test_a_video_that_works_at_first_is_never_skipped():
    teacher = FakeTeacher(fails=lambda f: f.index >= 2)
    stats = label_stream(FakeSource([("v", 30)]), teacher, RingBuffer(50, S))
    assert stats.per_video["v"].frames == 30 and stats.skipped_videos == []


def test_teacher_unavailable_is_fatal():
    teacher = FakeTeacher(fails=lambda f: f.index == 2, error=TeacherUnavailableError("no model"))
    with pytest.raises(TeacherUnavailableError, match="no model"):
        label_stream(FakeSource([("v", 10)]), teacher, RingBuffer(50, S))


def test_max_samples_stops_after_whole_frames():
    buffer = RingBuffer(50, S)
    stats = label_stream(FakeSource([("v", 30)]), FakeTeacher(persons=2), buffer,
                         max_samples=5)
    assert stats.total.samples_pushed == 6 and stats.total.frames == 3  # whole frames only
    # The crop side is the buffer's own (`buffer.crop_size`): there is no second copy to check.
    assert buffer.sample(1)["image"].shape[-1] == S


def test_producer_stops_promptly_and_closes_everything():
    source, teachers = FakeSource([("a", 5), ("b", 5)], repeats=None), []
    buffer = RingBuffer(40, S)

    def factory():
        teachers.append(FakeTeacher())
        teachers[-1].thread = threading.current_thread()
        return teachers[-1]

    producer = Producer(source, factory, buffer)
    producer.start()
    buffer.wait_for(40, 10.0, abort=producer.failure_reason)
    seen = producer.stats.total.frames
    assert producer.is_alive and seen >= 40
    t0 = time.monotonic()
    producer.stop(timeout_s=5.0)
    assert time.monotonic() - t0 < 1.0 and not producer.is_alive
    assert len(teachers) == 1 and teachers[0].thread is not threading.current_thread()
    assert teachers[0].closed and source.closed
    assert producer.error is None and producer.failure_reason() is None
    producer.stop()  # idempotent


class StuckTeacher(FakeTeacher):
    """Labels `good` frames, then blocks inside `label` until `release` is set."""

    def __init__(self, good=3):
        super().__init__()
        self.good, self.release = good, threading.Event()

    def label(self, frame):
        if frame.index >= self.good:
            self.release.wait(60)
        return super().label(frame)


def test_a_stuck_thread_producer_fails_as_stalled_and_says_where(caplog):
    teacher = StuckTeacher(good=3)
    producer = Producer(FakeSource([("clip", 50)]), lambda: teacher, RingBuffer(100, S),
                        stall_timeout_s=1.0)
    with caplog.at_level(logging.ERROR, logger="data.producer"):
        producer.start()
        deadline = time.monotonic() + 20
        while producer.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        assert isinstance(producer.error, ProducerStalledError), producer.error
        assert producer.stalls == 1 and producer.stats.total.frames == 3
        reason = producer.failure_reason()
        assert "no progress" in reason and "on video clip (3 frames labelled)" in reason
        assert "stuck at threading.py:" in reason and "called from test_producer.py:" in reason
        assert "producer.workers >= 1" in reason and "stall_timeout_s=1" in reason
        assert any("no progress" in r.getMessage() for r in caplog.records)
    finally:
        teacher.release.set()  # the thread then sees the stop and ends
        producer.stop(timeout_s=5.0)
    assert not producer.is_alive and isinstance(producer.error, ProducerStalledError)


def test_a_thread_producer_paused_for_the_trainer_is_not_stalled():
    buffer = RingBuffer(8, S)  # full after 8 frames; nobody reads, so it waits
    producer = Producer(FakeSource([("v", 100)]), FakeTeacher, buffer, reads_per_overwrite=1.0,
                        stall_timeout_s=0.5)
    producer.start()
    try:
        time.sleep(2.0)
        assert producer.stats.paused and producer.stats.total.frames <= 10
        assert producer.error is None and producer.stalls == 0 and producer.is_alive
    finally:
        producer.stop()


def test_producer_stats_are_live_copies():
    producer = Producer(FakeSource([("v", 10)], repeats=None, delay_s=0.005), FakeTeacher,
                        RingBuffer(10, S))
    producer.start()
    try:
        first = producer.stats
        time.sleep(0.2)
        assert producer.stats.total.frames > first.total.frames  # read while running
    finally:
        producer.stop()


def test_failure_reason_after_a_crash():
    source = FakeSource([("v", 100)])
    teacher = FakeTeacher(fails=lambda f: f.index == 3, error=TeacherUnavailableError("no GPU"))
    buffer = RingBuffer(50, S)
    producer = Producer(source, lambda: teacher, buffer)
    producer.start()
    with pytest.raises(BufferStarvedError, match="TeacherUnavailableError: no GPU"):
        buffer.wait_for(50, 10.0, abort=producer.failure_reason)
    producer.stop()
    assert isinstance(producer.error, TeacherUnavailableError)
    assert teacher.closed and source.closed


def test_failure_reason_when_the_teacher_cannot_be_built():
    def factory():
        raise TeacherUnavailableError("install mediapipe")

    source = FakeSource([("v", 5)])
    producer = Producer(source, factory, RingBuffer(10, S))
    producer.start()
    producer.stop()
    assert "install mediapipe" in producer.failure_reason() and source.closed


def test_failure_reason_when_the_source_runs_out():
    buffer = RingBuffer(50, S)
    producer = Producer(FakeSource([("v", 7)]), FakeTeacher, buffer)
    producer.start()
    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match="source ran out after 7 frames"):
        buffer.wait_for(20, 30.0, abort=producer.failure_reason)
    assert time.monotonic() - t0 < 5.0 and len(buffer) == 7


@pytest.mark.skipif(
    importlib.util.find_spec("video_sources.synthetic") is None
    or importlib.util.find_spec("labeler.oracle") is None,
    reason="needs SyntheticSource and OracleTeacher",
)
def test_synthetic_stream_with_the_oracle_fills_the_buffer():
    from labeler.oracle import OracleTeacher
    from video_sources.synthetic import SyntheticSource

    source = SyntheticSource(split="train", num_videos=2, frames_per_video=3, seed=0, loop=False,
                             image_size=(96, 128))
    buffer = RingBuffer(64, S)
    stats = label_stream(source, OracleTeacher(), buffer)
    assert stats.total.frames == 6 and len(stats.per_video) == 2
    assert len(buffer) == stats.total.samples_pushed == stats.total.persons > 0
    rows = buffer.snapshot()
    assert np.all(rows["kpts3d"][:, 0] == 0)  # pelvis-relative targets arrive intact
    vis = rows["visibility"] > 0
    assert np.all((rows["kpts2d"][vis] >= -1) & (rows["kpts2d"][vis] <= S))  # inside the crop


class RestingSource(FakeSource):
    """Yields one video of `frames`, then rests (like a looping Pexels source) until `close()`
    or `rest_s`."""

    def __init__(self, frames=3, rest_s=60.0):
        super().__init__([("v", frames)])
        self._woken, self._rest_s = threading.Event(), rest_s

    def __iter__(self):
        yield from super().__iter__()
        self._woken.wait(self._rest_s)

    def close(self):
        super().close()
        self._woken.set()


def test_stop_wakes_a_source_resting_between_passes():
    source = RestingSource()
    buffer = RingBuffer(16, crop_size=S)
    producer = Producer(source, FakeTeacher, buffer)
    producer.start()
    buffer.wait_for(3, timeout_s=10)
    time.sleep(0.1)
    start = time.monotonic()
    producer.stop(timeout_s=10)
    assert not producer.is_alive and source.closed
    assert time.monotonic() - start < 5.0


def test_label_stats_add_up_and_combine():
    a, b = LabelStats(frames=3, persons=2, teacher_s=1.0), LabelStats(frames=5, errors=1)
    total = a + b
    assert (total.frames, total.persons, total.errors, total.teacher_s) == (8, 2, 1, 1.0)
    one = ProducerStats(total=a, per_video={"x": a}, skipped_videos=["bad"],
                        source_stats=SourceStats(videos_ok=1, frames=3), last_error="E1")
    two = ProducerStats(total=b, per_video={"x": b, "y": b}, skipped_videos=["bad", "worse"],
                        source_stats=SourceStats(videos_ok=2, frames=5))
    both = combine_stats([one, two])
    assert both.total.frames == 8 and both.per_video["x"].frames == 8
    assert both.per_video["y"].frames == 5 and both.skipped_videos == ["bad", "worse"]
    assert (both.source_stats.videos_ok, both.source_stats.frames) == (3, 8)
    assert both.last_error == "E1" and one.total.frames == 3  # inputs untouched


def test_a_crop_too_large_for_its_jpeg_slot_is_rejected_not_fatal():
    # FakeSource frames are random noise: their crops never fit a 1 kB JPEG slot
    buffer = RingBuffer(50, 64, storage="jpeg", jpeg_slot_bytes=1024)
    stats = label_stream(FakeSource([("v", 3)]), FakeTeacher(), buffer)
    assert stats.total.frames == 3 and stats.total.rejected == 3 and len(buffer) == 0


class WildTeacher(FakeTeacher):
    """One person whose undefined joint has an absurd 2D position (a projection of a point
    next to the camera plane, as a teacher's raw output can be): 1e38 px overflows to inf once
    the crop scales it up."""

    def label(self, frame):
        (person,) = super().label(frame)
        person.kpts2d[PELVIS + 5] = 1e38  # its visibility is already 0 (outside the frame)
        person.visibility[PELVIS + 5] = 0.0
        return [person]


def test_a_sample_the_buffer_refuses_is_rejected_not_fatal():
    buffer = RingBuffer(50, 256)
    stats = label_stream(FakeSource([("v", 3)]), WildTeacher(), buffer)
    assert stats.total.frames == 3 and stats.total.rejected + stats.total.samples_pushed == 3


# Decoding ahead (data.prefetch) inside label_stream


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stream-pose-decode"]


def _eventually(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


class TracedSource(FakeSource):
    """A FakeSource that records which thread iterates it and when its iterator is closed."""

    def __init__(self, videos, fail_after=None, **kwargs):
        super().__init__(videos, **kwargs)
        self.fail_after, self.yielded, self.threads = fail_after, 0, set()
        self.iterator_closed_in = None

    def __iter__(self):
        try:
            for frame in super().__iter__():
                self.threads.add(threading.current_thread().name)
                if self.yielded == self.fail_after:
                    raise OSError("disk on fire")
                self.yielded += 1
                yield frame
        finally:
            self.iterator_closed_in = threading.current_thread().name


def test_prefetch_keeps_the_order_and_decodes_in_its_own_thread():
    source = TracedSource([("a", 4), ("b", 3)], repeats=2)
    teacher = FakeTeacher()
    stats = label_stream(source, teacher, RingBuffer(64, S), prefetch_frames=2)
    labelled = [e[1:] for e in teacher.events if e[0] == "label"]
    assert labelled == [(v, i) for v, n in [("a", 4), ("b", 3)] * 2 for i in range(n)]
    assert stats.total.frames == 14 and teacher.events.count(("reset",)) == 4
    assert source.threads == {"stream-pose-decode"}
    assert source.iterator_closed_in == "stream-pose-decode"
    assert 0 <= stats.total.source_wait_s <= stats.total.wall_s
    assert _decode_threads() == []


def test_serial_mode_decodes_in_the_callers_thread():
    source = TracedSource([("a", 3)])
    label_stream(source, FakeTeacher(), RingBuffer(8, S), prefetch_frames=0)
    assert source.threads == {threading.current_thread().name}
    assert source.iterator_closed_in == threading.current_thread().name


class LockstepTeacher(FakeTeacher):
    """Labels frame k < last only once the source has started on frame k + 1 (or times out)."""

    def __init__(self, source, last):
        super().__init__()
        self.source, self.last, self.overlapped = source, last, []

    def label(self, frame):
        deadline = time.monotonic() + 2.0
        while (frame.index < self.last and not self._next_started(frame)
               and time.monotonic() < deadline):
            time.sleep(0.001)
        self.overlapped.append(self._next_started(frame))
        return super().label(frame)

    def _next_started(self, frame):
        return self.source.started > frame.index + 1


class CountingSource(FakeSource):
    """Counts frames it has started to produce (`started`), before yielding each."""

    def __init__(self, videos, **kwargs):
        super().__init__(videos, **kwargs)
        self.started = 0

    def __iter__(self):
        for frame in super().__iter__():
            self.started += 1
            yield frame


def test_decoding_overlaps_the_teacher():
    source = CountingSource([("v", 6)])
    teacher = LockstepTeacher(source, last=5)
    label_stream(source, teacher, RingBuffer(16, S), prefetch_frames=2)
    # every frame but the last had its successor under way while the teacher held it
    assert teacher.overlapped == [True] * 5 + [False]


def test_prefetch_reads_at_most_depth_frames_ahead():
    source = CountingSource([("v", 50)])
    with PrefetchIterator(source, depth=3) as frames:
        next(frames)
        # the thread fills the queue, then blocks on the frame after: one taken, 3 + 1 ahead
        assert _eventually(lambda: source.started == 1 + 3 + 1)
        time.sleep(0.1)
        assert source.started == 1 + 3 + 1
        assert [f.index for f in frames] == list(range(1, 50))
    assert not frames.thread_alive


def test_a_source_error_surfaces_in_the_consumer_and_no_thread_is_left():
    source = TracedSource([("v", 10)], fail_after=4)
    teacher = FakeTeacher()
    with pytest.raises(OSError, match="disk on fire"):
        label_stream(source, teacher, RingBuffer(16, S), prefetch_frames=2)
    assert sum(e[0] == "label" for e in teacher.events) == 4  # the frames before the error
    assert source.iterator_closed_in == "stream-pose-decode"
    assert _decode_threads() == []


def test_leaving_early_closes_the_source_iterator_and_joins_the_thread():
    source = TracedSource([("v", 100)])
    buffer = RingBuffer(16, S)
    stats = label_stream(source, FakeTeacher(), buffer, max_samples=3, prefetch_frames=2)
    assert stats.total.frames == 3 and source.yielded <= 3 + 2 + 1
    assert source.iterator_closed_in == "stream-pose-decode" and _decode_threads() == []
    teacher = FakeTeacher(fails=lambda f: f.index == 2, error=TeacherUnavailableError("gone"))
    with pytest.raises(TeacherUnavailableError):
        label_stream(TracedSource([("v", 100)]), teacher, buffer)
    assert _decode_threads() == []


def test_stop_ends_a_slow_stream_within_a_frame():
    source = FakeSource([("v", 100)], delay_s=0.2)  # a slow source: 0.2 s per frame
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    stats = label_stream(source, FakeTeacher(), RingBuffer(16, S), stop=stop)
    assert stats.total.frames <= 2 and _decode_threads() == []


def test_a_source_blocked_past_the_join_timeout_is_logged_and_left_to_end(monkeypatch, caplog):
    monkeypatch.setattr("data.prefetch.JOIN_TIMEOUT_S", 0.1)
    release = threading.Event()

    def blocked():
        yield "first"
        release.wait(10.0)  # like a source resting until its owner closes it
        yield "never seen"

    stop = threading.Event()
    frames = PrefetchIterator(blocked(), depth=2, stop=stop)
    assert next(frames) == "first"
    stop.set()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="data.prefetch"):
        assert list(frames) == []  # stop ends the wait although the source is blocked
    assert time.monotonic() - t0 < 2.0 and "still inside the source" in caplog.text
    assert frames.thread_alive
    release.set()  # the owner wakes the source: the thread takes no further item and ends
    assert _eventually(lambda: not frames.thread_alive)


def test_producer_stop_is_prompt_while_decoding_ahead():
    source = TracedSource([("a", 5), ("b", 5)], repeats=None)
    buffer = RingBuffer(40, S)
    producer = Producer(source, FakeTeacher, buffer)
    producer.start()
    buffer.wait_for(40, 10.0, abort=producer.failure_reason)
    assert source.threads == {"stream-pose-decode"}
    t0 = time.monotonic()
    producer.stop(timeout_s=5.0)
    assert time.monotonic() - t0 < 1.0 and not producer.is_alive
    assert source.closed and _decode_threads() == []


def test_prefetch_rejects_a_negative_or_zero_depth():
    with pytest.raises(ValueError, match="prefetch_frames"):
        label_stream(FakeSource([("v", 1)]), FakeTeacher(), RingBuffer(4, S),
                     prefetch_frames=-1)
    with pytest.raises(ValueError, match="depth"):
        PrefetchIterator([], depth=0)


def test_ctrl_c_does_not_wait_for_a_resting_source():
    source = RestingSource(frames=1, rest_s=10.0)
    teacher = FakeTeacher(fails=lambda f: True, error=KeyboardInterrupt())
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        label_stream(source, teacher, RingBuffer(4, S))
    assert time.monotonic() - t0 < 2.0  # not the 5 s join: the owner has to close the source
    source.close()  # as pipeline.py does after Ctrl-C: the thread wakes and ends
    assert _eventually(lambda: _decode_threads() == [])


def test_sources_rendered_in_python_are_labelled_in_one_thread():
    class PythonRendered(TracedSource):
        kind = "synthetic"  # its frames hold the GIL: a decode thread would only contend

    source = PythonRendered([("v", 3)])
    label_stream(source, FakeTeacher(), RingBuffer(8, S))
    assert source.threads == {threading.current_thread().name}
    assert default_prefetch(source) == 0 and default_prefetch(FakeSource([])) == PREFETCH_FRAMES
