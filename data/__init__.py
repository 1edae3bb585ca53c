"""The data stage: labelled crops held in a ring buffer and served to the trainer.

- `data.ring_buffer`: `RingBuffer`, the preallocated, thread-safe sample store.
- `data.producer`: `label_stream` (the labelling loop) and `Producer` (it, in a thread).
- `data.augment`: `BatchAugment`, label-consistent augmentation on the training device.
- `data.dataset`: `BufferDataset` (training batches) and `FrozenDataset` (validation).
- `data.datamodule`: `StreamDataModule`, the Lightning wiring of all of the above.

Only the numpy-level parts are re-exported here, so that labelling tools (`pipeline.py`) do not
pay for importing torch and Lightning.
"""

from data.producer import LabelStats, Producer, ProducerStats, label_stream
from data.ring_buffer import BufferStarvedError, BufferStats, EmptyBufferError, RingBuffer

__all__ = [
    "BufferStarvedError",
    "BufferStats",
    "EmptyBufferError",
    "LabelStats",
    "Producer",
    "ProducerStats",
    "RingBuffer",
    "label_stream",
]
