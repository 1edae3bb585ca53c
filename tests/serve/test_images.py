"""serve.images: what clients send is decoded in memory, and refused from its header when it is
too large, before a pixel is decoded (the outside probe of issue 21: a 1.2 MB PNG of 20000x20000
zeros cost 17.6 s of CPU and 2.3 GB of RSS before its 400)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from servetools import png_header_only

import serve.images
from serve.images import MAX_PIXELS, ImageDecodeError, decode_image, header_size


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if any decoder is asked for pixels."""
    def refuse(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(serve.images.cv2, "imdecode", refuse)
    monkeypatch.setattr(serve.images.simplejpeg, "decode_jpeg", refuse)


@pytest.mark.parametrize("size", [(20000, 20000), (9000, 9000)])  # over / under Pillow's own guard
def test_an_oversized_png_is_refused_from_its_header(size, no_pixel_decoding):
    data = png_header_only(*size)
    assert len(data) < 1_000_000
    with pytest.raises(ImageDecodeError, match=f"limit of {MAX_PIXELS} pixels"):
        decode_image(data, max_side=640)


def test_an_oversized_jpeg_is_refused_from_its_header(no_pixel_decoding):
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")  # baseline frame header: height and width at +5 and +7
    jpeg[sof + 5:sof + 9] = (9000).to_bytes(2, "big") * 2
    with pytest.raises(ImageDecodeError, match="9000x9000"):
        decode_image(bytes(jpeg))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".tiff"])
def test_other_formats_decode_to_rgb_at_their_size(ext):
    bgr = np.zeros((90, 160, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    data = cv2.imencode(ext, bgr)[1].tobytes()
    assert header_size(data) == (160, 90)
    decoded = decode_image(data, max_side=80)
    assert decoded.size == (160, 90) and decoded.image.shape == (44, 80, 3)
    assert decoded.image[..., 0].mean() > 150 and decoded.image[..., 2].mean() < 50  # RGB


@pytest.mark.parametrize("data", [b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff"])
def test_what_is_not_an_image_is_named(data):
    with pytest.raises(ImageDecodeError, match="not a decodable image|empty|JPEG"):
        decode_image(data)
