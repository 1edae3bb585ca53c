"""Decode the images clients send (base64 or raw JPEG/PNG/... bytes) in memory, with OpenCV.

Images come back as `[H, W, 3]` uint8 RGB; grey images are expanded to three channels and an
alpha channel is dropped. Nothing is written to disk.
"""

from __future__ import annotations

import base64
import binascii
import re

import cv2
import numpy as np

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
MAX_PIXELS = 8192 * 8192  # a decoded frame larger than this is refused (decompression bombs)


class ImageDecodeError(ValueError):
    """Bytes or base64 text that are not a decodable image; the message says which."""


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (JPEG, PNG, BMP, WebP, ...) -> `[H, W, 3]` uint8 RGB.

    Raises:
        ImageDecodeError: empty, not an image OpenCV can decode, or over `MAX_PIXELS`.
    """
    if not data:
        raise ImageDecodeError("empty image")
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes; send JPEG or PNG)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageDecodeError(f"image of {image.shape[1]}x{image.shape[0]} pixels is larger "
                               f"than the limit of {MAX_PIXELS} pixels")
    if image.dtype != np.uint8:  # 16-bit PNG
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def decode_base64_image(text: str) -> np.ndarray:
    """Base64 text (optionally a `data:image/...;base64,` URL) -> `[H, W, 3]` uint8 RGB.

    Raises:
        ImageDecodeError: not valid base64, or not an image.
    """
    if not isinstance(text, str) or not text:
        raise ImageDecodeError("image_base64 is empty or not a string")
    try:
        data = base64.b64decode(_DATA_URL.sub("", text.strip()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"invalid base64: {exc}") from exc
    return decode_image(data)


def encode_jpeg_base64(image: np.ndarray, quality: int = 90) -> str:
    """`[H, W, 3]` uint8 RGB -> base64 JPEG text, as clients send frames (for tests, benches)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageDecodeError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")
