"""Decode the images clients send (base64 or raw JPEG/PNG/... bytes) in memory.

Images come back as `[H, W, 3]` uint8 RGB; grey images are expanded to three channels and an
alpha channel is dropped. Nothing is written to disk.

`max_side` downscales as training's video decoding does (`video_sources.decode.target_size`:
longer side at most `max_side`, area filter): the student was trained on frames of that size, and
a smaller frame is cheaper for everyone. JPEG (what clients send) is decoded by libjpeg-turbo
through simplejpeg straight at a reduced DCT scale (1/2, 1/4, 1/8) when that is still at least
the target size, which is several times faster than decoding 1080p in full and resizing; other
formats go through OpenCV.

Every image's size is read from its header before a pixel is decoded (simplejpeg for JPEG,
Pillow's lazy `Image.open` for the rest), so a decompression bomb (a 1 MB PNG of 20000x20000
zeros) is refused without allocating its gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from video_sources.decode import target_size

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
MAX_PIXELS = 8192 * 8192  # a decoded frame larger than this is refused (decompression bombs)


class ImageDecodeError(ValueError):
    """Bytes or base64 text that are not a decodable image; the message says which."""


@dataclass
class DecodedImage:
    """A decoded image and the size it was sent at.

    Attributes:
        image: `[h, w, 3]` uint8 RGB, possibly downscaled (`max_side`).
        size: (W, H) of the image as sent, in pixels: what 2D answers are expressed in.
    """

    image: np.ndarray
    size: tuple[int, int]


def decode_image(data: bytes, max_side: int | None = None) -> DecodedImage:
    """An encoded image (JPEG, PNG, BMP, WebP, ...) -> RGB, downscaled to `max_side`.

    Raises:
        ImageDecodeError: empty, not a decodable image, or over `MAX_PIXELS`.
    """
    if not data:
        raise ImageDecodeError("empty image")
    if data[:3] == b"\xff\xd8\xff":
        try:
            return _decode_jpeg(data, max_side)
        except ImageDecodeError:
            raise
        except ValueError:
            pass  # a JPEG libjpeg-turbo refuses (e.g. CMYK, truncated): OpenCV may still read it
    _check_pixels(*header_size(data))
    image = _decode_any(data)
    h, w = image.shape[:2]
    tw, th = target_size(w, h, max_side) if max_side and max(h, w) > max_side else (w, h)
    if (tw, th) != (w, h):
        image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
    return DecodedImage(image, (w, h))


def _decode_jpeg(data: bytes, max_side: int | None) -> DecodedImage:
    """libjpeg-turbo decode at the smallest DCT scale that is still >= the target size."""
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    _check_pixels(w, h)
    tw, th = target_size(w, h, max_side) if max_side and max(h, w) > max_side else (w, h)
    image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=th, min_width=tw)
    if image.shape[:2] != (th, tw):
        image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
    return DecodedImage(image, (w, h))


def header_size(data: bytes) -> tuple[int, int]:
    """(W, H) in pixels from an image's header, without decoding its pixels.

    Pillow parses only the header on `Image.open` (PNG's IHDR, BMP's DIB header, WebP's VP8
    frame header, ...). Its own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) refuses
    headers over twice that limit while opening: those are reported as over `MAX_PIXELS`.

    Raises:
        ImageDecodeError: a format whose header Pillow cannot read, or a corrupt header.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image larger than the limit of {MAX_PIXELS} pixels "
                               f"({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        # SyntaxError is how some Pillow plugins report a malformed header.
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes; send JPEG or "
                               "PNG)") from None


def _check_pixels(w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise ImageDecodeError(f"image of {w}x{h} pixels is larger than the limit of "
                               f"{MAX_PIXELS} pixels")


def _decode_any(data: bytes) -> np.ndarray:
    """OpenCV's decoders -> `[H, W, 3]` uint8 RGB (the size was checked from the header)."""
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes; send JPEG or PNG)")
    _check_pixels(image.shape[1], image.shape[0])  # a header that lied
    if image.dtype != np.uint8:  # 16-bit PNG
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def decode_base64_image(text: str, max_side: int | None = None) -> DecodedImage:
    """Base64 text (optionally a `data:image/...;base64,` URL) -> `DecodedImage`.

    Raises:
        ImageDecodeError: not valid base64, or not an image.
    """
    if not isinstance(text, str) or not text:
        raise ImageDecodeError("image_base64 is empty or not a string")
    try:
        data = base64.b64decode(_DATA_URL.sub("", text.strip()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"invalid base64: {exc}") from exc
    return decode_image(data, max_side)


def encode_jpeg_base64(image: np.ndarray, quality: int = 90) -> str:
    """`[H, W, 3]` uint8 RGB -> base64 JPEG text, as clients send frames (for tests, benches)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageDecodeError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")
