"""Write frames with predicted skeletons drawn (`stream_pose.draw`) as the video a user asked for.

Images are `[H, W, 3]` uint8 RGB. The writer encodes from memory with PyAV (H.264, yuv420p):
only the requested file is written.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TIME_BASE = Fraction(1, 1000)  # output timestamps in milliseconds: keeps variable frame rates


class VideoWriter:
    """Encode RGB frames to an H.264 MP4 (PyAV, libx264, yuv420p), timestamped in milliseconds.

    The size is fixed by the first frame; odd sides lose their last row or column (4:2:0 chroma
    needs even sides). Use as a context manager, or call `close()`.

    Args:
        path: output file (`.mp4`); its folder must exist.
        crf: x264 constant rate factor (lower is better quality; 23 is x264's default).
    """

    def __init__(self, path: str | Path, crf: int = 20) -> None:
        self.path, self.frames = Path(path), 0
        self._container = av.open(str(self.path), mode="w")
        self._stream = None
        self._crf, self._last_pts = crf, -1

    def write(self, image: np.ndarray, time_s: float) -> None:
        """Append a `[H, W, 3]` uint8 RGB frame shown at `time_s` seconds.

        A missing (NaN) or non-increasing time is placed 1 ms after the previous frame.

        Raises:
            ValueError: on another image layout, or a size other than the first frame's.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
        h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        if self._stream is None:
            self._stream = self._open_stream(w, h)
        elif (w, h) != (self._stream.width, self._stream.height):
            raise ValueError(f"frame size {w}x{h} differs from the video's "
                             f"{self._stream.width}x{self._stream.height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
        pts = round(time_s * 1000) if math.isfinite(time_s) else self._last_pts + 1
        frame.pts, frame.time_base = max(pts, self._last_pts + 1), TIME_BASE
        self._last_pts = frame.pts
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file; idempotent."""
        if self._container is None:
            return
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None

    def _open_stream(self, width: int, height: int) -> av.video.stream.VideoStream:
        """The H.264 stream, sized by the first frame, timestamped in milliseconds."""
        stream = self._container.add_stream("libx264", options={"crf": str(self._crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        return stream

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
