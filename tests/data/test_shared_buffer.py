"""The ring buffer in shared memory: tear-free across processes, and no segment ever left behind.

Writer and reader processes are spawned with this module's functions, so it imports nothing
heavy (no torch): each child re-imports it.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from shared_paths import REPO

import data.ring_buffer as ring_buffer
from data.ring_buffer import BufferLockTimeoutError, RingBuffer, buffer_layout, video_key
from data.shared import SEGMENT_PREFIX, SHM_DIR, SharedMemoryTooSmallError, layout_nbytes
from stream_pose.types import Sample

S = 32

HAS_SHM_DIR = os.path.isdir(SHM_DIR)


def _segments(pid: int | None = None) -> list[str]:
    """Our segments in /dev/shm: those of process `pid` (default: this one)."""
    prefix = f"{SEGMENT_PREFIX}{os.getpid() if pid is None else pid}_"
    return sorted(p.name for p in Path(SHM_DIR).glob(prefix + "*")) if HAS_SHM_DIR else []


@pytest.fixture(autouse=True)
def _no_leftover_segments():
    yield
    assert _segments() == [], "a test left a shared-memory segment behind"


def _checked_sample(i: int, writer: int, rng: np.random.Generator, storage: str) -> Sample:
    """A sample whose fields all derive from `i` and whose crop is checkable after a read.

    raw: random pixels, their CRC32 in `track_id`. jpeg: a flat crop of value i % 251 (JPEG
    keeps flat blocks almost exactly), and `track_id` = i.
    """
    if storage == "raw":
        image = rng.integers(0, 256, (3, S, S), dtype=np.uint8)
        check = zlib.crc32(image.tobytes())
    else:
        image, check = np.full((3, S, S), i % 251, np.uint8), i
    return Sample(image=image, kpts2d=np.full((27, 2), i, np.float32),
                  kpts3d=np.full((27, 3), -i, np.float32), visibility=np.ones(27, np.float32),
                  K_crop=np.eye(3, dtype=np.float32) * i, video_id=f"writer-{writer}",
                  frame_index=i, track_id=check)


def _torn_rows(rows: dict, storage: str) -> int:
    """Rows whose crop, labels and ids do not all belong to the same push."""
    i = rows["frame_index"]
    same = (rows["kpts2d"] == i[:, None, None]).all((1, 2))
    same &= (rows["kpts3d"] == -i[:, None, None]).all((1, 2))
    same &= (rows["K_crop"][:, 0, 0] == i) & (rows["video_key"] == [
        video_key(f"writer-{w}") for w in rows["writer"]])
    if storage == "raw":
        crcs = np.array([zlib.crc32(img.tobytes()) for img in rows["image"]])
        same &= crcs == rows["track_id"]
    else:
        flat = np.abs(rows["image"].astype(int) - (i % 251)[:, None, None, None]).max((1, 2, 3))
        same &= (flat <= 3) & (rows["track_id"] == i)
    return int((~same).sum())


def _write(handle, writer: int, seconds: float, storage: str) -> None:
    """Child process: push checkable samples as fast as it can for `seconds`."""
    buffer = RingBuffer.attach(handle, writer=writer)
    rng, i, end = np.random.default_rng(writer), writer, time.monotonic() + seconds
    while time.monotonic() < end:
        buffer.push(_checked_sample(i, writer, rng, storage))
        i += 2  # the two writers push disjoint values
    buffer.close()


def _read(handle, seconds: float, storage: str, conn) -> None:
    """Child process: sample and check batches for `seconds`; send (rows, torn rows)."""
    buffer = RingBuffer.attach(handle, seed=7)
    buffer.wait_for(1, 30.0)
    rows = torn = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = buffer.sample(16)
        rows, torn = rows + 16, torn + _torn_rows(batch, storage)
    buffer.close()
    conn.send((rows, torn))


@pytest.mark.parametrize("storage", ["raw", pytest.param("jpeg", marks=pytest.mark.slow)])
def test_concurrent_writers_and_readers_in_processes_never_see_a_torn_sample(storage):
    ctx = multiprocessing.get_context("spawn")
    seconds = 1.5
    with RingBuffer(48, S, shared=True, storage=storage) as buffer:
        receive, send = ctx.Pipe(duplex=False)
        procs = [ctx.Process(target=_write, args=(buffer.handle, w, seconds, storage))
                 for w in (0, 1)]
        procs.append(ctx.Process(target=_read, args=(buffer.handle, seconds, storage, send)))
        for p in procs:
            p.start()
        send.close()  # the reader holds its own end: if it dies, recv sees EOF, not a hang
        buffer.wait_for(buffer.capacity, 30.0)  # children are up and writing
        rows = torn = 0
        writers = set()
        deadline = time.monotonic() + 20 * seconds  # a stuck child fails the test, never hangs it
        while any(p.is_alive() for p in procs[:2]) and time.monotonic() < deadline:
            batch = buffer.sample(16)  # this process reads too, meanwhile
            rows, torn = rows + 16, torn + _torn_rows(batch, storage)
            writers.update(batch["writer"].tolist())
        assert receive.poll(max(deadline - time.monotonic(), 1.0)), "reader child sent nothing"
        child_rows, child_torn = receive.recv()
        for p in procs:
            p.join(10)
        stats = buffer.stats()
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert torn == 0 and child_torn == 0, f"torn rows: {torn} here, {child_torn} in child"
        assert rows > 100 and child_rows > 100  # both readers really read
        assert stats.overwritten > 10 * stats.capacity  # the ring lapped many times under reads
        assert writers == {0, 1}  # and both writers' samples reached this reader
        print(f"{storage}: {rows + child_rows} rows checked, {stats.pushed} pushed, "
              f"{stats.retries} rows re-read after racing a write")
        # ids pushed by other processes resolve here, through the per-slot id bytes
        last = buffer.snapshot()
        assert buffer.video_id(last["video_key"][-1]) == f"writer-{last['writer'][-1]}"


def test_a_child_sees_pushes_and_counters_of_the_parent():
    ctx = multiprocessing.get_context("spawn")
    with RingBuffer(8, S, shared=True) as buffer:
        for i in range(10):
            buffer.push(_checked_sample(i, 0, np.random.default_rng(i), "raw"))
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_read, args=(buffer.handle, 0.2, "raw", send))
        child.start()
        send.close()
        rows, torn = receive.recv()
        child.join(10)
        stats = buffer.stats()
    assert rows > 0 and torn == 0
    assert stats.samples_read == rows and stats.pushed == 10 and stats.overwritten == 2


def test_an_exception_inside_with_unlinks_the_segment():
    with pytest.raises(ValueError, match="boom"):
        with RingBuffer(4, S, shared=True) as buffer:
            assert len(_segments()) == 1
            raise ValueError("boom")
    assert buffer.stats().capacity == 4  # stats survive the close
    with pytest.raises(RuntimeError, match="closed"):
        buffer.sample(1)


def test_a_keyboard_interrupt_inside_with_unlinks_the_segment():
    with pytest.raises(KeyboardInterrupt):
        with RingBuffer(4, S, shared=True):
            raise KeyboardInterrupt


def test_an_unreferenced_buffer_is_unlinked_when_collected():
    RingBuffer(4, S, shared=True)  # never closed, never bound
    assert _segments() == []


_OWNER_SCRIPT = textwrap.dedent("""
    import sys, time
    from data.ring_buffer import RingBuffer
    buffer = RingBuffer(4, 16, shared=True)  # never closed: exit must unlink it
    print(buffer.handle.segment.name, flush=True)
    if sys.argv[1] == "wait":
        time.sleep(60)
