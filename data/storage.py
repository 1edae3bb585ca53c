"""How the ring buffer stores a crop: raw uint8 pixels, or an in-memory JPEG in a fixed slot.

Legend: N = capacity, B = batch, S = crop side in pixels. Crops are RGB uint8 `[3, S, S]`
going in and `[B, 3, S, S]` coming out, whatever the storage.

Measured on 2 cores (simplejpeg 1.9, libjpeg-turbo; 4:2:0 chroma, quality 90) on crops of
../shared/videos: 128 px crops take about 6.0 kB (raw: 49.2 kB, 8x less) with a mean absolute
error of 2.2 grey levels, encode in 0.05-0.1 ms and decode in 0.1-0.2 ms each; 256 px crops
about 15 kB (13x less). A slot has a fixed budget (default S*S*3/8 bytes: about 7x the samples
per GiB once labels are counted). A crop over budget is re-encoded at a lower quality (about half
of real 128 px crops need quality 80, which costs 0.1 ms and 0.3 grey levels); one still over
budget at `MIN_JPEG_QUALITY` is refused with `CropTooLargeError` (the producer counts it as
rejected). Storing such a crop raw instead would need a raw-sized slot, defeating the budget.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from data.shared import Layout

logger = logging.getLogger(__name__)

STORAGES = ("raw", "jpeg")
MIN_JPEG_QUALITY = 30
QUALITY_STEP = 10
DEFAULT_JPEG_RATIO = 8  # default slot budget: raw crop bytes / 8 ...
MIN_SLOT_BYTES = 1024  # ... but at least this: a JPEG's headers alone take about 600 bytes


class CropTooLargeError(ValueError):
    """A crop does not fit its JPEG slot even at `MIN_JPEG_QUALITY`."""


class CropStorage(Protocol):
    """Turns `[3, S, S]` crops into slot fields and gathered `[B, ...]` rows back into crops.

    `encode` runs before a slot is claimed (it may be slow, and may refuse a crop), `write`
    copies into the claimed slot, `decode` runs on rows already copied out of the buffer.

    Attributes:
        name: "raw" or "jpeg".
        image_bytes: bytes a slot reserves for the crop.
    """

    name: str
    image_bytes: int

    def layout(self, capacity: int) -> Layout:
        """The crop's fields, `[N, ...]`."""
        ...

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """A `[3, S, S]` uint8 crop as stored (pixels, or JPEG bytes `[n]` uint8), and how many
        times it was re-encoded at a lower quality to fit."""
        ...

    def write(self, arrays: dict[str, np.ndarray], slot: int, crop: np.ndarray) -> None:
        """Copy an encoded crop into `slot` of the buffer's arrays."""
        ...

    def decode(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """`[B, 3, S, S]` uint8 crops from gathered rows of this storage's fields."""
        ...


class RawStorage:
    """Crops as they are: `image` uint8 `[N, 3, S, S]`, S*S*3 bytes a slot, decode is a no-op."""

    name = "raw"

    def __init__(self, crop_size: int):
        self.crop_size = crop_size
        self.image_bytes = 3 * crop_size * crop_size

    def layout(self, capacity: int) -> Layout:
        s = self.crop_size
        return {"image": ((capacity, 3, s, s), np.dtype(np.uint8))}

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        return image, 0

    def write(self, arrays: dict[str, np.ndarray], slot: int, crop: np.ndarray) -> None:
        arrays["image"][slot] = crop

    def decode(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return rows["image"]


class JpegStorage:
    """Crops as JPEG (simplejpeg, 4:2:0 chroma) in a fixed per-slot byte budget.

    Fields: `jpeg` uint8 `[N, slot_bytes]` (the file, zero padded) and `jpeg_len` int32 `[N]`.

    Args:
        crop_size: S in pixels.
        quality: JPEG quality of the first try, 1..100.
        slot_bytes: per-slot budget; None: S*S*3 / `DEFAULT_JPEG_RATIO`, at least
            `MIN_SLOT_BYTES`.

    Raises:
        ValueError: on a quality outside 1..100 or a budget under `MIN_SLOT_BYTES`.
    """

    name = "jpeg"

    def __init__(self, crop_size: int, quality: int = 90, slot_bytes: int | None = None):
        import simplejpeg  # only JPEG storage needs it

        self._codec = simplejpeg
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {quality}")
        raw = 3 * crop_size * crop_size
        self.crop_size, self.quality = crop_size, int(quality)
        if slot_bytes is None:
            slot_bytes = max(raw // DEFAULT_JPEG_RATIO, MIN_SLOT_BYTES)
        if slot_bytes < MIN_SLOT_BYTES:
            raise ValueError(f"jpeg_slot_bytes must be >= {MIN_SLOT_BYTES}, got {slot_bytes}")
        self.image_bytes = int(slot_bytes)

    def layout(self, capacity: int) -> Layout:
        return {
            "jpeg": ((capacity, self.image_bytes), np.dtype(np.uint8)),
            "jpeg_len": ((capacity,), np.dtype(np.int32)),
        }

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """Encode at `quality`, stepping down by `QUALITY_STEP` until the slot budget fits.

        Raises:
            CropTooLargeError: still over budget at `MIN_JPEG_QUALITY`.
        """
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))  # simplejpeg wants [S, S, 3]
        steps, quality = 0, self.quality
        while True:
            data = self._codec.encode_jpeg(hwc, quality=quality, colorspace="RGB",
                                           colorsubsampling="420")
            if len(data) <= self.image_bytes:
                return np.frombuffer(data, np.uint8), steps
            if quality <= MIN_JPEG_QUALITY:
                raise CropTooLargeError(
                    f"crop JPEG is {len(data)} bytes at quality {quality}, over the slot budget "
                    f"of {self.image_bytes} bytes: raise jpeg_slot_bytes"
                )
            quality, steps = max(MIN_JPEG_QUALITY, quality - QUALITY_STEP), steps + 1

    def write(self, arrays: dict[str, np.ndarray], slot: int, crop: np.ndarray) -> None:
        arrays["jpeg"][slot, : len(crop)] = crop  # the tail keeps old bytes: jpeg_len bounds it
        arrays["jpeg_len"][slot] = len(crop)

    def decode(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """`[B, 3, S, S]` uint8; one libjpeg-turbo decode per row (the read path's only loop)."""
        jpeg, lengths = rows["jpeg"], rows["jpeg_len"]
        s = self.crop_size
        out = np.empty((len(lengths), s, s, 3), np.uint8)
        for i, n in enumerate(lengths):
            self._codec.decode_jpeg(jpeg[i, :n], colorspace="RGB", buffer=out[i])
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # [B, 3, S, S] as raw storage


def make_storage(
    storage: str, crop_size: int, jpeg_quality: int = 90, jpeg_slot_bytes: int | None = None
) -> CropStorage:
    """The storage named `storage` ("raw" or "jpeg").

    Raises:
        ValueError: on an unknown name or bad JPEG settings.
    """
    if storage == "raw":
        return RawStorage(crop_size)
    if storage == "jpeg":
        return JpegStorage(crop_size, jpeg_quality, jpeg_slot_bytes)
    raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
