"""Decode ahead: iterate a video source in a background thread, a few frames ahead of the teacher.

A producer that decodes a frame, labels it, then decodes the next pays decode + teacher time per
frame. PyAV's decoding, libswscale's resize and OpenCV's colour conversion release the GIL, so
with the source iterated in its own thread the next frame decodes on another core while the
teacher labels this one, and a frame costs about max(decode, teacher) instead (measured in
BENCHMARKS.md, benchmark 2).

The queue is bounded because frames are big (a 640x360 RGB frame is 0.7 MB) and because a source
read far ahead would count frames in its `stats` that the teacher never saw.

Threading rules kept here: the source's iterator is created, advanced and closed in the
background thread only (a generator cannot be closed from another thread while it runs), so its
cleanup (closing the PyAV container) runs where it was opened. An exception from the source is
re-raised in the consumer with its traceback. Closing the consumer stops and joins the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.05  # how often a blocked put or get looks at the stop flags
JOIN_TIMEOUT_S = 5.0  # longer than `Producer.stop` waits before it closes a stuck source (1 s)
EXIT_GRACE_S = 0.2  # on an exception: time to finish the frame being decoded (about 10 ms)


class _End:
    """Queue marker: the source is exhausted."""


class _Failure:
    """Queue marker: the source raised `error`."""

    def __init__(self, error: BaseException):
        self.error = error


class PrefetchIterator(Generic[T]):
    """Iterate `source` in a daemon thread, at most `depth` items ahead of the consumer.

    Items come out in the source's order, unchanged (frames are handed over, not copied). Use it
    as a context manager (or call `close()`) so that the thread is stopped and joined when the
    consumer stops early.

    Args:
        source: any iterable, e.g. a `VideoSource` yielding `Frame`s (`[H, W, 3]` uint8 RGB).
        depth: items decoded ahead and waiting (>= 1); each costs one frame of memory.
        stop: optional event (anything with `is_set()`): once set, a consumer waiting for an
            item closes the iterator (see `close`) and ends the iteration, even while the
            source is blocked (resting, downloading).
        name: the thread's name.

    Raises:
        ValueError: if depth < 1.
        Whatever the source raises, from `__next__`, in the consumer's thread.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, *,
                 stop: threading.Event | None = None, name: str = "stream-pose-decode"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._source, self._stop = source, stop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, name=name, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        """The next item; waits for the thread, polling `stop` every `POLL_S`."""
        while not self._done:
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop is not None and self._stop.is_set():
                    self.close()
                continue
            if isinstance(item, _End):
                self.close()
            elif isinstance(item, _Failure):
                self.close()
                raise item.error
            else:
                return item
        raise StopIteration

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread after its current item and join it; idempotent.

        A thread still blocked inside the source after `timeout_s` (default `JOIN_TIMEOUT_S`;
        a source that only its owner can wake, by closing it) is logged and left: it is a
        daemon, it takes no further item, and it exits as soon as the source returns.
        """
        if self._shut_down():
            self._join(JOIN_TIMEOUT_S if timeout_s is None else timeout_s, logging.WARNING)

    @property
    def thread_alive(self) -> bool:
        """True while the background thread runs."""
        return self._thread.is_alive()

    def __enter__(self) -> PrefetchIterator[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """`close()`; when leaving on an exception (Ctrl-C), wait only `EXIT_GRACE_S`: the
        source may be blocked until its owner, further up the stack, closes it."""
        if exc_type is None:
            self.close()
        elif self._shut_down():
            self._join(EXIT_GRACE_S, logging.DEBUG)

    def _shut_down(self) -> bool:
        """Tell the thread to stop and free the waiting items; False if already done."""
        if self._closing.is_set():
            return False
        self._done = True
        self._closing.set()
        self._drain()  # frees the waiting frames and unblocks a put at once
        return True

    def _join(self, timeout_s: float, level: int) -> None:
        self._thread.join(timeout_s)
        self._drain()  # an item the thread put between the first drain and its exit
        if self._thread.is_alive():
            logger.log(level, "decode thread still inside the source after %.1f s; it ends "
                       "when the source returns (daemon)", timeout_s)

    def _fill(self) -> None:
        """Thread body: move the source's items into the queue until it ends, fails or closes."""
        iterator = None
        try:
            iterator = iter(self._source)
            for item in iterator:
                if not self._put(item) or self._closing.is_set():
                    return  # closed: decode nothing more
            self._put(_End())
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's cleanup (the decoder's container) runs in this thread

    def _put(self, item: object) -> bool:
        """Queue `item`, waiting for room; False if the consumer closed first."""
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
