"""The labelling loop and its thread: stats, resets, error handling, stopping, failure reasons."""

import importlib.util
import logging
import threading
import time

import numpy as np
import pytest

from data.producer import (
    LOGGED_ERRORS_PER_VIDEO,
    SKIP_AFTER_FAILURES,
    LabelStats,
    Producer,
    ProducerStats,
    combine_stats,
    label_stream,
)
from data.ring_buffer import BufferStarvedError, RingBuffer
from labeler.base import TeacherUnavailableError
from stream_pose.camera import default_K
from stream_pose.codec import label_from_camera
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
    stats = label_stream(source, teacher, buffer, S)
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
    label_stream(FakeSource([("a", 3), ("b", 2)], repeats=2), teacher, RingBuffer(50, S), S)
    resets = [i for i, e in enumerate(teacher.events) if e == ("reset",)]
    assert len(resets) == 4  # a, b, a, b
    firsts = [i for i, e in enumerate(teacher.events) if e[0] == "label" and e[2] == 0]
    assert [i - 1 for i in firsts] == resets  # each reset right before a video's first frame


def test_a_single_looped_video_is_reset_each_pass():
    teacher = FakeTeacher()
    stats = label_stream(FakeSource([("only", 4)], repeats=3), teacher, RingBuffer(50, S), S)
    assert teacher.events.count(("reset",)) == 3
    assert stats.per_video["only"].frames == 12


def test_teacher_errors_are_counted_logged_sparingly_and_skipped(caplog):
    teacher = FakeTeacher(fails=lambda f: f.index % 2 == 1)
    with caplog.at_level(logging.WARNING, logger="data.producer"):
        stats = label_stream(FakeSource([("v", 20)]), teacher, RingBuffer(50, S), S)
    v = stats.per_video["v"]
    assert (v.frames, v.errors, v.samples_pushed) == (20, 10, 10)
    assert stats.last_error == "RuntimeError: boom" and stats.skipped_videos == []
    logged = [r.getMessage() for r in caplog.records]
    assert sum("frame" in m and "boom" in m for m in logged) == LOGGED_ERRORS_PER_VIDEO
    assert any(f"({10 - LOGGED_ERRORS_PER_VIDEO} not logged)" in m for m in logged)
    assert "video v frame 1" in logged[0]


def test_a_video_that_always_fails_is_skipped():
    teacher = FakeTeacher(fails=lambda f: f.video.id == "bad")
    stats = label_stream(FakeSource([("bad", 25), ("good", 3)]), teacher, RingBuffer(50, S), S)
    bad = stats.per_video["bad"]
    assert (bad.frames, bad.errors) == (SKIP_AFTER_FAILURES, SKIP_AFTER_FAILURES)
    assert stats.skipped_videos == ["bad"]
    assert sum(e[:2] == ("label", "bad") for e in teacher.events) == SKIP_AFTER_FAILURES
    assert stats.per_video["good"].samples_pushed == 3


def test_a_video_that_works_at_first_is_never_skipped():
    teacher = FakeTeacher(fails=lambda f: f.index >= 2)
    stats = label_stream(FakeSource([("v", 30)]), teacher, RingBuffer(50, S), S)
    assert stats.per_video["v"].frames == 30 and stats.skipped_videos == []


def test_teacher_unavailable_is_fatal():
    teacher = FakeTeacher(fails=lambda f: f.index == 2, error=TeacherUnavailableError("no model"))
    with pytest.raises(TeacherUnavailableError, match="no model"):
        label_stream(FakeSource([("v", 10)]), teacher, RingBuffer(50, S), S)


def test_max_samples_and_crop_size_checks():
    buffer = RingBuffer(50, S)
    stats = label_stream(FakeSource([("v", 30)]), FakeTeacher(persons=2), buffer, S,
                         max_samples=5)
    assert stats.total.samples_pushed == 6 and stats.total.frames == 3  # whole frames only
    with pytest.raises(ValueError, match="crop_size"):
        label_stream(FakeSource([("v", 1)]), FakeTeacher(), buffer, S + 1)


def test_producer_stops_promptly_and_closes_everything():
    source, teachers = FakeSource([("a", 5), ("b", 5)], repeats=None), []
    buffer = RingBuffer(40, S)

    def factory():
        teachers.append(FakeTeacher())
        teachers[-1].thread = threading.current_thread()
        return teachers[-1]

    producer = Producer(source, factory, buffer, S)
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


def test_producer_stats_are_live_copies():
    producer = Producer(FakeSource([("v", 10)], repeats=None, delay_s=0.005), FakeTeacher,
                        RingBuffer(10, S), S)
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
    producer = Producer(source, lambda: teacher, buffer, S)
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
    producer = Producer(source, factory, RingBuffer(10, S), S)
    producer.start()
    producer.stop()
    assert "install mediapipe" in producer.failure_reason() and source.closed


def test_failure_reason_when_the_source_runs_out():
    buffer = RingBuffer(50, S)
    producer = Producer(FakeSource([("v", 7)]), FakeTeacher, buffer, S)
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
    stats = label_stream(source, OracleTeacher(), buffer, S)
    assert stats.total.frames == 6 and len(stats.per_video) == 2
    assert len(buffer) == stats.total.samples_pushed == stats.total.persons > 0
    rows = buffer.snapshot()
    assert np.all(rows["kpts3d"][:, 0] == 0)  # pelvis-relative targets arrive intact
    vis = rows["visibility"] > 0
    assert np.all((rows["kpts2d"][vis] >= -1) & (rows["kpts2d"][vis] <= S))  # inside the crop


class RestingSource(FakeSource):
    """Yields one video, then rests (like a looping Pexels source) until `close()`."""

    def __init__(self):
        super().__init__([("v", 3)])
        self._woken = threading.Event()

    def __iter__(self):
        yield from super().__iter__()
        self._woken.wait(60.0)

    def close(self):
        super().close()
        self._woken.set()


def test_stop_wakes_a_source_resting_between_passes():
    source = RestingSource()
    buffer = RingBuffer(16, crop_size=S)
    producer = Producer(source, FakeTeacher, buffer, S)
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
    stats = label_stream(FakeSource([("v", 3)]), FakeTeacher(), buffer, 64)
    assert stats.total.frames == 3 and stats.total.rejected == 3 and len(buffer) == 0
