"""Thin torch datasets over the ring buffer (training) and over a frozen snapshot (validation).

Legend: B batch, J = 27 joints, S crop side. Both yield `stream_pose.batch.Batch`es (the
frozen set through `Batch.collate`), whose fields are `data.ring_buffer.OUTPUT_FIELDS` with the
dtypes of `data.ring_buffer.buffer_layout`; `image` stays uint8 `[.., 3, S, S]` and becomes float
only on the training device.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from data.ring_buffer import RingBuffer
from stream_pose.batch import LABEL_FIELDS, Batch


class BufferDataset(IterableDataset):
    """Endless whole batches sampled with replacement from a live `RingBuffer`.

    Use with `DataLoader(ds, batch_size=None)`. With `num_workers=0` the batch is gathered in
    the trainer's process with one copy per field. With a shared buffer, DataLoader worker
    processes work too (`StreamDataModule(loader_workers=...)`): each unpickled copy attaches
    to the buffer and draws from its own random stream, so workers never repeat each other.

    Args:
        buffer: the ring buffer the producers fill.
        batch_size: B rows per batch.
        seed: seeds the index generator; each new iterator (and DataLoader worker) gets its
            own stream.
        video_balance: 0 draws slots uniformly; up to 1 evens out the videos' shares
            (`RingBuffer.sample`, `data.ring_buffer.video_weights`).

    Attributes:
        batches: batches yielded so far (in this process).
        sample_s: seconds spent inside `buffer.sample` (lock waits, copies, JPEG decoding)
            in this process, for telemetry.

    Raises:
        ValueError: if batch_size <= 0.
    """

    def __init__(self, buffer: RingBuffer, batch_size: int, *, seed: int = 0,
                 video_balance: float = 0.0):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.buffer, self.batch_size = buffer, batch_size
        self.video_balance = video_balance
        self._seeds = np.random.SeedSequence(seed)
        self.batches, self.sample_s = 0, 0.0

    @property
    def mean_sample_ms(self) -> float:
        """Mean milliseconds per batch spent sampling the buffer."""
        return 1000.0 * self.sample_s / self.batches if self.batches else 0.0

    def __iter__(self):
        """Yield `Batch`es, each field `[B, ...]`, forever.

        Raises:
            data.ring_buffer.EmptyBufferError: if the buffer is empty (wait for it first).
        """
        info = get_worker_info()
        seeds = self._seeds if info is None else np.random.SeedSequence(
            [self._seeds.entropy, info.id])
        rng = np.random.default_rng(seeds.spawn(1)[0])
        while True:
            t0 = time.perf_counter()
            rows = self.buffer.sample(self.batch_size, rng, self.video_balance)
            self.sample_s += time.perf_counter() - t0
            self.batches += 1
            yield Batch.from_arrays(rows)


class FrozenDataset(Dataset):
    """Single samples from a frozen snapshot (`RingBuffer.snapshot()`), for validation.

    Items are `dict[str, Tensor]` (the `Batch` fields) without the batch dimension; a
    DataLoader with `collate_fn=Batch.collate` batches them into `Batch`es.

    Args:
        arrays: fields `[N, ...]` as `RingBuffer.snapshot()` returns them.

    Raises:
        ValueError: if a required field is missing or the fields disagree on N.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        missing = [k for k in LABEL_FIELDS if k not in arrays]
        if missing:
            raise ValueError(f"snapshot lacks {missing}")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"snapshot fields disagree on their length: {lengths}")
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self._len = lengths["image"]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}
