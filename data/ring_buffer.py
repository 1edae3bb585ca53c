"""A fixed-capacity ring buffer of cropped `Sample`s: producers push, the trainer samples.

Legend: N = capacity, J = 27 joints, S = crop side in pixels. 3D in metres, pelvis-relative,
camera-frame axes (X right, Y down, Z forward); 2D in crop pixels.

Memory is preallocated once, by `_allocate`, so that a later change can put the slots in shared
memory (for producer processes) without touching `push` or `sample`. Today one lock guards every
slot: a producer thread writes while the trainer reads, and a read never sees a half-written row.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stream_pose.skeleton import NUM_JOINTS
from stream_pose.types import Sample

logger = logging.getLogger(__name__)

# The float fields a Sample carries, copied into same-named buffer fields.
_SAMPLE_FIELDS = ("image", "kpts2d", "kpts3d", "visibility", "K_crop")


class EmptyBufferError(RuntimeError):
    """`RingBuffer.sample` was called before any sample was pushed."""


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
    """

    capacity: int
    fill: float
    size: int
    pushed: int
    overwritten: int
    samples_read: int
    reads_per_sample: float


def video_key(video_id: str) -> int:
    """Stable 63-bit integer key of a video id string (BLAKE2b, not Python's salted `hash`)."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def buffer_layout(capacity: int, crop_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every buffer field, `[N, ...]`.

    Fields: image uint8 `[N, 3, S, S]`; kpts2d float32 `[N, J, 2]`; kpts3d float32 `[N, J, 3]`;
    visibility float32 `[N, J]`; K_crop float32 `[N, 3, 3]`; video_key, frame_index, track_id
    int64 `[N]`; version int64 `[N]`, a per-slot write stamp (for tear detection across processes).
    """
    n, s, j = capacity, crop_size, NUM_JOINTS
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return {
        "image": ((n, 3, s, s), np.dtype(np.uint8)),
        "kpts2d": ((n, j, 2), f32),
        "kpts3d": ((n, j, 3), f32),
        "visibility": ((n, j), f32),
        "K_crop": ((n, 3, 3), f32),
        "video_key": ((n,), i64),
        "frame_index": ((n,), i64),
        "track_id": ((n,), i64),
        "version": ((n,), i64),
    }


