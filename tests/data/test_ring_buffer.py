"""The ring buffer: capacity, ring order, uniform sampling, thread safety, waiting and stats."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from data.ring_buffer import (
    OUTPUT_FIELDS,
    BufferStarvedError,
    EmptyBufferError,
    RingBuffer,
    video_key,
    video_weights,
)
from stream_pose.types import Sample

S = 16  # small crops keep the tests fast


def _sample(i: int, video: str = "v", size: int = S) -> Sample:
    """A sample whose every field encodes `i`, so that a torn row is detectable."""
    return Sample(
        image=np.full((3, size, size), i % 251, np.uint8),
        kpts2d=np.full((27, 2), i, np.float32),
        kpts3d=np.full((27, 3), -i, np.float32),
        visibility=np.full(27, i % 2, np.float32),
        K_crop=np.eye(3, dtype=np.float32) * i,
        video_id=video,
        frame_index=i,
        track_id=i % 3,
    )


def _row_is_whole(rows: dict, r: int) -> bool:
    i = int(rows["frame_index"][r])
    return (
        np.all(rows["image"][r] == i % 251)
        and np.all(rows["kpts2d"][r] == i)
        and np.all(rows["kpts3d"][r] == -i)
        and np.all(rows["visibility"][r] == i % 2)
        and np.all(rows["K_crop"][r] == np.eye(3) * i)
        and rows["track_id"][r] == i % 3
    )


def test_len_never_exceeds_capacity():
    buf = RingBuffer(5, S)
    for i in range(12):
        buf.push(_sample(i))
        assert len(buf) == min(i + 1, 5)


def test_newest_replaces_oldest():
    buf = RingBuffer(4, S)
    for i in range(7):
        buf.push(_sample(i))
    snap = buf.snapshot()
    assert snap["frame_index"].tolist() == [3, 4, 5, 6]  # oldest first, 0..2 gone
    assert buf.stats().overwritten == 3 and buf.stats().pushed == 7
    # slots 0..2 were written twice, slot 3 once
    assert sorted(snap["version"].tolist()) == [1, 2, 2, 2]


def test_sampling_is_uniform_over_filled_slots():
    buf = RingBuffer(10, S)
    for i in range(3):
        buf.push(_sample(i))
    partial = buf.sample(300, np.random.default_rng(0))["frame_index"]
    assert set(partial.tolist()) == {0, 1, 2}  # only filled slots, and all of them
    for i in range(3, 10):
        buf.push(_sample(i))
    draws = buf.sample(20000, np.random.default_rng(1))["frame_index"]
    counts = np.bincount(draws, minlength=10)
    chi2 = ((counts - 2000.0) ** 2 / 2000.0).sum()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


@pytest.mark.parametrize("alpha, expected_long_share", [(0.0, 0.9), (0.5, 0.75), (1.0, 0.5)])
def test_video_balance_evens_out_a_long_video(alpha, expected_long_share):
    buf = RingBuffer(20, S)
    for i in range(18):
        buf.push(_sample(i, video="long"))
    for i in range(18, 20):
        buf.push(_sample(i, video="short"))
    draws = buf.sample(20000, np.random.default_rng(2), video_balance=alpha)["frame_index"]
    # long: 18 slots, short: 2; share of long = 18^(1-a) / (18^(1-a) + 2^(1-a))
    assert np.mean(draws < 18) == pytest.approx(expected_long_share, abs=0.015)
    assert set(draws[draws < 18].tolist()) == set(range(18))  # every slot still drawn


def test_video_weights_reject_alpha_outside_unit_interval():
    with pytest.raises(ValueError, match="video_balance"):
        video_weights(np.array([1, 2]), 1.5)


def test_samples_are_copies():
    buf = RingBuffer(2, S)
    buf.push(_sample(1))
    rows = buf.sample(4)
    snap = buf.snapshot()
    for i in range(2, 6):
        buf.push(_sample(i))
    assert np.all(rows["frame_index"] == 1) and np.all(rows["image"] == 1)
    assert snap["frame_index"].tolist() == [1] and np.all(snap["kpts2d"] == 1)


def test_concurrent_push_and_sample_never_tear_rows():
    buf = RingBuffer(64, 64)
    done = threading.Event()

    def writer():
        i = 0
        while not done.is_set():
            buf.push(_sample(i, size=64))
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    # Until both sides have really run (a loaded machine can starve either thread for a while).
    rng, batches, end = np.random.default_rng(0), 0, time.monotonic() + 10.0
    try:
        buf.wait_for(1, 5.0)
        while time.monotonic() < end and (batches <= 20 or buf.stats().pushed <= buf.capacity):
            rows = buf.sample(32, rng)
            torn = [r for r in range(32) if not _row_is_whole(rows, r)]
            assert not torn, f"torn rows {torn} in batch {batches}"
            batches += 1
    finally:
        done.set()
        thread.join()
    assert batches > 10 and buf.stats().pushed > buf.capacity  # both sides really ran


def test_wait_for_returns_once_filled():
    buf = RingBuffer(8, S)

    def fill():
        for i in range(3):
            time.sleep(0.05)
            buf.push(_sample(i))

    threading.Thread(target=fill).start()
    t0 = time.monotonic()
    buf.wait_for(3, timeout_s=5.0)
    assert len(buf) >= 3 and time.monotonic() - t0 < 2.0


def test_wait_for_times_out_with_counts():
    buf = RingBuffer(8, S)
    buf.push(_sample(0))
    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match=r"1/4 samples after 0\.[23]") as err:
        buf.wait_for(4, timeout_s=0.25)
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert (err.value.have, err.value.need, err.value.reason) == (1, 4, None)


def test_wait_for_aborts_at_once():
    buf = RingBuffer(8, S)
    calls = []

    def abort():
        calls.append(1)
        return "producer died: boom" if len(calls) > 1 else None

    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match="producer died: boom") as err:
        buf.wait_for(2, timeout_s=30.0, abort=abort)
    assert time.monotonic() - t0 < 2.0
    assert err.value.reason == "producer died: boom"


def test_wait_for_more_than_capacity_is_an_error():
    with pytest.raises(ValueError, match="capacity 4"):
        RingBuffer(4, S).wait_for(5, 1.0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image", np.zeros((3, S + 1, S + 1), np.uint8), "image has shape"),
        ("image", np.zeros((3, S, S), np.float32), "dtype float32"),
        ("kpts2d", np.zeros((17, 2), np.float32), "kpts2d has shape"),
        ("kpts3d", np.full((27, 3), np.nan, np.float32), "kpts3d has non-finite"),
        ("K_crop", np.eye(4, dtype=np.float32), "K_crop has shape"),
    ],
)
def test_push_rejects_bad_samples(field, value, message):
    buf = RingBuffer(4, S)
    bad = _sample(0)
    setattr(bad, field, value)
    with pytest.raises(ValueError, match=message):
        buf.push(bad)
    assert len(buf) == 0 and buf.stats().pushed == 0


def test_empty_buffer_cannot_be_sampled():
    with pytest.raises(EmptyBufferError, match="empty"):
        RingBuffer(4, S).sample(1)


def test_stats_count_pushes_overwrites_and_reads():
    buf = RingBuffer(4, S)
    for i in range(6):
        buf.push(_sample(i))
    buf.sample(5)
    buf.sample(5)
    st = buf.stats()
    assert (st.capacity, st.size, st.fill, st.pushed, st.overwritten) == (4, 4, 1.0, 6, 2)
    assert st.samples_read == 10 and st.reads_per_sample == pytest.approx(10 / 6)


def test_video_ids_round_trip_through_keys():
    buf = RingBuffer(4, S)
    buf.push(_sample(0, video="walk.mp4"))
    buf.push(_sample(1, video="run.mp4"))
    keys = buf.snapshot()["video_key"]
    assert [buf.video_id(k) for k in keys] == ["walk.mp4", "run.mp4"]
    assert all(0 <= k < 2**63 for k in keys) and keys[0] != keys[1]
    with pytest.raises(KeyError):
        buf.video_id(video_key("never-pushed"))


def test_video_key_is_stable_across_processes():
    code = "from data.ring_buffer import video_key; print(video_key('pexels-123'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a salted str hash would differ
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == video_key("pexels-123")


def test_wait_for_reads_paces_a_full_buffer_against_the_reader():
    buf = RingBuffer(4, crop_size=8, seed=0)
    for i in range(4):
        buf.push(_sample(i, size=8))
    stop = threading.Event()
    waited = []
    t = threading.Thread(target=lambda: waited.append(buf.wait_for_reads(1.0, stop, 0.01)))
    t.start()
    time.sleep(0.2)
    assert t.is_alive(), "a full buffer with no reads must make the producer wait"
    buf.sample(1)  # one read pays for one overwrite
    t.join(2.0)
    assert not t.is_alive() and waited[0] >= 0.2
    buf.push(_sample(5, size=8))  # overwritten = 1, reads = 1: the next push must wait again
    stop.set()
    assert buf.wait_for_reads(1.0, stop) < 0.5  # stop releases it at once


def test_wait_for_reads_never_blocks_before_the_buffer_is_full():
    buf = RingBuffer(4, crop_size=8)
    buf.push(_sample(0, size=8))
    assert buf.wait_for_reads(1.0, poll_s=0.01) < 0.05


def test_rows_carry_their_writer_and_write_count():
    buf = RingBuffer(2, S)
    for i in range(5):
        buf.push(_sample(i))
    snap = buf.snapshot()
    assert snap["frame_index"].tolist() == [3, 4] and snap["version"].tolist() == [2, 3]
    assert snap["writer"].tolist() == [0, 0] and buf.stats().slots_by_writer == {0: 2}
    assert set(snap) == set(OUTPUT_FIELDS)


def test_a_closed_buffer_keeps_its_stats_and_refuses_work():
    buf = RingBuffer(4, S)
    buf.push(_sample(1))
    buf.sample(3)
    buf.close()
    buf.close()  # idempotent
    st = buf.stats()
    assert (len(buf), st.pushed, st.samples_read) == (1, 1, 3)
    for call in (lambda: buf.push(_sample(2)), lambda: buf.sample(1), buf.snapshot):
        with pytest.raises(RuntimeError, match="closed"):
            call()


def test_stats_count_memory_per_slot_and_reader_time():
    buf = RingBuffer(10, S)
    buf.push(_sample(0))
    buf.sample(8)
    st = buf.stats()
    labels = 4 * 27 * (2 + 3 + 1) + 4 * 9  # kpts2d, kpts3d, visibility, K_crop (float32)
    assert 3 * S * S + labels < st.bytes_per_sample < 3 * S * S + labels + 200  # + ids
    assert st.crop_bytes_mean == 3 * S * S and st.wait_s > 0 and st.retries == 0


def test_a_process_local_buffer_cannot_be_handed_to_another_process():
    with pytest.raises(RuntimeError, match="shared=True"):
        RingBuffer(4, S).handle


def _hold_lock_forever(buffer):
    """Child: take the buffer's lock (as a push does) and never let go."""
    with buffer._locked():
        time.sleep(600)


def test_the_lock_of_a_process_killed_holding_it_can_be_released():
    import multiprocessing
    import signal

    with RingBuffer(8, S, shared=True) as buf:
        child = multiprocessing.get_context("spawn").Process(target=_hold_lock_forever,
                                                             args=(buf,))
        child.start()
        try:
            deadline = time.monotonic() + 30
            while buf._counters[-1] != child.pid and time.monotonic() < deadline:
                time.sleep(0.01)  # until the child holds the lock
            assert buf.release_lock_of(os.getpid()) is False  # not ours: left alone
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            assert buf.release_lock_of(child.pid) is True
            assert buf.release_lock_of(child.pid) is False  # once only
            buf.push(_sample(1))  # the buffer works again at once
            assert len(buf) == 1
        finally:
            if child.is_alive():
                child.kill()
                child.join()