""")


@pytest.mark.skipif(not HAS_SHM_DIR, reason="needs /dev/shm")
@pytest.mark.parametrize("how", ["normal exit", "ctrl-c", "sigkill"])
def test_the_owner_process_leaves_no_segment(how):
    mode = "exit" if how == "normal exit" else "wait"
    proc = subprocess.Popen([sys.executable, "-c", _OWNER_SCRIPT, mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    assert name.startswith(f"{SEGMENT_PREFIX}{proc.pid}_")
    if how != "normal exit":
        assert (Path(SHM_DIR) / name).exists()
        proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    if how == "ctrl-c":
        assert "KeyboardInterrupt" in stderr
    # After SIGKILL the resource tracker, which outlives its owner, unlinks the segment.
    deadline = time.monotonic() + 10.0
    while (Path(SHM_DIR) / name).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (Path(SHM_DIR) / name).exists()


_TRACKER_SCRIPT = textwrap.dedent("""
    import multiprocessing
    from data.ring_buffer import RingBuffer

    def attach(handle):
        RingBuffer.attach(handle).close()

    if __name__ == "__main__":
        with RingBuffer(4, 16, shared=True) as buffer:
            child = multiprocessing.get_context("spawn").Process(target=attach,
                                                                 args=(buffer.handle,))
            child.start()
            child.join()
            print(child.exitcode)
