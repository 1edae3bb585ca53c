"""Decoding from bytes: real footage from ../shared/videos and small clips encoded in memory."""

from __future__ import annotations

import os
from fractions import Fraction

import cv2
import numpy as np
import pytest
import videotools
from shared_paths import VIDEOS

from video_sources.decode import VideoDecodeError, decode_video_bytes, target_size

RED = (200, 30, 40)  # distinct channels: a BGR/RGB swap would show


def video_bytes(name: str) -> bytes:
    path = VIDEOS / name
    if not path.is_file():
        pytest.skip(f"test footage missing: {path}")
    return path.read_bytes()


def decode_all(data: bytes, **options) -> list[tuple[int, float, np.ndarray]]:
    return list(decode_video_bytes(data, **options))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_running_athlete_has_all_frames_at_full_size_with_pts_times():
    frames = decode_video_bytes(video_bytes("running_athlete.mp4"))
    seen = [(i, t, image.shape, image.dtype) for i, t, image in frames]  # drop pixels as we go
    assert len(seen) == 180
    assert [s[0] for s in seen] == list(range(180))
    assert {s[2] for s in seen} == {(1088, 1920, 3)}
    assert {s[3] for s in seen} == {np.dtype(np.uint8)}
    times = np.array([s[1] for s in seen])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(180) / 30, atol=1e-6)  # 30 fps CFR file


def test_portrait_video_keeps_portrait_shape():
    frames = decode_video_bytes(video_bytes("basketball_single.mp4"))
    shapes = [image.shape for _, _, image in frames]
    assert len(shapes) == 40
    assert set(shapes) == {(1920, 1080, 3)}  # H x W: portrait


def test_time_comes_from_pts_on_variable_frame_rate_video():
    pts = [0, 1, 3, 7, 8]
    data = videotools.encode_video([np.full((48, 64, 3), RED, np.uint8)] * 5, pts, Fraction(1, 10))
    frames = decode_all(data)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([f[1] for f in frames], [0.0, 0.1, 0.3, 0.7, 0.8], atol=1e-6)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])  # fast I420 path and libswscale path
@pytest.mark.parametrize("max_side", [None, 32])
def test_colours_come_out_as_rgb(pix_fmt, max_side):
    image = np.full((48, 64, 3), RED, np.uint8)
    data = videotools.encode_video([image, image], [0, 1], Fraction(1, 10), pix_fmt=pix_fmt)
    decoded = decode_all(data, max_side=max_side)[0][2]
    assert decoded.shape == ((24, 32, 3) if max_side else (48, 64, 3))
    np.testing.assert_allclose(decoded.reshape(-1, 3).mean(0), RED, atol=4)


def test_frameskip_keeps_true_indices_and_times():
    frames = decode_all(video_bytes("street_short.mp4"), frameskip=2)  # 5 frames at 5 fps
    assert [f[0] for f in frames] == [0, 2, 4]
    np.testing.assert_allclose([f[1] for f in frames], [0.0, 0.4, 0.8], atol=1e-6)


@pytest.mark.parametrize(
    ("frameskip", "max_frames", "indices"), [(1, 3, [0, 1, 2]), (2, 2, [0, 2])]
)
def test_max_frames_counts_yielded_frames(frameskip, max_frames, indices):
    data = video_bytes("street_short.mp4")
    frames = decode_all(data, frameskip=frameskip, max_frames=max_frames)
    assert [f[0] for f in frames] == indices


def test_max_side_downscales_keeping_aspect_and_content():
    data = video_bytes("street_short.mp4")  # 960 x 540
    full = decode_all(data, max_frames=1)[0][2]
    small = decode_all(data, max_frames=1, max_side=321)[0][2]
    h, w = small.shape[:2]
    assert max(h, w) <= 321 and w == 320
    assert abs(w / h - 960 / 540) < 0.02
    reference = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
    assert mean_abs_diff(small, reference) < 3


def test_max_side_larger_than_the_video_keeps_its_size():
    image = decode_all(video_bytes("street_short.mp4"), max_frames=1, max_side=4000)[0][2]
    assert image.shape == (540, 960, 3)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((1920, 1088), 640, (640, 362)), ((1080, 1920), 255, (142, 254)), ((64, 48), 64, (64, 48))],
)
def test_target_size_fits_and_is_even(size, max_side, expected):
    assert target_size(*size, max_side) == expected


