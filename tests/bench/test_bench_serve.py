"""Benchmark 9 (bench.serve): two real servers, clients in processes of their own, on a few frames
of a real clip. The machine is shared, so nothing here asserts a time or a target: every row is
measured, its figures are positive and its shares are fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shared_paths import VIDEOS

from bench import serve

TINY = VIDEOS / "street_short.mp4"  # 5 frames, 960x540


@pytest.mark.parametrize("shape", [(540, 960, 3), (1088, 1920, 3), (640, 360, 3), (480, 640, 3)])
def test_frames_are_scaled_and_centre_cropped_to_exactly_640x480(shape):
    image = np.zeros(shape, np.uint8)
    image[shape[0] // 2, shape[1] // 2] = 255  # the centre stays in the middle
    small = serve._fit(image)
    assert small.shape == (480, 640, 3) and small.dtype == np.uint8
    assert small.flags["C_CONTIGUOUS"]
    y, x = np.unravel_index(np.argmax(small[..., 0]), small.shape[:2])
    assert abs(y - 240) <= 2 and abs(x - 320) <= 2


@pytest.mark.slow
def test_serve_bench_measures_hybrid_ws_and_raw_frames_from_client_processes(student_onnx,
                                                                            capsys):
    pytest.importorskip("mediapipe")
    pytest.importorskip("websockets")
    argv = ["--model", str(student_onnx), "--video", str(TINY), "--frames", "3", "--rounds", "1",
            "--skip-jobs", "--json"]
    assert serve.main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["frames"] == 3 and rep["frame_size"] == [640, 480]
    assert all(v > 0 for v in (*rep["hybrid_fps"].values(), *rep["ws_fps"].values(),
                               rep["frame_fps"]["student"], rep["jpeg_kb"]))
    for share in ("http_and_decode_share", "ws_transport_share", "frame_transport_share"):
        assert 0 < rep[share] < 1, share
    for key in ("ws_per_frame_ms", "frame_per_frame_ms"):
        ms = rep[key]
        assert ms["encode"] > 0 and ms["decode"] > 0 and ms["pose"] > 0, key
        assert ms["client"] == pytest.approx(ms["encode"] + ms["round_trip"])
        assert ms["round_trip"] > ms["decode"] + ms["pose"], key  # the server's share is inside
    for key in ("latency_ms", "ws_latency_ms"):
        assert set(rep[key]) == {"p50_1", "p95_1", "p50_4", "p95_4"}
        assert all(v > 0 for v in rep[key].values()), key
    assert rep["ws_p95_4_over_p50_1"] > 0 and rep["p95_4_over_p50_1"] > 0
    assert rep["job_fps"] is None and rep["job_over_predict"] is None  # --skip-jobs
    assert len(rep["targets"]) == 7 and "async job within 15% of predict" not in rep["targets"]
    assert "client processes" in rep["cores"] and "--threads 1" in rep["cores"]
