"""Numpy arrays in one POSIX shared-memory segment, and that segment's lifecycle.

One process, the owner, creates the segment and is the only one that unlinks it: on `close()`,
on leaving a `with` block (an exception or Ctrl-C included), when the object is garbage
collected and at interpreter exit (`weakref.finalize`). Other processes attach through a small
picklable `SegmentHandle` and only unmap. If the owner itself dies by a signal (SIGKILL), the
multiprocessing resource tracker, which the owner's registration left in charge, unlinks the
segment once the owner and its children have exited.

Segment names start with `SEGMENT_PREFIX` and the owner's pid (`stream_pose_<pid>_<hex>`), so
tests and users can spot leftovers in /dev/shm.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "stream_pose_"
SHM_DIR = "/dev/shm"  # Linux tmpfs; macOS has none (and no way to ask for its free space)
_ALIGN = 64  # bytes: every array starts on a cache line

# name -> (shape, dtype) of every array in a segment
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]

_tracker_patch = threading.Lock()


class SharedMemoryTooSmallError(MemoryError):
    """/dev/shm has less free space than a buffer needs; the message gives both sizes."""


@dataclass(frozen=True)
class SegmentHandle:
    """What another process needs to attach to a segment: its name and array layout (picklable)."""

    name: str
    layout: Layout


def segment_name() -> str:
    """A fresh `stream_pose_<pid>_<8 hex>` name (29 bytes with the leading '/': macOS allows 31)."""
    return f"{SEGMENT_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


def layout_nbytes(layout: Layout) -> int:
    """Bytes a segment with this layout occupies, cache-line padding included."""
    return _offsets(layout)[1]


def check_free_space(nbytes: int, what: str) -> None:
    """Fail early when /dev/shm cannot hold `nbytes` more.

    tmpfs allocates pages lazily, so a too-small /dev/shm (Docker's default is 64 MB) would
    otherwise surface later as a "Bus error" in whichever process first touches the missing page.
    Skipped where there is no /dev/shm (macOS).

    Raises:
        SharedMemoryTooSmallError: naming `what` (e.g. the capacity), the bytes needed and free.
    """
    if not os.path.isdir(SHM_DIR):
        return
    free = shutil.disk_usage(SHM_DIR).free
    if nbytes > free:
        raise SharedMemoryTooSmallError(
            f"{what} needs {nbytes / 2**20:.1f} MiB ({nbytes} bytes) of shared memory but "
            f"{SHM_DIR} has {free / 2**20:.1f} MiB ({free} bytes) free: lower the capacity, use "
            f"storage=jpeg, or enlarge {SHM_DIR} (docker run --shm-size=...)"
        )


class SharedArrays:
    """Named numpy arrays laid out in one shared-memory segment.

    Build with `create` (owner) or `attach` (any other process). Use as a context manager or
    call `close()`; both are idempotent. New segments read as zeros (tmpfs pages start zeroed
    and are only backed by memory once touched).

    Attributes:
        arrays: name -> array view into the segment, shaped and typed as in the layout.
        handle: name and layout, for `attach` in another process.
        owner: True in the process that created (and will unlink) the segment.
        nbytes: segment size in bytes.
    """

    def __init__(self, shm: SharedMemory, layout: Layout, owner: bool):
        self._shm, self.owner = shm, owner
        self.handle = SegmentHandle(shm.name, layout)
        self.nbytes = layout_nbytes(layout)
        offsets, _ = _offsets(layout)
        self.arrays: dict[str, np.ndarray] = {
            name: np.ndarray(shape, dtype, buffer=shm.buf, offset=offsets[name])
            for name, (shape, dtype) in layout.items()
        }
        self._finalizer = weakref.finalize(self, _release, shm, owner)

    @classmethod
    def create(cls, layout: Layout, what: str = "shared arrays") -> SharedArrays:
        """Create and zero a new segment for `layout`, owned by this process.

        Raises:
            SharedMemoryTooSmallError: /dev/shm lacks the space (see `check_free_space`).
        """
        nbytes = layout_nbytes(layout)
        check_free_space(nbytes, what)
        shm = SharedMemory(name=segment_name(), create=True, size=nbytes)
        logger.debug("created shared memory %s: %d bytes for %s", shm.name, nbytes, what)
        return cls(shm, layout, owner=True)

    @classmethod
    def attach(cls, handle: SegmentHandle) -> SharedArrays:
        """Map an existing segment; this process will unmap it but never unlink it.

        Raises:
            FileNotFoundError: the owner has already unlinked the segment.
        """
        return cls(_attach_untracked(handle.name), handle.layout, owner=False)

    @property
    def name(self) -> str:
        """The segment's name (without the leading '/'), as listed in /dev/shm."""
        return self.handle.name

    def close(self) -> None:
        """Drop the array views and unmap; the owner also unlinks. Idempotent."""
        self.arrays = {}  # views pin the mapping: release them before unmapping
        self._finalizer()

    def __enter__(self) -> SharedArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(shm: SharedMemory, owner: bool) -> None:
    """Unmap (never raising) and, for the owner, unlink: what matters for leaks is the unlink."""
    try:
        shm.close()
    except BufferError:  # a caller still holds a view; the mapping goes when the process does
        logger.debug("shared memory %s still has views; unmapped at exit", shm.name)
    if owner:
        try:
            shm.unlink()  # also unregisters it from the resource tracker
        except FileNotFoundError:
            pass


def _attach_untracked(name: str) -> SharedMemory:
    """Attach to segment `name` without registering it with the resource tracker.

    CPython < 3.13 registers every attach, not only creation (gh-82300). In a process with its
    own tracker, that tracker would unlink the owner's segment when the process exits (and warn
    of a "leak"). In a spawned child the tracker is the parent's, shared; there, the common
    workaround of calling `resource_tracker.unregister` after attaching is wrong too: it drops
    the owner's registration, and the tracker prints a KeyError when the owner unlinks (seen on
    3.11). Not registering at all is right in both cases; 3.13 added `track=False` for this.
    """
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)
    with _tracker_patch:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return SharedMemory(name=name)
        finally:
            resource_tracker.register = register


def _offsets(layout: Layout) -> tuple[dict[str, int], int]:
    """Byte offset of every array (aligned to `_ALIGN`) and the total size."""
    offsets, end = {}, 0
    for name, (shape, dtype) in layout.items():
        offsets[name] = end
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        end += -(-size // _ALIGN) * _ALIGN
    return offsets, max(end, _ALIGN)
