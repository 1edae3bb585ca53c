"""`Batch`: the one typed form of a training or evaluation batch, from the loaders to the loss.

Legend: B batch, J = 27 joints (`stream_pose.skeleton`), S crop side in pixels. 2D in crop
pixels (x right, y down, pixel centres at integers); 3D in metres, pelvis-relative, camera-frame
axes (X right, Y down, Z forward).

The ring buffer stores and returns numpy fields (`data.ring_buffer.OUTPUT_FIELDS`); the datasets
in `data.dataset` turn them into a `Batch`, which the module (`train.module`, training and
validation), the augmentation (`data.augment`) and the benchmarks read by attribute. Lightning
moves it to the device through `Batch.to` (its `transfer_batch_to_device` calls `.to` on any
object that has one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

# Fields every batch has, and the ids that ride along for telemetry and debugging.
LABEL_FIELDS = ("image", "kpts2d", "kpts3d", "visibility", "K_crop")
ID_FIELDS = ("video_key", "frame_index", "track_id", "writer", "version")
_NON_BLOCKING_TYPES = ("cuda",)  # never non-blocking to the CPU or MPS (as Lightning)


@dataclass
class Batch:
    """A batch of person crops and their teacher labels, every field with a leading `[B]`.

    Attributes:
        image: `[B, 3, S, S]` RGB crops: uint8 in [0, 255] from the loaders, float32 in [0, 1]
            once on the training device (`train.module.image_to_float`).
        kpts2d: `[B, J, 2]` float32 joints in crop pixels.
        kpts3d: `[B, J, 3]` float32 joints in metres, pelvis-relative, camera axes.
        visibility: `[B, J]` float32 in {0, 1}; 0 joints count in no loss or metric.
        K_crop: `[B, 3, 3]` float32 intrinsics of the crop in pixels (the crop affine composed
            with the frame's K, `stream_pose.codec.crop_sample`).
        video_key: `[B]` int64 `data.ring_buffer.video_key` of the source video, or None.
        frame_index: `[B]` int64 frame of the video, or None.
        track_id: `[B]` int64 the teacher's person id in that frame, or None.
        writer: `[B]` int64 which producer wrote the sample, or None.
        version: `[B]` int64 writes the buffer slot had seen, or None.
    """

    image: Tensor
    kpts2d: Tensor
    kpts3d: Tensor
    visibility: Tensor
    K_crop: Tensor
    video_key: Tensor | None = None
    frame_index: Tensor | None = None
    track_id: Tensor | None = None
    writer: Tensor | None = None
    version: Tensor | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray | Tensor]) -> Batch:
        """A batch from fields `[B, ...]` named as the attributes (e.g. `RingBuffer.sample`).

        numpy arrays become tensors sharing their memory (`torch.from_numpy`).

        Raises:
            ValueError: a label field is missing, or a name is not a field.
        """
        missing = [k for k in LABEL_FIELDS if k not in arrays]
        unknown = sorted(set(arrays) - set(LABEL_FIELDS) - set(ID_FIELDS))
        if missing or unknown:
            raise ValueError(f"batch fields: missing {missing}, unknown {unknown}")
        return cls(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                      for k, v in arrays.items()})

    @classmethod
    def collate(cls, items: Sequence[Mapping[str, Tensor]]) -> Batch:
        """`DataLoader` `collate_fn`: single samples (fields without `[B]`) stacked into a batch.

        Raises:
            ValueError: as `from_arrays`.
        """
        return cls.from_arrays(default_collate(list(items)))

    def replace(self, **fields: Tensor | None) -> Batch:
        """A new batch with `fields` changed; the others are shared, not copied."""
        return dataclasses.replace(self, **fields)

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> Batch:
        """Every field on `device`.

        Args:
            device: the target device.
            non_blocking: asynchronous copies; None: only to CUDA, as Lightning does for
                tensors (pinned memory makes them overlap with compute).
        """
        device = torch.device(device)
        if non_blocking is None:
            non_blocking = device.type in _NON_BLOCKING_TYPES
        return dataclasses.replace(self, **{
            f.name: None if v is None else v.to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self) for v in [getattr(self, f.name)]})

    def pin_memory(self) -> Batch:
        """Every field in page-locked memory (`DataLoader(pin_memory=True)` calls this)."""
        return dataclasses.replace(self, **{k: v.pin_memory() for k, v in self.fields().items()})

    def __len__(self) -> int:
        """B, the number of samples."""
        return self.image.shape[0]

    def fields(self) -> dict[str, Any]:
        """The fields that are set, by name (the ids only when present)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}
