"""The Lightning DataModule that wires a video source, a teacher, the ring buffer and the loaders.

Validation is split off by video (the source's "val" split), labelled once, synchronously, and
frozen in memory, so val metrics compare the student with the teacher on videos it never trains
on. Training samples come from producers that keep refilling the ring buffer: processes
(`data.workers.ProducerPool`, shared-memory buffer) or, with `producer.workers=0`, one thread.

Training batches are gathered in the trainer's process by default: one fancy-index copy per
field, 0.13 ms for 32 raw 128 px crops (measured on 2 cores), which DataLoader workers could only
slow down with a second copy and a pickle per batch. JPEG decoding costs 2.4 ms per 32 crops at
128 px and 8.6 ms at 256 px: there `loader_workers` moves it into DataLoader processes that
attach to the shared buffer. Augmentation runs on the training device in the module.

Under Lightning DDP every rank has its own buffer and producers, on its own shards of the stream
(`data.workers.worker_shard`), and validates its share of the same frozen val set.

Resuming: `state_dict` (saved in every checkpoint) lists the training videos used so far;
`load_state_dict` makes the sources skip them. Lightning restores it after `setup` and before
`train_dataloader`, so the stream starts in the latter. The ring buffer is never saved (it holds
crops): a resumed run refills it from the stream.

Provenance: `provenance_videos` lists every video labelled (validation and training, all ranks)
with its `VideoRef` and counters, and `teacher_names` who labelled them, for the manifest every
checkpoint carries (`train.callbacks.ProvenanceRecorder`, `stream_pose.provenance`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any, Callable

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from data.dataset import BufferDataset, FrozenDataset
from data.producer import (
    ProducerFailedError,
    ProducerStats,
    StreamProducer,
    label_stream,
)
from data.ring_buffer import BufferStarvedError, RingBuffer, buffer_layout
from data.shared import check_free_space, layout_nbytes
from data.storage import make_storage
from data.workers import ProducerSettings, shard_kwargs, worker_shard
from data.workers.ray_farm import RayFarmSettings
from labeler.base import Teacher
from stream_pose.batch import Batch
from stream_pose.provenance import merge_videos, video_entry
from video_sources.base import VideoSource

logger = logging.getLogger(__name__)

USED_VIDEOS_KEY = "train_videos_used"  # in `state_dict`: {"<shard>/<num_shards>": [video ids]}


class EmptyValidationSetError(RuntimeError):
    """The validation split gave no labelled person at all."""


class StreamDataModule(L.LightningDataModule):
    """Frozen validation set plus an endless training stream from a ring buffer.

    Args:
        source: factory of video sources (e.g. a Hydra `_partial_`); called as
            `source(split="val", loop=False)` here and `source(split="train")` by each producer,
            with `shard=..., num_shards=...` added when there are several producers or ranks,
            and `skip_ids=...` after `load_state_dict`. Must be picklable for producer processes.
        teacher: factory of teachers; each call makes a new instance (one for validation, one
            per producer). Must be picklable for producer processes.
        capacity: ring buffer slots.
        crop_size: crop side S in pixels.
        storage: crop storage in the buffer, "raw" or "jpeg" (see `data.storage`).
        jpeg_quality: JPEG quality of the first encoding try.
        jpeg_slot_bytes: JPEG budget per slot in bytes; None: S*S*3/8.
        producer: producer processes and their supervision; None or `workers=0`: one thread
            in this process and a process-local buffer.
        loader_workers: DataLoader processes that sample (and decode) training batches; 0
            samples in the trainer's process. Either makes the buffer shared.
        batch_size: B, for training and validation batches.
        min_samples: samples the buffer must hold before training starts.
        start_timeout_s: seconds to wait for `min_samples` before giving up.
        val_max_samples: the validation set holds at most this many samples.
        reads_per_overwrite: the producer pauses while the trainer has read fewer samples than
            this per overwritten one (a teacher faster than training); None: never pause.
        video_balance: alpha in [0, 1] of the training sampler: 0 draws buffered samples
            uniformly, 1 gives every buffered video the same share (`data.ring_buffer.
            video_weights`), so a long clip does not drown the others.
        seed: seeds the training batch sampler.

    Raises:
        ValueError: on inconsistent sizes (e.g. min_samples > capacity) or storage settings.
    """

    def __init__(
        self,
        source: Callable[..., VideoSource],
        teacher: Callable[[], Teacher],
        *,
        capacity: int = 20000,
        crop_size: int = 256,
        storage: str = "raw",
        jpeg_quality: int = 90,
        jpeg_slot_bytes: int | None = None,
        producer: ProducerSettings | RayFarmSettings | None = None,
        loader_workers: int = 0,
        batch_size: int = 64,
        min_samples: int = 512,
        start_timeout_s: float = 300.0,
        val_max_samples: int = 512,
        reads_per_overwrite: float | None = 1.0,
        video_balance: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if min(capacity, crop_size, batch_size, min_samples, val_max_samples) <= 0:
            raise ValueError("capacity, crop_size, batch_size, min_samples, val_max_samples > 0")
        if min_samples > capacity:
            raise ValueError(f"min_samples {min_samples} > capacity {capacity}: lower "
                             "buffer.min_samples or raise buffer.capacity")
        if loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {loader_workers}")
        self._source_factory, self._teacher_factory = source, teacher
        self.capacity, self.crop_size, self.batch_size = capacity, crop_size, batch_size
        self.min_samples, self.start_timeout_s = min_samples, start_timeout_s
        self.val_max_samples, self.seed = val_max_samples, seed
        self.reads_per_overwrite = reads_per_overwrite
        if not 0.0 <= video_balance <= 1.0:
            raise ValueError(f"video_balance must be in [0, 1], got {video_balance}")
        self.video_balance = video_balance
        make_storage(storage, crop_size, jpeg_quality, jpeg_slot_bytes)  # fail fast if invalid
        self.storage_options = {"storage": storage, "jpeg_quality": jpeg_quality,
                                "jpeg_slot_bytes": jpeg_slot_bytes}
        self.producer_settings = producer or ProducerSettings(workers=0)
        self.loader_workers = loader_workers
        self._buffer: RingBuffer | None = None
        self._producer: StreamProducer | None = None
        self._train_dataset: BufferDataset | None = None
        self._val_set: dict[str, np.ndarray] | None = None
        self._val_video_ids: list[str] = []
        self._val_skipped: list[tuple[str, str]] = []  # videos the val pass skipped
        self._val_stats: ProducerStats | None = None  # the val pass's counters and refs
        self._val_samples: dict[str, int] = {}  # samples of each video in the frozen val set
        self._used_before: dict[str, list[str]] = {}  # restored by load_state_dict

    def check(self, rank: int = 0, world_size: int = 1) -> None:
        """Check the settings that need no labelling, in seconds, before any labelling starts.

        Builds (and closes, unread) the validation source and the training source of each of
        this rank's producers, which checks their paths, validation ids, options and that no
        shard is empty; and checks that /dev/shm can hold a shared training buffer.

        Args:
            rank, world_size: this trainer's place among DDP ranks.

        Raises:
            Whatever the source factory raises for bad settings (FileNotFoundError for a
            missing path, ValueError for unknown val ids, an empty shard or a bad option, a
            missing API key); data.shared.SharedMemoryTooSmallError.
        """
        self._source_factory(split="val", loop=False).close()
        workers = max(self.producer_settings.workers, 1)
        for worker in range(workers):
            shard, num_shards = worker_shard(rank, worker, workers, world_size)
            self._source_factory(split="train", **shard_kwargs(shard, num_shards)).close()
        if self.producer_settings.shared_buffer or self.loader_workers > 0:
            store = make_storage(crop_size=self.crop_size, **self.storage_options)
            nbytes = layout_nbytes(buffer_layout(self.capacity, self.crop_size, store))
            check_free_space(nbytes, f"a ring buffer of capacity {self.capacity}")

    # Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Build the frozen validation set (fit, validate); safe to call more than once.

        The training stream starts in `train_dataloader`: Lightning restores a checkpoint's
        `load_state_dict` after `setup`, and the producers must know which videos to skip.

        Raises:
            EmptyValidationSetError: the val split gave no labelled person.
        """
        if stage in (None, "fit", "validate") and self._val_set is None:
            self._build_val()

    def train_dataloader(self) -> DataLoader:
        """Endless `[B, ...]` batches from the ring buffer (image uint8 `[B, 3, S, S]`).

        The first call starts the producers on this rank's shards of the stream, minus the
        videos of a restored `state_dict`, and waits until the buffer holds `min_samples`.

        Raises:
            RuntimeError: before `setup('fit')`.
            BufferStarvedError: the buffer did not reach `min_samples` in time, or the producer
                died or ran out first (chained to the producer's exception, if any).
        """
        if self._val_set is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        if self._producer is None:
            self._start_train()
        self._train_dataset = BufferDataset(self._buffer, self.batch_size, seed=self.seed,
                                            video_balance=self.video_balance)
        workers = self.loader_workers
        return DataLoader(self._train_dataset, batch_size=None, num_workers=workers,
                          multiprocessing_context="spawn" if workers else None,
                          persistent_workers=workers > 0)

    def val_dataloader(self) -> DataLoader:
        """The frozen validation set in order, `[B, ...]` batches (image uint8).

        Under DDP, rank r of W gets samples r, r + W, ... of the set padded to a multiple of W
        with copies whose visibility is 0, which no loss or metric counts. So every rank runs
        the same number of batches, and metrics summed over ranks (torchmetrics' sync) equal
        the single-process ones; Lightning's own sampler would pad with counted repeats.
        """
        if self._val_set is None:
            raise RuntimeError("call setup('fit') or setup('validate') before val_dataloader()")
        rank, world_size = self._rank()
        dataset = FrozenDataset(_pad_invisible(self._val_set, world_size))
        sampler = None if world_size == 1 else DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0,
                          collate_fn=Batch.collate)

    def state_dict(self) -> dict[str, Any]:
        """The training stream's cursor, for checkpoints: the videos used so far (metadata only).

        Under DDP every rank must call it, as Lightning's checkpointing does: the ranks' ids are
        gathered (`torch.distributed.all_gather_object`), so that one checkpoint holds them all.

        Returns:
            `{"train_videos_used": {"<shard>/<num_shards>": [video ids, sorted]}}`: the videos
            this run's producers have started, by shard (`data.workers.worker_shard`; asked of
            the producer processes at once, `ProducerPool.refresh_stats`), merged with those
            restored.
        """
        used = _merge_used([self._used_before, self._used_by_shard()])
        return {USED_VIDEOS_KEY: _merge_used(_all_gather(used))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the training sources skip every video `state_dict` lists (see `state_dict`).

        The sources take them as `skip_ids`; with a new shard layout (more producers or ranks)
        each still skips them all. The ring buffer is not restored: it refills from the stream.

        Raises:
            ValueError: a state without `train_videos_used` as a dict of lists of ids.
            RuntimeError: the training stream has started: its videos may already repeat.
        """
        used = state_dict.get(USED_VIDEOS_KEY)
        if not isinstance(used, dict) or not all(isinstance(v, list) for v in used.values()):
            raise ValueError(f"datamodule state needs {USED_VIDEOS_KEY!r}: {{shard: [video ids]}}, "
                             f"got {sorted(state_dict)}")
        if self._producer is not None:
            raise RuntimeError("load_state_dict after the training stream started")
        self._used_before = _merge_used([used])
        logger.info("resuming the stream: skipping %d training videos used before; the ring "
                    "buffer is not in checkpoints (it holds crops) and refills from the stream",
                    len(self._skip_ids()))

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Fail the step once the producers have failed for good (see `check_producers`)."""
        self.check_producers()
        return batch

    def check_producers(self) -> None:
        """Raise the producers' error, if they failed for good.

        The buffer never runs dry (it samples with replacement), so without this check a run
        whose producers died would go on training on a frozen buffer.

        Raises:
            ProducerFailedError: chained to the producer's own exception.
        """
        error = None if self._producer is None else self._producer.error
        if error is not None:
            raise ProducerFailedError(self._producer.failure_reason()) from error

    def teardown(self, stage: str | None = None) -> None:
        """Stop the producers and release the buffer (see `close`)."""
        self.close()

    def close(self) -> None:
        """Stop the producers (closing their teachers and sources), then close the training
        buffer, which unlinks its shared memory; idempotent. Stats stay readable."""
        if self._producer is not None:
            self._producer.stop()
        if self._buffer is not None:
            self._buffer.close()

    # Telemetry for the trainer

    @property
    def buffer(self) -> RingBuffer | None:
        """The training ring buffer (None before setup)."""
        return self._buffer

    @property
    def producer(self) -> StreamProducer | None:
        """The training stream's producer, a thread or a process pool (None before setup)."""
        return self._producer

    @property
    def producer_stats(self) -> ProducerStats | None:
        """A copy of the producer's live counters (None before setup)."""
        return None if self._producer is None else self._producer.stats

    @property
    def producer_restarts(self) -> int:
        """Producer processes restarted after dying (0 for a thread, or before setup)."""
        return 0 if self._producer is None else self._producer.restarts

    @property
    def producer_stalls(self) -> int:
        """Producer processes killed for making no progress (0 for a thread, or before setup)."""
        return 0 if self._producer is None else self._producer.stalls

    @property
    def skipped_videos(self) -> list[tuple[str, str]]:
        """`(video, reason)` of every video skipped so far, validation and training: unreadable
        ones (the sources') and those the teacher failed on (the producers')."""
        out = list(self._val_skipped)
        stats = self.producer_stats
        if stats is not None:
            src = stats.source_stats
            out += [] if src is None else [tuple(x) for x in src.skipped]
            out += [(v, "the teacher failed on its first frames") for v in stats.skipped_videos]
        return list(dict.fromkeys(out))

    @property
    def labelling_finished(self) -> bool:
        """True once the producers ended cleanly because their finite stream ran out
        (`source.loop=false`): no more samples will come, and their cores are free."""
        producer = self._producer
        return (producer is not None and producer.error is None
                and producer.failure_reason() is not None)

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

    @property
    def teacher_factory(self) -> Callable[[], Teacher]:
        """The factory every teacher of this datamodule is built with."""
        return self._teacher_factory

    @property
    def teacher_names(self) -> list[str]:
        """`Teacher.name` of the teachers that labelled so far (validation, this rank's
        producers), without repeats; empty before any labelling."""
        parts = (self._val_stats, self.producer_stats)
        return list(dict.fromkeys(p.teacher for p in parts if p is not None and p.teacher))

    def provenance_videos(self) -> list[dict[str, Any]]:
        """Every video this run labelled, as manifest entries (`stream_pose.provenance.
        video_entry`: id, kind, uri, licence, attribution, split, frames, samples).

        Validation: the videos of the frozen set, with the frames the teacher labelled and the
        samples kept (every rank holds the same set: this rank's). Training: the videos every
        rank's producers started (asked of the producer processes at once, `refresh_stats`),
        frames labelled and samples pushed, summed over producers. Under DDP every rank must
        call it (a collective, as `state_dict`).
        """
        val = self._val_stats
        val_entries = [] if val is None else [
            video_entry(val.refs.get(v), video_id=v, split="val",
                        frames=val.per_video[v].frames, samples=self._val_samples.get(v, 0))
            for v in self._val_video_ids]
        train: list[dict[str, Any]] = []
        if self._producer is not None:
            if not self._producer.refresh_stats():
                logger.warning("a producer did not report in time: its latest videos may be "
                               "missing from the provenance manifest")
            stats = self._producer.stats
            train = [video_entry(stats.refs.get(v), video_id=v, split="train", frames=s.frames,
                                 samples=s.samples_pushed) for v, s in stats.per_video.items()]
        return merge_videos(e for part in _all_gather(train) for e in part) + val_entries

    # Internals

    def _build_val(self) -> None:
        """Label the val split synchronously into its own (raw, local) buffer and freeze it."""
        buffer = RingBuffer(self.val_max_samples, self.crop_size)
        with contextlib.ExitStack() as closing:
            source = self._source_factory(split="val", loop=False)
            closing.callback(source.close)
            teacher = self._teacher_factory()
            closing.callback(teacher.close)
            stats = label_stream(
                source, teacher, buffer, max_samples=self.val_max_samples
            )
        src = stats.source_stats
        self._val_skipped = ([] if src is None else [tuple(x) for x in src.skipped]) + [
            (v, "the teacher failed on its first frames") for v in stats.skipped_videos]
        if len(buffer) == 0:
            raise EmptyValidationSetError(_empty_val_message(stats))
        self._val_set = buffer.snapshot()
        keys, counts = np.unique(self._val_set["video_key"], return_counts=True)
        per_video = {buffer.video_id(k): int(c) for k, c in zip(keys, counts)}
        self._val_video_ids = [v for v in stats.per_video if v in per_video]
        self._val_stats, self._val_samples = stats, per_video
        logger.info(
            "validation set: %d samples from %d videos: %s",
            len(buffer), len(per_video),
            ", ".join(f"{v} ({per_video[v]})" for v in self._val_video_ids),
        )

    def _start_train(self) -> None:
        """Start the producers and wait until the buffer holds `min_samples`."""
        shared = self.producer_settings.shared_buffer or self.loader_workers > 0
        self._buffer = RingBuffer(self.capacity, self.crop_size, seed=self.seed, shared=shared,
                                  **self.storage_options)
        self._producer = self._make_producer()
        try:
            self._producer.start()
            self._wait_for_fill()
        except BaseException:
            self.close()
            raise
        overlap = set(self._val_video_ids) & set(self.train_video_ids_seen)
        if overlap:
            logger.warning("videos in both train and val splits: %s", sorted(overlap))

    def _make_producer(self) -> StreamProducer:
        """This rank's producer (`producer_settings.build`: processes, a thread or a Ray farm)
        on its shard, skipping the videos a restored checkpoint used."""
        rank, world_size = self._rank()
        factory, skip = self._source_factory, self._skip_ids()
        if skip:
            factory = functools.partial(factory, skip_ids=skip)
        return self.producer_settings.build(
            factory, self._teacher_factory, self._buffer, rank=rank, world_size=world_size,
            reads_per_overwrite=self.reads_per_overwrite)

    def _rank(self) -> tuple[int, int]:
        """(global rank, world size) from the attached trainer; (0, 1) without one."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _skip_ids(self) -> frozenset[str]:
        """Ids of the training videos a restored checkpoint had used, all shards together."""
        return frozenset(v for ids in self._used_before.values() for v in ids)

    def _used_by_shard(self) -> dict[str, list[str]]:
        """Ids of the training videos this rank's producers streamed, by "<shard>/<num_shards>"."""
        if self._producer is None:
            return {}
        rank, world_size = self._rank()
        if not self._producer.refresh_stats():
            logger.warning("a producer did not report in time: its latest videos may be "
                           "missing from the checkpoint's list")
        stats = self._producer.worker_stats()
        workers = len(stats)
        return {"%d/%d" % worker_shard(rank, w, workers, world_size): list(s.per_video)
                for w, s in enumerate(stats)}

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


def _merge_used(parts: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """Union of `{shard: [video ids]}` dicts, shard by shard, ids sorted."""
    merged: dict[str, set[str]] = {}
    for part in parts:
        for shard, ids in part.items():
            merged.setdefault(shard, set()).update(ids)
    return {shard: sorted(ids) for shard, ids in sorted(merged.items())}


def _all_gather(obj: Any) -> list[Any]:
    """`obj` from every DDP rank, in rank order (a collective); `[obj]` outside DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _pad_invisible(arrays: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Fields `[N, ...]` padded to a multiple of `multiple` rows with copies of the first rows
    whose `visibility` `[N, J]` is 0, so that no loss or metric counts them."""
    n = len(arrays["visibility"])
    pad = -n % multiple
    if pad == 0:
        return arrays
    copies = np.arange(pad) % n
    padded = {k: np.concatenate([v, v[copies]]) for k, v in arrays.items()}
    padded["visibility"][n:] = 0
    return padded


def _empty_val_message(stats: ProducerStats) -> str:
    src, total = stats.source_stats, stats.total
    videos = "" if src is None else f" ({src.videos_ok} videos read, {src.videos_skipped} skipped)"
    return (
        f"the validation split gave no labelled person: {total.frames} frames{videos}, "
        f"{total.persons} persons, {total.errors} teacher errors"
        + (f" (last: {stats.last_error})" if stats.last_error else "")
        + ". Give the source validation videos (e.g. val_videos / val_fraction)."
    )
