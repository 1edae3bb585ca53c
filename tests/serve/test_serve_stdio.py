"""`stream-pose serve stdio` (seed 000) as its clients run it: a subprocess fed JSON on stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from servetools import KEYPOINT, SEED_STDIO, assert_fields, clip_frames, png_header_only
from shared_paths import REPO, VIDEOS

from serve.images import ImageDecodeError, encode_jpeg_base64


def _serve_stdio(stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.cli", "serve", "stdio", *args],
                          input=stdin, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stdio_answers_every_frame_with_the_seed_fields(student_onnx, tmp_path):
    pytest.importorskip("mediapipe")
    frames = clip_frames(VIDEOS / "basketball_single.mp4", 12)
    image_file = tmp_path / "frame3.png"
    import cv2

    cv2.imwrite(str(image_file), cv2.cvtColor(frames[3], cv2.COLOR_RGB2BGR))
    request = [{"frameNumber": i, "imageBase64": encode_jpeg_base64(f)}
               for i, f in enumerate(frames)]
    request[3] = {"frameNumber": 3, "imagePath": str(image_file)}
    request[6]["imageBase64"] = encode_jpeg_base64(np.full_like(frames[6], 128))  # blank
    request.append({"frameNumber": 12, "imageBase64": "not base64 at all!"})
    request.append({"frameNumber": 13, "imagePath": str(tmp_path / "missing.jpg")})
    (tmp_path / "bomb.png").write_bytes(png_header_only(20000, 20000))  # refused from its header
    request.append({"frameNumber": 14, "imagePath": str(tmp_path / "bomb.png")})

    request += [{"frameNumber": "NUMBER", "imageBase64": request[0]["imageBase64"]}] * 2
    text = json.dumps({"frames": request})  # non-finite numbers: a truncated answer before #21
    text = text.replace('"NUMBER"', "NaN", 1).replace('"NUMBER"', "1e400", 1)

    proc = _serve_stdio(text, "--model", str(student_onnx))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # stdout is exactly one JSON document: no log lines in it
    assert [r["frameNumber"] for r in out] == [*range(15), None, None]
    assert all("frameNumber must be an integer" in r["error"] for r in out[15:])
    for record in out[:12]:
        assert_fields(record, SEED_STDIO, f"frame {record['frameNumber']}")
        assert record["has3d"] is True and len(record["keypoints"]) == 27
        for kp in record["keypoints"]:
            assert_fields(kp, KEYPOINT, "keypoint")
    assert len({r["trackId"] for r in out[:12]}) == 1  # one person, one track, one session
    assert out[6]["predicted"] is True and out[5]["predicted"] is False
    assert "base64" in out[12]["error"] and "missing.jpg" in out[13]["error"]
    assert "larger than the limit" in out[14]["error"]
    assert "INFO" in proc.stderr or "WARNING" in proc.stderr  # the logs went to stderr


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["{not json", '{"frames": 3}', "[]",
                                   "[" * 100_000,  # RecursionError and exit 1 before issue 21
                                   '{"frames": [{"frameNumber": 1' + "0" * 5000 + "}]}"])
def test_stdio_refuses_unparsable_input_with_exit_2(stdin):
    proc = _serve_stdio(stdin, "--model", "mediapipe")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_stdio_names_a_model_it_cannot_load_in_one_line(tmp_path):
    proc = _serve_stdio('{"frames": []}', "--model", str(tmp_path / "nope.onnx"))
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "nope.onnx" in lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(30)  # before issue 21: /dev/zero was read until the OOM killer came, a FIFO hung
def test_image_paths_are_regular_files_under_the_size_limit(tmp_path):
    import os

    from serve.stdio import load_frame_image

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in ("/dev/zero", fifo, tmp_path):
        with pytest.raises(ImageDecodeError, match="not a regular file|cannot read"):
            load_frame_image({"imagePath": str(special)})
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * 4096)
    with pytest.raises(ImageDecodeError, match="over the limit of 1024 bytes"):
        load_frame_image({"imagePath": str(big)}, max_bytes=1024)
    with pytest.raises(ImageDecodeError, match="over the limit of 1024 bytes"):
        load_frame_image({"imageBase64": "A" * 4096}, max_bytes=1024)
