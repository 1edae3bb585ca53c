"""`stream-pose serve stdio` (seed 000) as its clients run it: a subprocess fed JSON on stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from servetools import KEYPOINT, SEED_STDIO, assert_fields, clip_frames
from shared_paths import REPO, VIDEOS

from serve.images import encode_jpeg_base64


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

    proc = _serve_stdio(json.dumps({"frames": request}), "--model", str(student_onnx))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # stdout is exactly one JSON document: no log lines in it
    assert [r["frameNumber"] for r in out] == list(range(14))
    for record in out[:12]:
        assert_fields(record, SEED_STDIO, f"frame {record['frameNumber']}")
        assert record["has3d"] is True and len(record["keypoints"]) == 27
        for kp in record["keypoints"]:
            assert_fields(kp, KEYPOINT, "keypoint")
    assert len({r["trackId"] for r in out[:12]}) == 1  # one person, one track, one session
    assert out[6]["predicted"] is True and out[5]["predicted"] is False
    assert "base64" in out[12]["error"] and "missing.jpg" in out[13]["error"]
    assert "INFO" in proc.stderr or "WARNING" in proc.stderr  # the logs went to stderr


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["{not json", '{"frames": 3}', "[]"])
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
