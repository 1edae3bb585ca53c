"""Benchmark 10 (`bench.ray_farm`) on tiny settings: real MediaPipe on the real clips, labelled
by 2 producer processes and by 2 Ray actors on a local Ray, training skipped. Nothing here
asserts a time or a ratio's value: the machine is shared."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import time

import pytest
from shared_paths import VIDEOS

pytestmark = [pytest.mark.slow]
ray = pytest.importorskip("ray")
pytest.importorskip("mediapipe")

from bench import ray_farm  # noqa: E402  (after the skips: it imports Ray's producer)

FRAME_ROWS = 7


def test_ray_farm_bench_labels_with_both_sides_and_reports_them(capsys):
    argv = ["--video", str(VIDEOS), "--window", "4", "--settle", "0", "--repeats", "1",
            "--chunk-samples", "4", "--train-steps", "0", "--json"]
    ray_was_up = ray.is_initialized()
    assert ray_farm.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "ray_farm" and len(report["rows"]) == FRAME_ROWS
    assert {"settings", "notes", "machine", "title"} <= set(report)
    assert report["settings"]["clips"] == len(list(VIDEOS.glob("*.mp4")))
    rows = {r["case"]: r for r in report["rows"]}
    frames = rows["labelled frames/s"]
    assert frames["ours"]["name"] == "ray actors" and frames["baseline"]["name"] == "pool processes"
    for row in report["rows"]:
        assert row["ours"]["median"] > 0 and row["baseline"]["median"] > 0, row["case"]
        assert math.isfinite(row["ratio"]), row["case"]
    notes = " ".join(report["notes"])
    assert "ray: producers' nice" in notes and "pool: producers' nice" in notes
    assert ray.is_initialized() == ray_was_up, "the benchmark stops the Ray it started"
    assert not ray_farm.processes()["producer"], "a producer process outlived the benchmark"


def test_roles_tell_pool_workers_from_other_children():
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    worker.start()
    other = subprocess.Popen(["sleep", "30"])
    try:
        assert {worker.pid, other.pid} <= set(ray_farm.descendants(os.getpid()))
        assert ray_farm.role(worker.pid) == "producer" and ray_farm.role(other.pid) is None
        assert worker.pid in ray_farm.processes()["producer"]
    finally:
        worker.kill()
        other.kill()
        worker.join()
        other.wait()


def test_logged_throughput_drops_the_first_window(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,student/samples_per_s,buffer/wait_frac\n"
                    "10,50.0,0.5\n10,,\n20,100.0,0.1\n30,200.0,0.0\n")
    rates, waits = ray_farm.logged_throughput(path)
    assert rates == [100.0, 200.0] and waits == [0.1, 0.0]
    path.write_text("step,student/samples_per_s\n10,50.0\n")
    with pytest.raises(RuntimeError, match="throughput windows"):
        ray_farm.logged_throughput(path)
