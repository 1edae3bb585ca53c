"""Crop storage in the ring buffer: raw is exact; JPEG is close and about 8x smaller per slot."""

import os
from pathlib import Path

import numpy as np
import pytest
from shared_paths import VIDEOS

from data.ring_buffer import RingBuffer
from data.shared import SEGMENT_PREFIX, SHM_DIR
from data.storage import MIN_JPEG_QUALITY, CropTooLargeError, JpegStorage, make_storage
from stream_pose.camera import crop_affine, warp_image
from stream_pose.types import Sample
from video_sources.local import LocalSource

S = 128


@pytest.fixture(autouse=True)
def _no_leftover_segments():
    yield
    if os.path.isdir(SHM_DIR):
        assert not list(Path(SHM_DIR).glob(f"{SEGMENT_PREFIX}{os.getpid()}_*"))


@pytest.fixture(scope="module")
def real_crops() -> list[np.ndarray]:
    """`[3, S, S]` uint8 crops of real footage: squares around the middle of decoded frames."""
    if not VIDEOS.is_dir():
        pytest.skip("needs ../shared/videos")
    crops = []
    for name in ("running_athlete", "basketball_multi", "street_short"):
        source = LocalSource(VIDEOS / f"{name}.mp4", split="all", max_side=480, frameskip=3,
                             max_frames=4)
        for frame in source:
            h, w = frame.hw
            side = 0.6 * min(h, w)
            M = crop_affine(w / 2, h / 2, side, S)
            crops.append(np.ascontiguousarray(warp_image(frame.image, M, S).transpose(2, 0, 1)))
    return crops


def _sample(image: np.ndarray, i: int) -> Sample:
    return Sample(image=image, kpts2d=np.zeros((27, 2), np.float32),
                  kpts3d=np.zeros((27, 3), np.float32), visibility=np.ones(27, np.float32),
                  K_crop=np.eye(3, dtype=np.float32), video_id="v", frame_index=i, track_id=0)


def _filled(storage: str, crops: list[np.ndarray], **kw) -> RingBuffer:
    buffer = RingBuffer(len(crops), S, storage=storage, **kw)
    for i, crop in enumerate(crops):
        buffer.push(_sample(crop, i))
    return buffer


def test_raw_storage_returns_the_exact_crops(real_crops):
    snap = _filled("raw", real_crops).snapshot()
    assert snap["image"].dtype == np.uint8 and np.array_equal(snap["image"], np.stack(real_crops))


def test_jpeg_keeps_real_crops_close_at_an_eighth_of_the_memory(real_crops):
    raw, jpeg = _filled("raw", real_crops), _filled("jpeg", real_crops)
    decoded = jpeg.snapshot()["image"]
    assert decoded.shape == (len(real_crops), 3, S, S) and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.int16) - np.stack(real_crops)).mean(axis=(1, 2, 3))
    assert error.mean() < 3.5 and error.max() < 6.0  # grey levels of 255 (measured: ~2.2)
    r, j = raw.stats(), jpeg.stats()
    assert r.bytes_per_sample / j.bytes_per_sample > 6.5  # slots, labels and ids included
    assert j.storage == "jpeg" and r.crop_bytes_mean == 3 * S * S


def test_real_crops_compress_about_eightfold_at_quality_90(real_crops):
    roomy = _filled("jpeg", real_crops, jpeg_slot_bytes=3 * S * S // 2).stats()  # no re-encoding
    assert roomy.reencoded == 0
    assert roomy.crop_bytes_mean < 3 * S * S / 6  # measured: about 8x smaller than raw


def test_a_crop_over_budget_is_reencoded_at_a_lower_quality(real_crops):
    storage = JpegStorage(S, quality=95, slot_bytes=3000)
    data, steps = storage.encode(real_crops[0])
    assert steps > 0 and len(data) <= 3000
    full, _ = JpegStorage(S, quality=95, slot_bytes=60000).encode(real_crops[0])
    assert len(full) > 3000  # the first try really was over budget


def test_a_crop_that_never_fits_is_refused():
    noise = np.random.default_rng(0).integers(0, 256, (3, S, S), dtype=np.uint8)
    buffer = RingBuffer(4, S, storage="jpeg", jpeg_slot_bytes=1024)
    with pytest.raises(CropTooLargeError, match=f"quality {MIN_JPEG_QUALITY}"):
        buffer.push(_sample(noise, 0))
    assert len(buffer) == 0 and buffer.stats().pushed == 0


@pytest.mark.parametrize("kwargs", [{"storage": "png"}, {"storage": "jpeg", "jpeg_quality": 0},
                                    {"storage": "jpeg", "jpeg_slot_bytes": 100}])
def test_bad_storage_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_storage(crop_size=S, **kwargs)


def test_a_shared_jpeg_buffer_decodes_in_an_attached_view(real_crops):
    with RingBuffer(8, S, shared=True, storage="jpeg") as buffer:
        for i, crop in enumerate(real_crops[:8]):
            buffer.push(_sample(crop, i))
        view = RingBuffer.attach(buffer.handle)
        try:
            rows = view.sample(16, np.random.default_rng(0))
        finally:
            view.close()
    originals = np.stack(real_crops)[rows["frame_index"]]
    assert np.abs(rows["image"].astype(np.int16) - originals).mean() < 3.5
