"""The Lightning DataModule that wires a video source, a teacher, the ring buffer and the loaders.

Validation is split off by video (the source's "val" split), labelled once, synchronously, and
frozen in memory, so val metrics compare the student with the teacher on videos it never trains
on. Training samples come from a `Producer` thread that keeps refilling the ring buffer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import lightning as L
import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data.dataset import BufferDataset, FrozenDataset
from data.producer import Producer, ProducerStats, label_stream
from data.ring_buffer import BufferStarvedError, RingBuffer
from labeler.base import Teacher
from video_sources.base import VideoSource

logger = logging.getLogger(__name__)


class EmptyValidationSetError(RuntimeError):
    """The validation split gave no labelled person at all."""


class StreamDataModule(L.LightningDataModule):
    """Frozen validation set plus an endless training stream from a ring buffer.

    Args:
        source: factory of video sources (e.g. a Hydra `_partial_`); called as
            `source(split="train")` and `source(split="val", loop=False)`.
        teacher: factory of teachers; each call makes a new instance (one for validation, one
            inside the producer thread).
        capacity: ring buffer slots.
        crop_size: crop side S in pixels.
        batch_size: B, for training and validation batches.
        min_samples: samples the buffer must hold before training starts.
        start_timeout_s: seconds to wait for `min_samples` before giving up.
        val_max_samples: the validation set holds at most this many samples.
        reads_per_overwrite: the producer pauses while the trainer has read fewer samples than
            this per overwritten one (a teacher faster than training); None: never pause.
        seed: seeds the training batch sampler.

    Raises:
        ValueError: on inconsistent sizes (e.g. min_samples > capacity).
    """

    def __init__(
        self,
        source: Callable[..., VideoSource],
        teacher: Callable[[], Teacher],
        *,
        capacity: int = 20000,
        crop_size: int = 256,
        batch_size: int = 64,
        min_samples: int = 512,
        start_timeout_s: float = 300.0,
        val_max_samples: int = 512,
        reads_per_overwrite: float | None = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        if min(capacity, crop_size, batch_size, min_samples, val_max_samples) <= 0:
            raise ValueError("capacity, crop_size, batch_size, min_samples, val_max_samples > 0")
        if min_samples > capacity:
            raise ValueError(f"min_samples {min_samples} > capacity {capacity}")
        self._source_factory, self._teacher_factory = source, teacher
        self.capacity, self.crop_size, self.batch_size = capacity, crop_size, batch_size
        self.min_samples, self.start_timeout_s = min_samples, start_timeout_s
        self.val_max_samples, self.seed = val_max_samples, seed
        self.reads_per_overwrite = reads_per_overwrite
        self._buffer: RingBuffer | None = None
        self._producer: Producer | None = None
        self._train_dataset: BufferDataset | None = None
        self._val_set: dict[str, np.ndarray] | None = None
        self._val_video_ids: list[str] = []

    # Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Build the validation set (fit, validate), then start and prime the producer (fit).

        Safe to call more than once: finished parts are kept.

        Raises:
            EmptyValidationSetError: the val split gave no labelled person.
            BufferStarvedError: the buffer did not reach `min_samples` in time, or the producer
                died or ran out first (chained to the producer's exception, if any).
        """
        if stage in (None, "fit", "validate") and self._val_set is None:
            self._build_val()
        if stage in (None, "fit") and self._producer is None:
            self._start_train()

    def train_dataloader(self) -> DataLoader:
        """Endless `[B, ...]` batches from the ring buffer (image uint8 `[B, 3, S, S]`)."""
        if self._buffer is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        self._train_dataset = BufferDataset(self._buffer, self.batch_size, seed=self.seed)
        return DataLoader(self._train_dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        """The frozen validation set in order, `[B, ...]` batches (image uint8)."""
        if self._val_set is None:
            raise RuntimeError("call setup('fit') or setup('validate') before val_dataloader()")
        return DataLoader(
            FrozenDataset(self._val_set), batch_size=self.batch_size, shuffle=False, num_workers=0
        )

    def teardown(self, stage: str | None = None) -> None:
        """Stop the producer (see `close`)."""
        self.close()

    def close(self) -> None:
        """Stop the producer thread and close its teacher and source; idempotent."""
        if self._producer is not None:
            self._producer.stop()

    # Telemetry for the trainer

    @property
    def buffer(self) -> RingBuffer | None:
        """The training ring buffer (None before setup)."""
        return self._buffer

    @property
    def producer_stats(self) -> ProducerStats | None:
        """A copy of the producer's live counters (None before setup)."""
        return None if self._producer is None else self._producer.stats

    @property
    def producer_failure(self) -> str | None:
        """Why the producer stopped delivering (crash, source ran out), or None while it runs."""
        return None if self._producer is None else self._producer.failure_reason()

    @property
    def train_dataset(self) -> BufferDataset | None:
        """The dataset behind the last `train_dataloader()`, for its sampling telemetry."""
        return self._train_dataset

    @property
    def val_video_ids(self) -> list[str]:
        """Ids of the videos in the validation set, in order of arrival."""
        return list(self._val_video_ids)

    @property
    def train_video_ids_seen(self) -> list[str]:
        """Ids of the training videos the producer has streamed so far."""
        stats = self.producer_stats
        return [] if stats is None else list(stats.per_video)

    # Internals

    def _build_val(self) -> None:
        """Label the val split synchronously into its own buffer and freeze it."""
        buffer = RingBuffer(self.val_max_samples, self.crop_size)
        with contextlib.ExitStack() as closing:
            source = self._source_factory(split="val", loop=False)
            closing.callback(source.close)
            teacher = self._teacher_factory()
            closing.callback(teacher.close)
            stats = label_stream(
                source, teacher, buffer, self.crop_size, max_samples=self.val_max_samples
            )
        if len(buffer) == 0:
            raise EmptyValidationSetError(_empty_val_message(stats))
        self._val_set = buffer.snapshot()
        keys, counts = np.unique(self._val_set["video_key"], return_counts=True)
        per_video = {buffer.video_id(k): int(c) for k, c in zip(keys, counts)}
        self._val_video_ids = [v for v in stats.per_video if v in per_video]
        logger.info(
            "validation set: %d samples from %d videos: %s",
            len(buffer), len(per_video),
            ", ".join(f"{v} ({per_video[v]})" for v in self._val_video_ids),
        )

    def _start_train(self) -> None:
        """Start the producer and wait until the buffer holds `min_samples`."""
        self._buffer = RingBuffer(self.capacity, self.crop_size, seed=self.seed)
        self._producer = Producer(
            self._source_factory(split="train"), self._teacher_factory,
            self._buffer, self.crop_size, reads_per_overwrite=self.reads_per_overwrite,
        )
        self._producer.start()
        try:
            self._wait_for_fill()
        except BaseException:
            self.close()
            raise
        overlap = set(self._val_video_ids) & set(self.train_video_ids_seen)
        if overlap:
            logger.warning("videos in both train and val splits: %s", sorted(overlap))

    def _wait_for_fill(self) -> None:
        """`buffer.wait_for(min_samples)` in short steps, drawing a progress bar."""
        logger.info(
            "filling the ring buffer: %d samples needed (timeout %.0f s)",
            self.min_samples, self.start_timeout_s,
        )
        start = time.monotonic()
        with tqdm(total=self.min_samples, desc="ring buffer", unit="sample", disable=None) as bar:
            while True:
                bar.update(min(len(self._buffer), self.min_samples) - bar.n)
                remaining = self.start_timeout_s - (time.monotonic() - start)
                try:
                    self._buffer.wait_for(
                        self.min_samples, min(1.0, max(remaining, 0.0)),
                        abort=self._producer.failure_reason,
                    )
                    break
                except BufferStarvedError as exc:
                    if exc.reason is None and remaining > 1.0:
                        continue  # one short step timed out; keep waiting
                    raise self._starved(exc, time.monotonic() - start) from self._producer.error
            bar.update(self.min_samples - bar.n)
        logger.info("ring buffer primed: %d samples in %.1f s", len(self._buffer),
                    time.monotonic() - start)

    def _starved(self, exc: BufferStarvedError, elapsed_s: float) -> BufferStarvedError:
        total = self._producer.stats.total
        why = exc.reason or f"timeout after {elapsed_s:.1f} s (see start_timeout_s)"
        return BufferStarvedError(
            f"training buffer has {exc.have}/{exc.need} samples: {why}. Producer so far: "
            f"{total.frames} frames, {total.persons} persons, {total.errors} teacher errors",
            have=exc.have, need=exc.need, elapsed_s=elapsed_s, reason=exc.reason,
        )


def _empty_val_message(stats: ProducerStats) -> str:
    src, total = stats.source_stats, stats.total
    videos = "" if src is None else f" ({src.videos_ok} videos read, {src.videos_skipped} skipped)"
    return (
        f"the validation split gave no labelled person: {total.frames} frames{videos}, "
        f"{total.persons} persons, {total.errors} teacher errors"
        + (f" (last: {stats.last_error})" if stats.last_error else "")
        + ". Give the source validation videos (e.g. val_videos / val_fraction)."
    )