# Display matrix [[a, b], [c, d]] in the tkhd box -> quarter turns (np.rot90 k, counter-clockwise)
# that show the picture upright. FFmpeg reads the matrix as av_display_rotation_get = -90 for
# (0, 1, -1, 0) (PyAV's VideoFrame.rotation, counter-clockwise degrees), and ffplay autorotates
# by theta = -rotation clockwise: transpose=clock for theta = 90 (fftools/cmdutils.c get_rotation,
# fftools/ffplay.c). (0, 1, -1, 0) is what an iPhone writes for portrait video.
ROTATIONS = [((0, 1, -1, 0), -1), ((0, -1, 1, 0), 1), ((-1, 0, 0, -1), 2)]


@pytest.mark.parametrize(("matrix", "k"), ROTATIONS)
def test_display_matrix_rotation_is_applied(matrix, k):
    data = video_bytes("street_short.mp4")
    upright = decode_all(data, max_frames=1)[0][2]
    rotated = decode_all(videotools.with_display_matrix(data, *matrix), max_frames=1)[0][2]
    expected_shape = upright.shape if k == 2 else (960, 540, 3)
    assert rotated.shape == expected_shape
    assert rotated.flags.c_contiguous
    assert mean_abs_diff(rotated, np.rot90(upright, k)) < 1
    assert mean_abs_diff(rotated, np.rot90(upright, k + 2)) > 10  # the opposite direction


def test_rotation_and_max_side_together():
    data = videotools.with_display_matrix(video_bytes("street_short.mp4"), 0, 1, -1, 0)
    image = decode_all(data, max_frames=1, max_side=96)[0][2]
    assert image.shape == (96, 54, 3)


def test_truncated_video_yields_its_first_frames_then_fails():
    # moov first, so that the first half of the file holds the index and half of the frames.
    data = videotools.faststart(video_bytes("basketball_single.mp4"))
    full = decode_all(data, max_side=64)
    got = []
    with pytest.raises(VideoDecodeError, match="after"):
        for item in decode_video_bytes(data[: len(data) // 2], max_side=64):
            got.append(item)
    assert 0 < len(got) < len(full)
    for (i, t, image), (i_full, t_full, image_full) in zip(got, full):
        assert (i, t) == (i_full, t_full)
        np.testing.assert_array_equal(image, image_full)


@pytest.mark.parametrize(
    ("make_data", "reason"),
    [
        (lambda: b"", "empty"),
        (lambda: os.urandom(4096), "Invalid data"),
        (lambda: b"not a video\n" * 100, "Invalid data"),
        (lambda: video_bytes("street_short.mp4")[: 5000], "Invalid data"),  # no moov
        (videotools.encode_audio_only, "no video stream"),
    ],
    ids=["empty", "random", "text", "truncated-before-index", "audio-only"],
)
def test_unreadable_data_raises_decode_error(make_data, reason):
    with pytest.raises(VideoDecodeError, match=reason):
        decode_all(make_data())


@pytest.mark.parametrize(
    "options", [{"frameskip": 0}, {"max_frames": 0}, {"max_side": 1}, {"frameskip": 1.5}]
)
def test_invalid_options_raise_at_call_time(options):
    with pytest.raises(ValueError):
        decode_video_bytes(b"", **options)


def test_closing_early_closes_the_container(monkeypatch):
    exits = videotools.record_container_exits(monkeypatch)
    frames = decode_video_bytes(video_bytes("street_short.mp4"))
    next(frames)
    assert exits == []
    frames.close()
    assert exits == [GeneratorExit]


def test_container_is_closed_after_a_full_pass_and_a_failure(monkeypatch):
    audio_only = videotools.encode_audio_only()
    exits = videotools.record_container_exits(monkeypatch)
    decode_all(video_bytes("street_short.mp4"))
    with pytest.raises(VideoDecodeError):
        decode_all(audio_only)
    assert exits == [None, VideoDecodeError]
