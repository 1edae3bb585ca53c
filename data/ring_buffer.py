"""A fixed-capacity ring buffer of cropped `Sample`s: producers push, the trainer samples.

Legend: N = capacity, B = batch, J = 27 joints, S = crop side in pixels. 3D in metres,
pelvis-relative, camera-frame axes (X right, Y down, Z forward); 2D in crop pixels.

Memory is either process-local (threads share it) or one shared-memory segment
(`shared=True`, see `data.shared`) that producer processes attach to through `handle`; the
counters live beside the slots, so every process sees the same ones. The slot logic below is the
same for both. Crops are stored raw or as JPEG (`data.storage`).

Tear-free reads: a seqlock per slot. A writer claims a slot under the lock by making its
sequence number odd, copies the sample in without the lock, then makes it even again under
the lock. A reader notes the sequence numbers of the slots it drew, copies them (one fancy-index
copy per field for the whole batch), and keeps only rows whose number was even and unchanged;
the others are drawn again. Several writers claim distinct slots, so writes never overlap; a
slot whose writer died mid-copy is marked abandoned (`abandon_writes`) and reused by the next
claim, its half-written data never being handed out.

Memory ordering: numpy loads and stores carry no ordering of their own. Every read and write
of a sequence number happens with the lock held, and a lock release followed by an acquire (a
futex or POSIX semaphore underneath, whether threading's or multiprocessing's) orders the plain
accesses around it: free on x86-64 (stores are seen in program order), and by the
acquire/release semantics of those lock implementations on ARM64 (glibc, macOS). Python does
not promise this in writing; tests/data/test_shared_buffer.py checks it with a checksum per sample
under concurrent writer and reader processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from data.shared import Layout, SegmentHandle, SharedArrays
from data.storage import CropStorage, make_storage
from stream_pose.skeleton import NUM_JOINTS
from stream_pose.types import Sample

logger = logging.getLogger(__name__)

VIDEO_NAME_BYTES = 64  # UTF-8 bytes of a video id kept per slot, for `video_id` in any process
ABANDONED = -1  # `writer` of a slot whose writer died while copying into it
LOCK_TIMEOUT_S = 10.0  # critical sections last microseconds: longer means a dead lock holder
_READ_ATTEMPTS = 100  # rounds of re-reading rows that raced a write (about 0.1 s at most)
_POLL_S = 0.01  # `wait_for` polling period
_ABORT_POLL_S = 0.1  # `wait_for` calls its `abort` callback this often

# Counters, in one int64 array beside the slots.
(_CURSOR, _SIZE, _PUSHED, _OVERWRITTEN, _READ, _RETRIES, _WAIT_NS, _CROP_BYTES, _REENCODED,
 _LOCK_OWNER) = range(10)  # _LOCK_OWNER: pid holding the lock, 0 when free
_NUM_COUNTERS = 10

_LABEL_FIELDS = ("kpts2d", "kpts3d", "visibility", "K_crop")  # float32 copies of Sample fields
_ID_FIELDS = ("video_key", "frame_index", "track_id", "writer")
# What `sample` and `snapshot` return: the crop, its labels, its ids and its write count.
OUTPUT_FIELDS = ("image", *_LABEL_FIELDS, *_ID_FIELDS, "version")


class EmptyBufferError(RuntimeError):
    """`RingBuffer.sample` was called before any sample was pushed."""


class BufferReadError(RuntimeError):
    """No whole copy of a row could be read: its slot stayed mid-write for `_READ_ATTEMPTS`."""


class BufferLockTimeoutError(RuntimeError):
    """The buffer lock was held past `LOCK_TIMEOUT_S`: a process died inside a critical section."""


class BufferStarvedError(RuntimeError):
    """`RingBuffer.wait_for` gave up: timeout, or the `abort` callback gave a reason.

    Attributes:
        have: samples in the buffer when it gave up.
        need: samples it waited for.
        elapsed_s: seconds it waited.
        reason: the abort reason (e.g. the producer died), or None on a timeout.
    """

    def __init__(self, message: str, *, have: int, need: int, elapsed_s: float,
                 reason: str | None = None):
        super().__init__(message)
        self.have, self.need, self.elapsed_s, self.reason = have, need, elapsed_s, reason


@dataclass(frozen=True)
class BufferStats:
    """A snapshot of the buffer's counters.

    Attributes:
        capacity: slots N.
        fill: size / capacity, in [0, 1].
        size: filled slots.
        pushed: samples written since creation.
        overwritten: samples that replaced an older one (pushed - size once full).
        samples_read: rows handed out by `sample` (with replacement, so rows repeat).
        reads_per_sample: samples_read / pushed, the reuse ratio; high means the teacher
            does not keep up with the trainer.
        storage: "raw" or "jpeg".
        bytes_per_sample: memory per slot (crop budget, labels, ids), bytes: capacity per GiB
            is 2**30 / bytes_per_sample.
        crop_bytes_mean: mean bytes of the crops pushed (their JPEG size; S*S*3 raw).
        reencoded: JPEG crops re-encoded at a lower quality to fit their slot.
        retries: rows read again because a write raced the read.
        wait_s: seconds readers spent in `sample` (lock, copy, decode): the time the trainer
            waited on the buffer when it samples in its own process (else its loaders' time).
        slots_by_writer: filled slots per producer id (`writer` field), e.g. {0: 5100, 1: 2900}.
    """

    capacity: int
    fill: float
    size: int
    pushed: int
    overwritten: int
    samples_read: int
    reads_per_sample: float
    storage: str = "raw"
    bytes_per_sample: int = 0
    crop_bytes_mean: float = 0.0
    reencoded: int = 0
    retries: int = 0
    wait_s: float = 0.0
    slots_by_writer: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BufferHandle:
    """What a process needs to attach to a shared buffer (`RingBuffer.attach`).

    The lock is a multiprocessing (spawn) lock: like any, it can only be handed to a process as
    an argument when it starts (inheritance), not sent later through a queue or pipe.
    """

    segment: SegmentHandle
    lock: Any
    capacity: int
    crop_size: int
    storage_options: dict[str, Any]  # `storage`, `jpeg_quality`, `jpeg_slot_bytes`


def video_key(video_id: str) -> int:
    """Stable 63-bit integer key of a video id string (BLAKE2b, not Python's salted `hash`)."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def video_weights(keys: np.ndarray, alpha: float) -> np.ndarray:
    """Sampling probabilities `[N]` float64 (summing to 1) for slots holding videos `keys` `[N]`.

    A slot of a video with n_v slots gets weight n_v^-alpha, so video v's share of the draws is
    n_v^(1 - alpha) / sum_u n_u^(1 - alpha): alpha = 0 is uniform over slots, alpha = 1 uniform
    over videos. A clip 10x longer than another then gets 10x (0), 3.2x (0.5) or 1x (1) its
    share. On the real corpus one 10 fps walking clip held a third of all labelled people, 81%
    of them seen from behind, and the student learnt to see backs everywhere.

    Raises:
        ValueError: alpha outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"video_balance must be in [0, 1], got {alpha}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -alpha
    return weights / weights.sum()


def buffer_layout(capacity: int, crop_size: int, storage: CropStorage | None = None) -> Layout:
    """Shape and dtype of every buffer field, `[N, ...]`.

    Fields: the crop (`data.storage`: raw `image` uint8 `[N, 3, S, S]`, or `jpeg` bytes and
    `jpeg_len`); kpts2d float32 `[N, J, 2]`; kpts3d float32 `[N, J, 3]`; visibility float32
    `[N, J]`; K_crop float32 `[N, 3, 3]`; video_key, frame_index, track_id int64 `[N]`; writer
    int64 `[N]` (which producer wrote the slot; `ABANDONED` if it died mid-write); video_name
    uint8 `[N, 64]` (the id, UTF-8); seq int64 `[N]` (seqlock: odd while a write is under way,
    2 x completed writes otherwise); counters int64 `[9]`.
    """
    n, j = capacity, NUM_JOINTS
    storage = storage or make_storage("raw", crop_size)
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return {
        **storage.layout(n),
        "kpts2d": ((n, j, 2), f32),
        "kpts3d": ((n, j, 3), f32),
        "visibility": ((n, j), f32),
        "K_crop": ((n, 3, 3), f32),
        **{name: ((n,), i64) for name in _ID_FIELDS},
        "video_name": ((n, VIDEO_NAME_BYTES), np.dtype(np.uint8)),
        "seq": ((n,), i64),
        "counters": ((_NUM_COUNTERS,), i64),
    }


class _LocalArrays:
    """Process-local stand-in for `SharedArrays`: the same fields, in ordinary numpy memory."""

    handle = None

    def __init__(self, layout: Layout):
        self.arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()}
        self.nbytes = sum(a.nbytes for a in self.arrays.values())

    def close(self) -> None:
        self.arrays = {}


class RingBuffer:
    """Preallocated ring of `capacity` samples; the newest sample replaces the oldest.

    Any number of threads, and with `shared=True` any number of processes, may push and sample
    (see the module docstring). Fields are listed in `buffer_layout`. Close it (or use `with`)
    to release shared memory; `stats()` still answers afterwards.

    Args:
        capacity: number of slots N (> 0).
        crop_size: crop side S in pixels (> 0); pushed images must be `[3, S, S]` uint8.
        seed: seed of the generator `sample` uses when it is given none.
        shared: put the slots and counters in shared memory, for producer processes.
        storage: "raw" (uint8 pixels) or "jpeg" (see `data.storage`).
        jpeg_quality: JPEG quality of the first encoding try, 1..100.
        jpeg_slot_bytes: JPEG budget per slot; None: S*S*3/8.

    Raises:
        ValueError: on a non-positive capacity or crop size, or bad storage settings.
        data.shared.SharedMemoryTooSmallError: /dev/shm cannot hold the buffer.
    """

    def __init__(
        self,
        capacity: int,
        crop_size: int = 256,
        *,
        seed: int | None = None,
        shared: bool = False,
        storage: str = "raw",
        jpeg_quality: int = 90,
        jpeg_slot_bytes: int | None = None,
    ):
        if capacity <= 0 or crop_size <= 0:
            raise ValueError(f"capacity and crop_size must be > 0, got {capacity}, {crop_size}")
        options = {"storage": storage, "jpeg_quality": int(jpeg_quality),
                   "jpeg_slot_bytes": jpeg_slot_bytes}
        store = make_storage(crop_size=crop_size, **options)
        layout = buffer_layout(capacity, crop_size, store)
        if shared:
            what = f"a ring buffer of capacity {capacity} ({storage}, {crop_size} px crops)"
            # spawn: the start method producers use; its locks work under fork too.
            lock = multiprocessing.get_context("spawn").Lock()
            # Its semaphore's name goes in the segment's header: a leftover segment (a killed
            # process group) is removed with it (`data.shared.remove_stale_segments`).
            memory = SharedArrays.create(layout, what, companions=(lock._semlock.name,))
        else:
            memory, lock = _LocalArrays(layout), threading.Lock()
        self._setup(int(capacity), int(crop_size), store, options, memory, lock, seed, writer=0)

    @classmethod
    def attach(
        cls, handle: BufferHandle, *, writer: int = 0, seed: int | None = None
    ) -> RingBuffer:
        """The shared buffer behind `handle`, in this process (which never unlinks it).

        Args:
            handle: `RingBuffer.handle` of the owner.
            writer: id stamped on the slots this process writes (the producer's index, >= 0).
            seed: seed of this process's sampling generator.

        Raises:
            FileNotFoundError: the owner has closed the buffer already.
        """
        self = cls.__new__(cls)
        store = make_storage(crop_size=handle.crop_size, **handle.storage_options)
        memory = SharedArrays.attach(handle.segment)
        self._setup(handle.capacity, handle.crop_size, store, handle.storage_options, memory,
                    handle.lock, seed, writer)
        return self

    def _setup(self, capacity: int, crop_size: int, storage: CropStorage,
               storage_options: dict[str, Any], memory: SharedArrays | _LocalArrays, lock: Any,
               seed: int | None, writer: int) -> None:
        if writer < 0:
            raise ValueError(f"writer ids are >= 0, got {writer}")
        self.capacity, self.crop_size, self.storage = capacity, crop_size, storage
        self._pid = os.getpid()
        self._weights: tuple[tuple[int, int, float], np.ndarray] | None = None  # video_balance
        self._storage_options = storage_options
        self._memory, self._lock, self._writer = memory, lock, int(writer)
        self._data = memory.arrays
        self._counters, self._seq = self._data["counters"], self._data["seq"]
        # Fields copied per row by a read: all but the bookkeeping ones.
        self._rows = {k: v for k, v in self._data.items() if k not in ("counters", "seq")}
        self._rng = np.random.default_rng(seed)
        self._video_ids: dict[int, str] = {}
        self._final: BufferStats | None = None  # stats at close

    # Lifecycle

    @property
    def shared(self) -> bool:
        """True when the slots live in shared memory."""
        return isinstance(self._memory, SharedArrays)

    @property
    def handle(self) -> BufferHandle:
        """What `RingBuffer.attach` needs in another process.

        Raises:
            RuntimeError: for a process-local buffer.
        """
        if not isinstance(self._memory, SharedArrays):
            raise RuntimeError("a process-local ring buffer has no handle: use shared=True")
        return BufferHandle(self._memory.handle, self._lock, self.capacity, self.crop_size,
                            self._storage_options)

    def __reduce__(self) -> tuple:
        """Pickling a shared buffer (e.g. into a DataLoader worker) attaches to it there."""
        return RingBuffer.attach, (self.handle,)

    def close(self) -> None:
        """Release the memory (the owner of a shared buffer unlinks it); idempotent.

        `stats()` and `len()` keep answering with the final counters; other calls raise.
        """
        if self._final is not None:
            return
        self._final = self.stats()
        self._data = self._rows = {}
        self._counters = self._seq = None  # drop every view before unmapping
        self._memory.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Filled slots."""
        return self._final.size if self._final is not None else int(self._counters[_SIZE])

    # Writing

    def push(self, sample: Sample) -> None:
        """Write `sample` into the next slot, replacing the oldest one when full.

        Raises:
            ValueError: if a field has the wrong shape or dtype (e.g. a crop of another size),
                or a float field is not finite.
            data.storage.CropTooLargeError: a JPEG crop over its slot budget (a ValueError).
        """
        self._check(sample)
        crop, steps = self.storage.encode(np.asarray(sample.image))
        key = video_key(sample.video_id)
        self._remember_video(key, sample.video_id)
        slot = self._claim(crop.nbytes, steps)
        try:
            self._write(slot, sample, crop, key)
        except BaseException:  # Ctrl-C mid-copy: the slot's data is half-written
            with self._locked():
                self._data["writer"][slot] = ABANDONED
            raise
        with self._locked():
            self._seq[slot] += 1  # even again: the row is whole

    def abandon_writes(self, writer: int) -> int:
        """Give up the slot(s) `writer` was copying into when it died; returns how many.

        Their half-written data is never read (their sequence numbers stay odd) and the next
        claim reuses them. Call after the writer's process is gone, before restarting it.
        """
        with self._locked():
            busy = (self._data["writer"] == writer) & (self._seq % 2 == 1)
            self._data["writer"][busy] = ABANDONED
        return int(busy.sum())

    def _claim(self, crop_bytes: int, reencoded: int) -> int:
        """Under the lock: the next slot that no one is writing, made odd, counters updated."""
        c, writer = self._counters, self._data["writer"]
        with self._locked():
            cursor = int(c[_CURSOR])
            for _ in range(self.capacity):
                slot = cursor % self.capacity
                cursor += 1
                if self._seq[slot] % 2 == 0 or writer[slot] == ABANDONED:
                    break
            else:
                raise RuntimeError(f"all {self.capacity} slots are being written: the capacity "
                                   "must exceed the number of producers")
            self._seq[slot] += 1 if self._seq[slot] % 2 == 0 else 2  # odd, and a new number
            writer[slot] = self._writer
            c[_CURSOR] = cursor
            if c[_SIZE] < self.capacity:
                c[_SIZE] += 1
            else:
                c[_OVERWRITTEN] += 1
            c[_PUSHED] += 1
            c[_CROP_BYTES] += crop_bytes
            c[_REENCODED] += reencoded
        return slot

    def _write(self, slot: int, sample: Sample, crop: Any, key: int) -> None:
        """Copy one sample into its claimed slot (no lock: no one else writes this slot)."""
        d = self._data
        self.storage.write(d, slot, crop)
        for name in _LABEL_FIELDS:
            d[name][slot] = getattr(sample, name)
        d["video_key"][slot] = key
        d["frame_index"][slot] = sample.frame_index
        d["track_id"][slot] = sample.track_id
        name = sample.video_id.encode("utf-8")[:VIDEO_NAME_BYTES]
        d["video_name"][slot] = 0
        d["video_name"][slot, : len(name)] = np.frombuffer(name, np.uint8)

    # Reading

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, video_balance: float = 0.0
    ) -> dict[str, np.ndarray]:
        """Draw `batch_size` rows, with replacement, from the filled slots.

        Args:
            batch_size: B > 0.
            rng: generator for the indices; default: the buffer's own (seeded by `seed`).
            video_balance: alpha in [0, 1]: a slot is drawn with probability proportional to
                n_v^-alpha, n_v the slots its video holds. 0 is uniform over slots (a long
                video dominates as much as it fills the buffer); 1 gives every video the same
                share; 0.5 is between (see `video_weights`).

        Returns:
            `OUTPUT_FIELDS` with a leading `[B]`: `image` uint8 `[B, 3, S, S]` (decoded when
            stored as JPEG), the labels, the ids, and `version` (writes the slot had seen);
            fresh copies that later pushes never change.

        Raises:
            EmptyBufferError: if nothing was pushed yet.
            ValueError: if batch_size <= 0.
            BufferReadError, BufferLockTimeoutError: see their docstrings (never in practice).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self._check_open()
        start = time.perf_counter_ns()
        size = len(self)  # read without the lock: it only grows, and `_read` checks every row
        if size == 0:
            raise EmptyBufferError(
                f"ring buffer is empty (capacity {self.capacity}); wait for producers first"
            )
        rng = rng or self._rng
        if video_balance > 0:
            p = self._video_weights(size, video_balance)
            draw = lambda n: rng.choice(size, n, p=p)  # noqa: E731
        else:
            draw = lambda n: rng.integers(0, size, n)  # noqa: E731
        rows, retries = self._read(draw(batch_size), redraw=draw)
        rows = self._output(rows)
        with self._locked():
            self._counters[_READ] += batch_size
            self._counters[_RETRIES] += retries
            self._counters[_WAIT_NS] += time.perf_counter_ns() - start
        return rows

    def _video_weights(self, size: int, alpha: float) -> np.ndarray:
        """`video_weights` of the filled slots, recomputed only after new pushes.

        A racy read of the keys: they only weight the draw, and `_read` checks every row.
        """
        key = (int(self._counters[_PUSHED]), size, alpha)
        if self._weights is None or self._weights[0] != key:
            self._weights = key, video_weights(self._rows["video_key"][:size], alpha)
        return self._weights[1]

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of all filled slots, oldest first, `OUTPUT_FIELDS` `[size, ...]` (a val set)."""
        self._check_open()
        with self._locked():
            size, cursor = int(self._counters[_SIZE]), int(self._counters[_CURSOR])
        start = cursor % self.capacity if size == self.capacity else 0
        rows, _ = self._read((start + np.arange(size)) % self.capacity, redraw=None)
        return self._output(rows)

    def _read(
        self, idx: np.ndarray, redraw: Callable[[int], np.ndarray] | None
    ) -> tuple[dict[str, np.ndarray], int]:
        """Seqlock copy of the rows at slots `idx`; returns the rows and how many were re-read.

        A row whose slot was mid-write, or written during the copy, is read again: from a newly
        drawn slot when `redraw` is given (a slot being written holds no sample yet), else from
        the same slot once its writer is done.
        """
        idx, todo = np.array(idx, dtype=np.int64), np.arange(len(idx))
        rows: dict[str, np.ndarray] | None = None
        retries = 0
        for attempt in range(_READ_ATTEMPTS):
            slots = idx[todo]
            with self._locked():
                before = self._seq[slots]
            part = {name: arr[slots] for name, arr in self._rows.items()}  # one copy per field
            with self._locked():
                after = self._seq[slots]
            part["seq"] = before
            whole = (before == after) & (before % 2 == 0) & (before > 0)
            if rows is None:
                rows = part
            else:
                for name, value in part.items():
                    rows[name][todo[whole]] = value[whole]
            todo = todo[~whole]
            if not len(todo):
                return rows, retries
            retries += len(todo)
            if redraw is not None:
                idx[todo] = redraw(len(todo))
            if attempt >= 2:
                time.sleep(0.001)  # a writer is mid-copy: let it finish
        raise BufferReadError(f"{len(todo)} rows stayed mid-write over {_READ_ATTEMPTS} reads")

    def _output(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`OUTPUT_FIELDS` of whole rows: the crops decoded, the write count from seq."""
        out = {name: rows[name] for name in OUTPUT_FIELDS if name in rows}
        out["image"] = self.storage.decode(rows)
        out["version"] = rows["seq"] // 2
        return out

    # Waiting and pacing

    def wait_for_reads(
        self, reads_per_overwrite: float, stop: threading.Event | None = None,
        poll_s: float = 0.005,
    ) -> float:
        """Block a producer until its next push would not outrun the trainer; seconds waited.

        Once the buffer is full, every push overwrites a sample. This waits until the trainer has
        read at least `reads_per_overwrite` samples per sample overwritten so far (counting the
        next one), so a teacher faster than training (the synthetic oracle) does not burn a core
        labelling samples nobody reads. A slow teacher never waits. Returns early when `stop`
        (anything with `is_set()`) is set. Polls every `poll_s` seconds: a cross-process
        condition variable would hang its notifier if a waiting producer were killed.
        """
        start = time.perf_counter()
        c = self._counters
        while (
            c[_SIZE] == self.capacity
            and (c[_OVERWRITTEN] + 1) * reads_per_overwrite > c[_READ]
            and not (stop is not None and stop.is_set())
        ):
            time.sleep(poll_s)
        return time.perf_counter() - start

    def wait_for(
        self, n: int, timeout_s: float, abort: Callable[[], str | None] | None = None
    ) -> None:
        """Block until the buffer holds at least `n` samples.

        Args:
            n: samples to wait for, 0 <= n <= capacity.
            timeout_s: seconds to wait at most.
            abort: polled a few times a second; a non-None return (e.g. "producer died: ...")
                ends the wait at once.

        Raises:
            BufferStarvedError: on timeout or abort, with the counts and elapsed time.
            ValueError: if n > capacity (it could never be reached).
        """
        if n > self.capacity:
            raise ValueError(f"cannot wait for {n} samples in a buffer of capacity {self.capacity}")
        start = next_abort = time.monotonic()
        while len(self) < n:
            now = time.monotonic()
            if abort is not None and now >= next_abort:
                next_abort = now + _ABORT_POLL_S
                reason = abort()
                if reason is not None and len(self) < n:  # re-check: the last push may have raced
                    raise self._starved(n, start, reason)
            if now - start >= timeout_s:
                raise self._starved(n, start, None)
            time.sleep(_POLL_S)

    # Telemetry and ids

    def stats(self) -> BufferStats:
        """Current counters (see `BufferStats`); the final ones after `close`."""
        if self._final is not None:
            return self._final
        with self._locked():
            c = self._counters.tolist()
        pushed, size = c[_PUSHED], c[_SIZE]
        writers, counts = np.unique(self._data["writer"][:size], return_counts=True)
        return BufferStats(
            capacity=self.capacity,
            fill=size / self.capacity,
            size=size,
            pushed=pushed,
            overwritten=c[_OVERWRITTEN],
            samples_read=c[_READ],
            reads_per_sample=c[_READ] / pushed if pushed else 0.0,
            storage=self.storage.name,
            bytes_per_sample=round(self._memory.nbytes / self.capacity),
            crop_bytes_mean=c[_CROP_BYTES] / pushed if pushed else 0.0,
            reencoded=c[_REENCODED],
            retries=c[_RETRIES],
            wait_s=c[_WAIT_NS] / 1e9,
            slots_by_writer=dict(zip(writers.tolist(), counts.tolist())),
        )

    def video_id(self, key: int) -> str:
        """The video id string behind a `video_key` value.

        Ids pushed by this process are always known; ids pushed by another process are found
        while one of their samples is in the buffer (their first 64 UTF-8 bytes).

        Raises:
            KeyError: if no sample of that video was pushed here or is in the buffer.
        """
        key = int(key)
        if key in self._video_ids:
            return self._video_ids[key]
        self._check_open()
        for slot in np.flatnonzero(self._data["video_key"] == key):
            rows, _ = self._read(np.array([slot]), redraw=None)
            if int(rows["video_key"][0]) == key:  # not overwritten since the search
                return rows["video_name"][0].tobytes().rstrip(b"\0").decode("utf-8", "ignore")
        raise KeyError(key)

    # Internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock, or fail clearly if a dead process kept it (never wait forever)."""
        if not self._lock.acquire(True, LOCK_TIMEOUT_S):
            raise BufferLockTimeoutError(
                f"the ring buffer lock was held for over {LOCK_TIMEOUT_S:.0f} s: a process "
                "sharing the buffer probably died inside a push or read"
            )
        self._counters[_LOCK_OWNER] = self._pid
        try:
            yield
        finally:
            self._counters[_LOCK_OWNER] = 0
            self._lock.release()

    def release_lock_of(self, pid: int) -> bool:
        """Release the lock if process `pid` died holding it; True if it did.

        A producer killed by SIGKILL inside a push (a few microseconds under the lock, or while
        polling the counters when the buffer is full) leaves the lock taken for good, and every
        other process would then fail with `BufferLockTimeoutError`. The pool calls this for a
        dead worker before restarting it. The process must be dead: a live holder would lose
        its lock. A kill between taking the lock and recording the owner (two statements) is
        not recovered.
        """
        if pid <= 0 or int(self._counters[_LOCK_OWNER]) != pid:
            return False
        self._counters[_LOCK_OWNER] = 0
        self._lock.release()  # a semaphore: any process may release it
        return True

    def _check_open(self) -> None:
        if self._final is not None:
            raise RuntimeError("the ring buffer is closed")

    def _remember_video(self, key: int, video_id: str) -> None:
        known = self._video_ids.setdefault(key, video_id)
        if known != video_id:  # 63-bit collision: practically never, but never silent
            raise ValueError(f"video ids {known!r} and {video_id!r} hash to the same key {key}")

    def _check(self, sample: Sample) -> None:
        self._check_open()
        s, j = self.crop_size, NUM_JOINTS
        shapes = {"image": (3, s, s), "kpts2d": (j, 2), "kpts3d": (j, 3), "visibility": (j,),
                  "K_crop": (3, 3)}
        for name, shape in shapes.items():
            arr = np.asarray(getattr(sample, name))
            if arr.shape != shape:
                raise ValueError(f"sample.{name} has shape {arr.shape}, expected {shape}")
            if name == "image" and arr.dtype != np.uint8:
                raise ValueError(f"sample.image has dtype {arr.dtype}, expected uint8")
            if name != "image" and not np.all(np.isfinite(arr)):
                raise ValueError(f"sample.{name} has non-finite values")

    def _starved(self, n: int, start: float, reason: str | None) -> BufferStarvedError:
        have, elapsed = len(self), time.monotonic() - start
        why = f": {reason}" if reason else " (timeout)"
        return BufferStarvedError(
            f"ring buffer has {have}/{n} samples after {elapsed:.1f} s{why}",
            have=have, need=n, elapsed_s=elapsed, reason=reason,
        )
