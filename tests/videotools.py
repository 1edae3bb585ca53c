"""In-memory MP4 surgery, encoding and a container spy for tests: nothing here writes to disk.

MP4 boxes (ISO/IEC 14496-12): 4-byte big-endian size (1: a 64-bit size follows; 0: to the
end), 4-byte type, payload. Only the boxes the tests need are understood.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

Box = tuple[bytes, int, int, int]  # (type, start, payload start, end), offsets into the file


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes laid one after another in `data[start:end]`."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:
            size = end - start
        yield kind, start, start + header, start + size
        start += size


def find_boxes(data: bytes, path: list[bytes], start: int = 0, end: int | None = None):
    """Boxes at a path of nested types, e.g. [b"moov", b"trak"], searched depth first."""
    for box in iter_boxes(data, start, end):
        if box[0] != path[0]:
            continue
        if len(path) == 1:
            yield box
        else:
            yield from find_boxes(data, path[1:], box[2], box[3])


def video_tkhd(data: bytes) -> Box:
    """The track header (tkhd) of the first track whose handler (hdlr) is 'vide'."""
    for _, _, body, end in find_boxes(data, [b"moov", b"trak"]):
        _, _, hdlr, _ = next(find_boxes(data, [b"mdia", b"hdlr"], body, end))
        if data[hdlr + 8 : hdlr + 12] == b"vide":  # version/flags, pre_defined, handler_type
            return next(find_boxes(data, [b"tkhd"], body, end))
    raise ValueError("no video track")


def with_display_matrix(data: bytes, a: int, b: int, c: int, d: int) -> bytes:
    """A copy of an MP4 whose video track matrix is [[a, b, 0], [c, d, 0], [tx, ty, 1]].

    The matrix is nine 32-bit fixed-point numbers (16.16 for a, b, c, d), after version/flags,
    times and ids (20 bytes in version 0, 32 in version 1), then 8 reserved bytes, layer,
    alternate group, volume and 2 reserved bytes (16 bytes in all).
    """
    _, _, body, _ = video_tkhd(data)
    offset = body + 4 + (32 if data[body] == 1 else 20) + 16
    out = bytearray(data)
    for index, value in zip((0, 1, 3, 4), (a, b, c, d)):
        struct.pack_into(">i", out, offset + 4 * index, value << 16)
    return bytes(out)


def faststart(data: bytes) -> bytes:
    """The same MP4 with its index (moov) moved before the media data, as a streamable file.

    Chunk offsets (stco) grow by the size of moov, which now precedes them. Only files whose
    moov follows mdat and that use 32-bit offsets are supported.
    """
    top = list(iter_boxes(data))
    kinds = [box[0] for box in top]
    if kinds.index(b"moov") < kinds.index(b"mdat") or b"co64" in data:
        raise ValueError("expected moov after mdat and 32-bit chunk offsets")
    _, moov_start, _, moov_end = top[kinds.index(b"moov")]
    moov = bytearray(data[moov_start:moov_end])
    stco_path = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stco"]
    for _, _, body, _ in find_boxes(bytes(moov), stco_path):
        (count,) = struct.unpack_from(">I", moov, body + 4)
        offsets = np.frombuffer(moov, ">u4", count, body + 8) + len(moov)
        moov[body + 8 : body + 8 + 4 * count] = offsets.astype(">u4").tobytes()
    ftyp, rest = top[0], [box for box in top[1:] if box[0] != b"moov"]
    return data[ftyp[1] : ftyp[3]] + bytes(moov) + b"".join(data[s:e] for _, s, _, e in rest)


def encode_video(
    images: list[np.ndarray], pts: list[int], time_base: Fraction, pix_fmt: str = "yuv420p"
) -> bytes:
    """An H.264 MP4, in memory, of `[H, W, 3]` uint8 RGB images shown at `pts` x `time_base` s."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(1 / time_base))
        stream.width, stream.height = images[0].shape[1], images[0].shape[0]
        stream.pix_fmt, stream.time_base = pix_fmt, time_base
        for image, t in zip(images, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_audio_only() -> bytes:
    """An MP4 with one short AAC audio stream and no video, in memory."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def record_container_exits(monkeypatch) -> list:
    """Spy on `av.open` for one test: the returned list gets the exception type (None for a
    clean exit, GeneratorExit for an iterator closed early) each time a container's `with`
    block exits."""
    exits, real_open = [], av.open

    class Tracked:
        def __init__(self, *args, **kwargs):
            self.container = real_open(*args, **kwargs)

        def __enter__(self):
            return self.container.__enter__()

        def __exit__(self, *exc):
            exits.append(exc[0])
            return self.container.__exit__(*exc)

    monkeypatch.setattr(av, "open", Tracked)
    return exits
