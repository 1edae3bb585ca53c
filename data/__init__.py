"""The data stage: labelled crops held in a ring buffer and served to the trainer.

- `data.ring_buffer`: `RingBuffer`, the preallocated sample store (process-local or shared memory).
- `data.shared`: `SharedArrays`, numpy arrays in one shared-memory segment, and its lifecycle.
- `data.storage`: raw and JPEG crop storage.
- `data.producer`: `label_stream` (the labelling loop), `Producer` (it, in a thread) and
  `StreamProducer`, the protocol the thread and the process pool share.
- `data.workers`: `ProducerPool` (`data.workers.pool`, the parent side), the labelling loop in
  supervised producer processes (`data.workers.worker`, the process side).
- `data.augment`: `BatchAugment`, label-consistent augmentation on the training device.
- `data.dataset`: `BufferDataset` (training batches) and `FrozenDataset` (validation).
- `data.datamodule`: `StreamDataModule`, the Lightning wiring of all of the above.

Only the numpy-level parts are re-exported here, so that labelling tools (`pipeline.py`) and
spawned producer processes do not pay for importing torch and Lightning.
"""

from data.producer import (
    LabelStats,
    Producer,
    ProducerFailedError,
    ProducerStats,
    StreamProducer,
    combine_stats,
    label_stream,
)
from data.ring_buffer import BufferStarvedError, BufferStats, EmptyBufferError, RingBuffer
from data.shared import SharedArrays, SharedMemoryTooSmallError
from data.storage import CropTooLargeError
from data.workers import ProducerPool, ProducerSettings

__all__ = [
    "BufferStarvedError",
    "BufferStats",
    "CropTooLargeError",
    "EmptyBufferError",
    "LabelStats",
    "Producer",
    "ProducerFailedError",
    "ProducerPool",
    "ProducerSettings",
    "ProducerStats",
    "RingBuffer",
    "SharedArrays",
    "SharedMemoryTooSmallError",
    "StreamProducer",
    "combine_stats",
    "label_stream",
]
