"""Numpy arrays in one POSIX shared-memory segment, and that segment's lifecycle.

One process, the owner, creates the segment and is the only one that unlinks it: on `close()`,
on leaving a `with` block (an exception or Ctrl-C included), when the object is garbage
collected and at interpreter exit (`weakref.finalize`). Other processes attach through a small
picklable `SegmentHandle` and only unmap. If the owner itself dies by a signal (SIGKILL), the
multiprocessing resource tracker, which the owner's registration left in charge, unlinks the
segment once the owner and its children have exited.

Segment names start with `SEGMENT_PREFIX` and the owner's pid (`stream_pose_<pid>_<hex>`). When
the whole process group is killed (`kill -9 -- -<pgid>`, an OOM killer, `scancel`, `timeout -s
KILL`), the resource tracker dies too and the segment stays, with the semaphore of the buffer's
lock. So the first segment a process creates (and `train.train` at start-up) first removes
leftovers: `remove_stale_segments` unlinks every `stream_pose_<pid>_*` segment whose owner is
gone, and the semaphores named in its header (the first `HEADER_BYTES` of every segment hold the
names of its companion semaphores), with one log line per segment.

Who is gone is judged by a lock, not by the pid alone: the owner holds a shared flock on its
segment's file for as long as it lives (the kernel drops it however the process dies), so a
segment whose lock is held is in use, even when its owner runs in another pid namespace (a
container sharing /dev/shm) where its pid means nothing here. A segment is stale when its lock
is free and its pid is not alive here (the pid check keeps segments of an older stream-pose
that took no lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
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
HEADER_BYTES = 64  # segment header: companion semaphore names, NUL-separated ASCII
_SEGMENT_RE = re.compile(rf"{SEGMENT_PREFIX}(\d+)_[0-9a-f]+")

# name -> (shape, dtype) of every array in a segment
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]

_tracker_patch = threading.Lock()
_swept = False  # this process has removed stale segments once (`SharedArrays.create`)


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
        lock_fd = _hold_owner_lock(shm.name) if owner else None
        self.handle = SegmentHandle(shm.name, layout)
        self.nbytes = layout_nbytes(layout)
        offsets, _ = _offsets(layout)
        self.arrays: dict[str, np.ndarray] = {
            name: np.ndarray(shape, dtype, buffer=shm.buf, offset=offsets[name])
            for name, (shape, dtype) in layout.items()
        }
        self._finalizer = weakref.finalize(self, _release, shm, owner, lock_fd)

    @classmethod
    def create(cls, layout: Layout, what: str = "shared arrays",
               companions: tuple[str, ...] = ()) -> SharedArrays:
        """Create and zero a new segment for `layout`, owned by this process.

        The first call in a process removes stale segments first (`remove_stale_segments`).

        Args:
            layout: name -> (shape, dtype) of each array.
            what: what the segment holds, for messages.
            companions: names of POSIX semaphores that live and die with the segment (a lock
                of the buffer, `SemLock` names such as "/mp-abc123"): written in its header so
                that a leftover segment's semaphores can be removed with it.

        Raises:
            SharedMemoryTooSmallError: /dev/shm lacks the space (see `check_free_space`).
            ValueError: companion names too long for the header.
        """
        global _swept
        header = "\0".join(companions).encode("ascii")
        if len(header) > HEADER_BYTES:
            raise ValueError(f"companion names take {len(header)} bytes, over {HEADER_BYTES}")
        if not _swept:
            _swept = True
            remove_stale_segments()
        nbytes = layout_nbytes(layout)
        check_free_space(nbytes, what)
        shm = SharedMemory(name=segment_name(), create=True, size=nbytes)
        shm.buf[:len(header)] = header
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


def _hold_owner_lock(name: str, shm_dir: str = SHM_DIR) -> int | None:
    """A descriptor holding a shared flock on segment `name`'s file, for the owner's life;
    None where there is no /dev/shm (macOS: no stale-segment sweep there either)."""
    try:
        fd = os.open(os.path.join(shm_dir, name), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(shm: SharedMemory, owner: bool, lock_fd: int | None = None) -> None:
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
    if lock_fd is not None:
        os.close(lock_fd)


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


def remove_stale_segments(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink the `stream_pose_<pid>_*` segments of `shm_dir` whose owner is gone, and the
    semaphores their headers name; log one line per segment.

    Gone: no process holds the segment's flock (module docstring) and its pid is not alive
    here. A segment whose owner lives, in any pid namespace, is left alone. Where there is no
    /dev/shm (macOS), nothing is done.

    Returns:
        The names of the segments removed.
    """
    if not os.path.isdir(shm_dir):
        return []
    removed = []
    for name in sorted(os.listdir(shm_dir)):
        match = _SEGMENT_RE.fullmatch(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        path = os.path.join(shm_dir, name)
        try:
            with open(path, "rb") as f:
                try:  # held while we unlink: an owner cannot be starting meanwhile
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner lives, in another pid namespace
                header = f.read(HEADER_BYTES)
                size = os.path.getsize(path)
                os.unlink(path)
        except OSError:  # removed meanwhile (another process swept it), or not ours
            continue
        sems = [n for n in header.rstrip(b"\0").decode("ascii", "replace").split("\0") if n]
        gone = [n for n in sems if _unlink_semaphore(shm_dir, n)]
        logger.warning("removed stale shared memory %s (%.1f MiB%s): its owner, pid %s, is gone",
                       name, size / 2**20, f", semaphore {', '.join(gone)}" if gone else "",
                       match.group(1))
        removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_semaphore(shm_dir: str, name: str) -> bool:
    """Remove POSIX semaphore `name` ("/mp-abc123": Linux keeps it as `sem.mp-abc123`)."""
    if not re.fullmatch(r"/?[\w.-]+", name):  # a garbled header: touch nothing
        return False
    try:
        os.unlink(os.path.join(shm_dir, "sem." + name.lstrip("/")))
        return True
    except OSError:
        return False


def _offsets(layout: Layout) -> tuple[dict[str, int], int]:
    """Byte offset of every array (aligned to `_ALIGN`, after the header) and the total size."""
    offsets, end = {}, HEADER_BYTES
    for name, (shape, dtype) in layout.items():
        offsets[name] = end
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        end += -(-size // _ALIGN) * _ALIGN
    return offsets, end
