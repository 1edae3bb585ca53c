"""`stream-pose serve stdio`: seed 000's interface, JSON frames on stdin, JSON poses on stdout.

    echo '{"frames": [{"frameNumber": 0, "imagePath": "frame0.jpg"}]}' | stream-pose serve stdio

Input (one JSON document): `{"frames": [{"frameNumber": int, "imageBase64": str} |
{"frameNumber": int, "imagePath": str}, ...]}`, frames in video order. One call is one tracking
session: track ids, filtering and gap filling run across its frames.
Output (one JSON array, `serve.schemas.stdio_record` per frame, in input order): `frameNumber,
keypoints[{name, x, y, z, confidence}], has3d, jointAngles3d, mesh_vertices_data,
mesh_faces_data, cameraTranslation, processingTimeMs` (+ `trackId, predicted,
trackingConfidence, people`). A frame whose image cannot be read gives `{"frameNumber": n,
"error": "..."}` and the others are still answered.

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
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from serve.engine import Engine
from serve.images import DecodedImage, ImageDecodeError, decode_base64_image, decode_image
from serve.schemas import stdio_record

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
    except json.JSONDecodeError as exc:
        raise InputError(f"stdin is not JSON: {exc}") from exc
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
        raise InputError('expected {"frames": [{"frameNumber": 0, "imageBase64": "..."}, ...]}')
    return frames


def load_frame_image(entry: dict[str, Any], max_side: int | None = None) -> DecodedImage:
    """The image of one input frame, downscaled to `max_side` (`serve.images`).

    Raises:
        ImageDecodeError: neither field, an unreadable file, or bytes that are not an image.
    """
    if entry.get("imageBase64"):
        return decode_base64_image(entry["imageBase64"], max_side)
    if entry.get("imagePath"):
        path = Path(str(entry["imagePath"]))
        try:
            return decode_image(path.read_bytes(), max_side)
        except OSError as exc:
            raise ImageDecodeError(f"cannot read imagePath {path}: {exc.strerror}") from exc
    raise ImageDecodeError("frame has neither imageBase64 nor imagePath")


def answer(engine: Engine, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One tracking session over `frames`; one output object per input frame, in order."""
    session = engine.new_session()
    out = []
    try:
        for i, entry in enumerate(frames):
            number = entry.get("frameNumber", i)
            try:
                if isinstance(number, bool) or not isinstance(number, int):
                    raise ImageDecodeError(f"frameNumber must be an integer, got {number!r}")
                decoded = load_frame_image(entry, engine.max_side)
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


def run(stdin: IO[str], *, engine_factory) -> int:
    """Read the request, answer it, write the JSON array; returns the exit status."""
    with stdout_to_stderr() as out:
        try:
            frames = parse_request(stdin.read())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        engine = engine_factory()
        records = answer(engine, frames)
        json.dump(records, out, allow_nan=False)
        out.write("\n")
    return 0
