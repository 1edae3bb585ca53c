"""The labelling farm on Ray (`producer=ray`), on a local Ray with this machine's CPUs: real
MediaPipe actors label real clips (../shared/videos) into the trainer's ring buffer through the
object store. Shards are disjoint and cover the stream; an actor killed mid-video (SIGKILL to its
process) is replaced at the shard's cursor with no frame lost or delivered twice; backpressure
holds the actors when nobody reads; and the actors' processes write no crop to disk."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from shared_paths import VIDEOS

from data.ring_buffer import RingBuffer
from data.workers.ray_farm import ChunkSink, RayFarmSettings, RayProducer, SampleChunk
from stream_pose.types import Sample

pytestmark = [pytest.mark.slow]
ray = pytest.importorskip("ray")
pytest.importorskip("mediapipe")

CROP = 64
CLIPS = sorted(p.stem for p in VIDEOS.glob("*.mp4"))


def _source():
    from video_sources.local import LocalSource

    # every 6th frame, at most 60 decoded: ~10 labelled frames per clip keeps CI short
    return functools.partial(LocalSource, str(VIDEOS), frameskip=6, max_frames=60,
                             max_side=640)


def _teacher():
    from labeler.mediapipe_teacher import MediaPipeTeacher

    return MediaPipeTeacher


@pytest.fixture(scope="module")
def local_ray():
    from data.workers.ray_farm import start_local_ray

    start_local_ray(RayFarmSettings(object_store_mb=128))
    yield
    ray.shutdown()


def _drain(producer: RayProducer, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while producer.failure_reason() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert producer.error is None, producer.error


def _keys(buffer: RingBuffer) -> list[tuple[str, int, int]]:
    """(video, frame, track) of every sample the buffer holds."""
    rows = buffer.snapshot()
    return [(buffer.video_id(k), int(f), int(t))
            for k, f, t in zip(rows["video_key"], rows["frame_index"], rows["track_id"])]


def _run(settings: RayFarmSettings, kill_after_chunks: int | None = None):
    buffer = RingBuffer(4096, CROP)
    producer = RayProducer(_source(), _teacher(), buffer, settings=settings)
    producer.start()
    killed = None
    try:
        if kill_after_chunks is not None:
            killed = _kill_mid_video(producer, kill_after_chunks)
        _drain(producer)
        return buffer, producer, killed
    finally:
        producer.stop()


def _kill_mid_video(producer: RayProducer, chunks: int) -> tuple[str, int]:
    """SIGKILL actor 0's process once it has delivered `chunks` chunks; its cursor then."""
    slot = producer._slots[0]
    deadline = time.monotonic() + 120
    while sum(1 for _ in slot.delivered) < 1 or slot.last_frame < 6 * chunks:
        assert time.monotonic() < deadline, "actor 0 delivered nothing"
        time.sleep(0.05)
    pid = ray.get(slot.actor.pid.remote())
    cursor = (slot.delivered[-1], slot.last_frame)
    os.kill(pid, signal.SIGKILL)
    return cursor


@pytest.fixture(scope="module")
def reference(local_ray):
    """The farm's run without faults: 2 actors over the 5 clips."""
    buffer, producer, _ = _run(RayFarmSettings(actors=2, chunk_samples=2))
    return _keys(buffer), producer.cursor(), producer.worker_stats()


def test_shards_are_disjoint_cover_the_stream_and_reach_the_buffer(reference):
    keys, cursor, stats = reference
    shards = [set(videos) for videos, _ in cursor.values()]
    assert list(cursor) == ["0/2", "1/2"]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(CLIPS)
    assert {v for v, _, _ in keys} == set(CLIPS)
    assert len(keys) == len(set(keys)), "a sample was delivered twice"
    assert sum(s.total.samples_pushed for s in stats) == len(keys)
    assert all(set(s.per_video) == shard for s, shard in zip(stats, shards))


def test_a_killed_actor_restarts_at_its_cursor_losing_and_repeating_nothing(local_ray, reference):
    buffer, producer, cursor = _run(RayFarmSettings(actors=2, chunk_samples=2), 2)
    assert producer.restarts == 1
    keys = _keys(buffer)
    assert len(keys) == len(set(keys)), "a frame was delivered twice"
    assert Counter(keys) == Counter(reference[0]), "frames lost or added by the restart"
    video, frame = cursor
    assert any(v == video and f > frame for v, f, _ in keys), "the video was not finished"


def test_backpressure_holds_the_actors_when_nobody_reads(local_ray):
    buffer = RingBuffer(16, CROP)
    settings = RayFarmSettings(actors=1, chunk_samples=2, queue_chunks=1)
    producer = RayProducer(_source(), _teacher(), buffer, settings=settings,
                           reads_per_overwrite=1.0)
    producer.start()
    try:
        deadline = time.monotonic() + 120
        while len(buffer) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # nobody reads: the feeder waits, the actor's queue fills, it stops
        frames = producer.stats.total.frames
        time.sleep(3.0)
        assert producer.stats.total.frames == frames, "the actor kept labelling"
        assert frames < 20  # the buffer (16) plus one chunk in flight, one queued, one sealing
        assert producer.failure_reason() is None
    finally:
        producer.stop()


def test_the_actors_write_no_crop_to_disk(local_ray):
    """Byte audit: the bytes the actor processes wrote to storage (/proc/<pid>/io write_bytes,
    which a tmpfs like /dev/shm does not count) are far below the crops they produced, and
    Ray spilled no object."""
    buffer = RingBuffer(4096, CROP)
    producer = RayProducer(_source(), _teacher(), buffer,
                           settings=RayFarmSettings(actors=2, chunk_samples=2))
    producer.start()
    try:
        pids = [ray.get(s.actor.pid.remote()) for s in producer._slots]
        before = [_write_bytes(p) for p in pids]
        _drain(producer)
        written = sum(_write_bytes(p) - b for p, b in zip(pids, before))
    finally:
        producer.stop()
    crop_bytes = len(buffer) * 3 * CROP * CROP
    assert crop_bytes > 500_000
    assert written < 0.05 * crop_bytes, f"actors wrote {written} bytes for {crop_bytes} of crops"
    spilled = list(Path("/tmp/ray").glob("session_*/ray_spilled_objects/*"))
    assert not spilled


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError(f"no write_bytes for {pid}")


def test_chunks_hold_whole_frames_of_one_video():
    sink = ChunkSink(crop_size=CROP, chunk_samples=3, queue_chunks=10)

    def sample(video: str, frame: int, track: int) -> Sample:
        z = np.zeros
        return Sample(z((3, CROP, CROP), np.uint8), z((27, 2), np.float32),
                      z((27, 3), np.float32), z(27, np.float32), np.eye(3, dtype=np.float32),
                      video, frame, track)

    for key in [("a", 0, 0), ("a", 0, 1), ("a", 1, 0), ("a", 1, 1), ("a", 2, 0), ("b", 0, 0)]:
        sink.push(sample(*key))
    sink.seal()
    chunks: list[SampleChunk] = [sink.ready.get_nowait() for _ in range(sink.ready.qsize())]
    assert [(c.video_id, c.frame_index.tolist()) for c in chunks] == [
        ("a", [0, 0, 1, 1]), ("a", [2]), ("b", [0])]
    again = [(s.video_id, s.frame_index, s.track_id) for c in chunks for s in c.samples()]
    assert again[:2] == [("a", 0, 0), ("a", 0, 1)] and len(again) == 6