def _allocate(layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """The one place buffer memory is created (process-local today; shared memory later)."""
    return {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()}


class RingBuffer:
    """Preallocated ring of `capacity` samples; the newest sample replaces the oldest.

    Thread-safe: one lock guards the slots and counters, so any number of threads may push and
    sample. Fields are listed in `buffer_layout`.

    Args:
        capacity: number of slots N (> 0).
        crop_size: crop side S in pixels (> 0); pushed images must be `[3, S, S]` uint8.
        seed: seed of the generator `sample` uses when it is given none.

    Raises:
        ValueError: on a non-positive capacity or crop size.
    """

    def __init__(self, capacity: int, crop_size: int = 256, *, seed: int | None = None):
        if capacity <= 0 or crop_size <= 0:
            raise ValueError(f"capacity and crop_size must be > 0, got {capacity}, {crop_size}")
        self.capacity, self.crop_size = int(capacity), int(crop_size)
        self._layout = buffer_layout(self.capacity, self.crop_size)
        self._data = _allocate(self._layout)
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)
        self._rng = np.random.default_rng(seed)
        self._video_ids: dict[int, str] = {}
        self._size = self._pushed = self._overwritten = self._samples_read = 0

    def __len__(self) -> int:
        """Filled slots."""
        return self._size

    def push(self, sample: Sample) -> None:
        """Write `sample` into the next slot, replacing the oldest one when full.

        Raises:
            ValueError: if a field has the wrong shape or dtype (e.g. a crop of another size),
                or a float field is not finite.
        """
        self._check(sample)
        key = video_key(sample.video_id)
        with self._lock:
            self._remember_video(key, sample.video_id)
            slot = self._pushed % self.capacity
            for name in _SAMPLE_FIELDS:
                self._data[name][slot] = getattr(sample, name)
            self._data["video_key"][slot] = key
            self._data["frame_index"][slot] = sample.frame_index
            self._data["track_id"][slot] = sample.track_id
            self._data["version"][slot] += 1
            if self._size == self.capacity:
                self._overwritten += 1
            else:
                self._size += 1
            self._pushed += 1
            self._filled.notify_all()

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Draw `batch_size` rows uniformly, with replacement, from the filled slots.

        Args:
            batch_size: B > 0.
            rng: generator for the indices; default: the buffer's own (seeded by `seed`).

        Returns:
            Every field of `buffer_layout` with a leading `[B]`; fresh copies made under the
            lock, so later pushes never change them.

        Raises:
            EmptyBufferError: if nothing was pushed yet.
            ValueError: if batch_size <= 0.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        with self._lock:
            if self._size == 0:
                raise EmptyBufferError(
                    f"ring buffer is empty (capacity {self.capacity}); wait for producers first"
                )
            idx = (rng or self._rng).integers(0, self._size, size=batch_size)
            out = {name: arr[idx] for name, arr in self._data.items()}  # fancy index: a copy
            self._samples_read += batch_size
            self._filled.notify_all()  # wakes a producer pacing itself in `wait_for_reads`
        return out

    def wait_for_reads(
        self, reads_per_overwrite: float, stop: threading.Event | None = None, poll_s: float = 0.1
    ) -> float:
        """Block a producer until its next push would not outrun the trainer; seconds waited.

        Once the buffer is full, every push overwrites a sample. This waits until the trainer has
        read at least `reads_per_overwrite` samples per sample overwritten so far (counting the
        next one), so a teacher faster than training (the synthetic oracle) does not burn a core
        labelling samples nobody reads. A slow teacher never waits. Returns early when `stop` is set.
        """
        start = time.perf_counter()
        with self._filled:
            while (
                self._size == self.capacity
                and (self._overwritten + 1) * reads_per_overwrite > self._samples_read
                and not (stop is not None and stop.is_set())
            ):
                self._filled.wait(poll_s)
        return time.perf_counter() - start

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of all filled slots, oldest first, each field `[size, ...]` (e.g. a val set)."""
        with self._lock:
            start = self._pushed % self.capacity if self._size == self.capacity else 0
            idx = (start + np.arange(self._size)) % self.capacity
            return {name: arr[idx] for name, arr in self._data.items()}

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
        start = time.monotonic()
        while True:
            remaining = timeout_s - (time.monotonic() - start)
            with self._filled:
                # Short waits so that `abort` is polled: a dead producer never notifies.
                if self._filled.wait_for(lambda: self._size >= n, min(0.1, max(remaining, 0.0))):
                    return
            reason = abort() if abort is not None else None
            if reason is not None and len(self) < n:  # re-check: the last push may have raced
                raise self._starved(n, start, reason)
            if remaining <= 0:
                raise self._starved(n, start, None)

    def stats(self) -> BufferStats:
        """Current counters (see `BufferStats`)."""
        with self._lock:
            return BufferStats(
                capacity=self.capacity,
                fill=self._size / self.capacity,
                size=self._size,
                pushed=self._pushed,
                overwritten=self._overwritten,
                samples_read=self._samples_read,
                reads_per_sample=self._samples_read / self._pushed if self._pushed else 0.0,
            )

    def video_id(self, key: int) -> str:
        """The video id string behind a `video_key` value.

        Raises:
            KeyError: if no sample of that video was ever pushed.
        """
        with self._lock:
            return self._video_ids[int(key)]

    def _remember_video(self, key: int, video_id: str) -> None:
        known = self._video_ids.setdefault(key, video_id)
        if known != video_id:  # 63-bit collision: practically never, but never silent
            raise ValueError(f"video ids {known!r} and {video_id!r} hash to the same key {key}")

    def _check(self, sample: Sample) -> None:
        for name in _SAMPLE_FIELDS:
            shape, dtype = self._layout[name]
            arr = np.asarray(getattr(sample, name))
            if arr.shape != shape[1:]:
                raise ValueError(f"sample.{name} has shape {arr.shape}, expected {shape[1:]}")
            if name == "image" and arr.dtype != dtype:
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