""")


@pytest.mark.skipif(not HAS_SHM_DIR, reason="needs /dev/shm")
def test_attaching_children_leave_the_resource_tracker_quiet(tmp_path):
    # A registering attach makes the tracker unlink or "leak"-warn, or print a KeyError.
    script = tmp_path / "owner.py"
    script.write_text(_TRACKER_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "0", out.stderr
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr, out.stderr


@pytest.mark.skipif(not HAS_SHM_DIR, reason="needs /dev/shm")
def test_too_little_free_space_is_a_clear_error(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("data.shared.shutil.disk_usage", lambda path: usage(10**6, 0, 5000))
    with pytest.raises(SharedMemoryTooSmallError) as err:
        RingBuffer(1000, 64, shared=True)
    needed = layout_nbytes(buffer_layout(1000, 64))
    assert needed > 1000 * 3 * 64 * 64  # the crops and more
    message = str(err.value)
    assert "capacity 1000" in message and f"({needed} bytes)" in message
    assert "(5000 bytes) free" in message


def test_a_slot_abandoned_mid_write_is_never_read_and_then_reused():
    with RingBuffer(4, S, shared=True) as buffer:
        for i in range(4):
            buffer.push(_checked_sample(i, 0, np.random.default_rng(i), "raw"))
        dying = RingBuffer.attach(buffer.handle, writer=1)
        slot = dying._claim(0, 0)  # claims slot 0 (the oldest), then "dies" before writing
        dying.close()
        rows = buffer.sample(400, np.random.default_rng(0))
        assert 0 not in rows["frame_index"] and _torn_rows(rows, "raw") == 0
        assert buffer.stats().retries > 0  # draws of the busy slot were redrawn
        assert buffer.abandon_writes(1) == 1 and buffer.abandon_writes(1) == 0
        for i in range(4, 8):  # the ring comes round: the abandoned slot is claimed again
            buffer.push(_checked_sample(i, 0, np.random.default_rng(i), "raw"))
        snap = buffer.snapshot()
    assert slot == 0 and sorted(snap["frame_index"]) == [4, 5, 6, 7]
    assert _torn_rows(snap, "raw") == 0 and set(snap["writer"]) == {0}


def test_a_lock_held_by_a_dead_process_fails_reads_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(ring_buffer, "LOCK_TIMEOUT_S", 0.2)
    with RingBuffer(4, S, shared=True) as buffer:
        buffer.push(_checked_sample(0, 0, np.random.default_rng(0), "raw"))
        buffer._lock.acquire()  # stands for a process killed inside a critical section
        try:
            t0 = time.monotonic()
            with pytest.raises(BufferLockTimeoutError, match="died inside"):
                buffer.sample(1)
            assert time.monotonic() - t0 < 2.0
        finally:
            buffer._lock.release()


def test_threads_reading_a_shared_buffer_count_their_reads_and_wait():
    with RingBuffer(16, S, shared=True) as buffer:
        for i in range(16):
            buffer.push(_checked_sample(i, 0, np.random.default_rng(i), "raw"))
        threads = [threading.Thread(target=lambda: [buffer.sample(8) for _ in range(50)])
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = buffer.stats()
    assert stats.samples_read == 3 * 50 * 8 and stats.wait_s > 0
