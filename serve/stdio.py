"""`stream-pose serve stdio`: seed 000's interface, JSON frames on stdin, JSON poses on stdout.

    echo '{"frames": [{"frameNumber": 0, "imagePath": "frame0.jpg"}]}' | stream-pose serve stdio

Input (one JSON document): `{"frames": [{"frameNumber": int, "imageBase64": str} |
{"frameNumber": int, "imagePath": str}, ...]}`, frames in video order. One call is one tracking
session: track ids, filtering and gap filling run across its frames.
Output (one JSON array, `serve.schemas.stdio_record` per frame, in input order): `frameNumber,
keypoints[{name, x, y, z, confidence}], has3d, jointAngles3d, mesh_vertices_data,
mesh_faces_data, cameraTranslation, processingTimeMs` (+ `trackId, predicted,
trackingConfidence, people`). A frame whose image cannot be read gives `{"frameNumber": n,
"error": "..."}` and the others are still answered. `imagePath` must name a regular file of at
most `--max-frame-mb` (a device such as /dev/zero or a FIFO is refused, never read).

stdout carries only that JSON: logs, and anything the native libraries print (MediaPipe's
TensorFlow Lite), go to stderr; file descriptor 1 is pointed at stderr while models run.
Exit status: 0 answered (even with per-frame errors), 2 input that is not such a JSON document,
1 a model that cannot be loaded (one line on stderr).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from serve.engine import Engine
from serve.images import DecodedImage, ImageDecodeError, decode_base64_image, decode_image
from serve.schemas import stdio_record
from serve.session import MAX_FRAME_NUMBER

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """stdin is not `{"frames": [...]}`; the message says what is wrong."""


def parse_request(text: str) -> list[dict[str, Any]]:
    """The frames of a request document.

    Raises:
        InputError: not JSON, not an object with a `frames` list of objects.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's 4300 digits
        raise InputError(f"stdin is not JSON: {exc}") from exc
    except RecursionError:
        raise InputError("stdin is not JSON this server reads: nested too deeply") from None
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
        raise InputError('expected {"frames": [{"frameNumber": 0, "imageBase64": "..."}, ...]}')
    return frames


MAX_IMAGE_BYTES = 20 * 1024 * 1024  # `--max-frame-mb`'s default, as for HTTP frames


def load_frame_image(entry: dict[str, Any], max_side: int | None = None,
                     max_bytes: int = MAX_IMAGE_BYTES) -> DecodedImage:
    """The image of one input frame, downscaled to `max_side` (`serve.images`).

    Raises:
        ImageDecodeError: neither field, an unreadable, special or too large file, base64 over
            `max_bytes`, or bytes that are not an image.
    """
    if entry.get("imageBase64"):
        text = entry["imageBase64"]
        if isinstance(text, str) and len(text) > max_bytes * 4 // 3 + 4:
            raise ImageDecodeError(f"imageBase64 is over the limit of {max_bytes} bytes "
                                   "(--max-frame-mb)")
        return decode_base64_image(text, max_side)
    if entry.get("imagePath"):
        return decode_image(read_image_file(Path(str(entry["imagePath"])), max_bytes), max_side)
    raise ImageDecodeError("frame has neither imageBase64 nor imagePath")


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`.

    Opened non-blocking so that a FIFO cannot hang the call, then checked with fstat on the open
    descriptor (no swap between a check and the open); read to at most `max_bytes` + 1 so that
    /dev/zero or a growing file cannot fill memory.

    Raises:
        ImageDecodeError: unreadable, not a regular file, or over `max_bytes`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read imagePath {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageDecodeError(f"imagePath {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageDecodeError(f"cannot read imagePath {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ImageDecodeError(f"imagePath {path} is over the limit of {max_bytes} bytes "
                               "(--max-frame-mb)")
    return data


def answer(engine: Engine, frames: list[dict[str, Any]],
           max_image_bytes: int = MAX_IMAGE_BYTES) -> list[dict[str, Any]]:
    """One tracking session over `frames`; one output object per input frame, in order."""
    session = engine.new_session()
    out = []
    try:
        for i, entry in enumerate(frames):
            number = entry.get("frameNumber", i)
            try:
                if isinstance(number, bool) or not isinstance(number, int) \
                        or abs(number) > MAX_FRAME_NUMBER:
                    # NaN, 1e400 (inf) or 10**400 would break the answer's JSON or number / fps
                    number, bad = None, number
                    raise ImageDecodeError(f"frameNumber must be an integer of at most "
                                           f"{MAX_FRAME_NUMBER}, got {str(bad)[:40]}")
                decoded = load_frame_image(entry, engine.max_side, max_image_bytes)
                result = session.step(decoded.image, frame_number=number,
                                      original_size=decoded.size)
            except (ImageDecodeError, ValueError) as exc:
                logger.warning("frame %s: %s", number, exc)
                out.append({"frameNumber": number, "error": str(exc)})
                continue
            out.append(stdio_record(result))
    finally:
        session.close()
    return out


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[IO[str]]:
    """Point file descriptor 1 at stderr for the duration; yields a stream on the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w")
    try:
        yield real
    finally:
        real.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.close()


def run(stdin: IO[str], *, engine_factory, max_image_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Read the request, answer it, write the JSON array; returns the exit status."""
    with stdout_to_stderr() as out:
        try:
            frames = parse_request(stdin.read())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        engine = engine_factory()
        records = answer(engine, frames, max_image_bytes)
        json.dump(records, out, allow_nan=False)
        out.write("\n")
    return 0
