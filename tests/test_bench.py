"""Benchmarks (bench/): the timing and report helpers on a fake clock, and each script's `main`
on tiny settings.

The machine is shared, so nothing here asserts a time or a ratio: the smoke tests check the
report's structure and that both sides of every comparison were measured.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import decode
from bench.common import Report, Row, time_interleaved
from shared_paths import VIDEOS

TINY = VIDEOS / "street_short.mp4"  # 5 frames, 960x540
FAST = ["--video", str(TINY), "--repeats", "1", "--warmup", "0", "--json"]


class FakeClock:
    """A wall clock that only moves when a side runs; the CPU clock moves half as fast."""

    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.now / 2

    def side(self, durations: list[float], items: list[int], log: list[str], name: str):
        durations, items = iter(durations), iter(items)

        def run() -> int:
            log.append(name)
            self.now += next(durations)
            return next(items)

        return run


def _time(sides: dict, clock: FakeClock, repeats: int, warmup: int):
    return time_interleaved(sides, repeats, warmup, clock=clock.wall, cpu_clock=clock.cpu)


def test_time_interleaved_alternates_sides_and_drops_warmup():
    clock, log = FakeClock(), []
    sides = {
        "a": clock.side([100.0, 1.0, 3.0, 2.0], [10] * 4, log, "a"),
        "b": clock.side([50.0, 4.0, 4.0, 8.0], [20] * 4, log, "b"),
    }
    timings = _time(sides, clock, repeats=3, warmup=1)
    assert log == ["a", "b"] * 4
    assert timings["a"].seconds == [1.0, 3.0, 2.0]  # the 100 s warm-up is not counted
    assert timings["b"].seconds == [4.0, 4.0, 8.0]
    assert timings["a"].items_per_s == [10.0, 10 / 3, 5.0]
    assert timings["b"].ms_per_item == [200.0, 200.0, 400.0]
    assert timings["a"].cores_busy == pytest.approx(0.5)


@pytest.mark.parametrize("items", [[5, 4], [0, 0]])
def test_time_interleaved_refuses_passes_over_different_frames(items):
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="items"):
        _time({"a": clock.side([1.0, 1.0], items, [], "a")}, clock, repeats=2, warmup=0)


def test_row_ratio_of_medians_and_targets():
    row = Row("case", "ours", [2.0, 4.0, 100.0], "base", [1.0, 2.0, 3.0], "frames/s", (">=", 1.0))
    assert row.ratio == pytest.approx(2.0)
    assert row.meets_target is True
    assert Row("c", "o", [2.0], "b", [1.0], "ms", ("<", 0.1)).meets_target is False
    assert Row("c", "o", [2.0], "b", [1.0], "ms").meets_target is None
    d = row.to_dict()
    assert d["ours"] == {"name": "ours", "median": 4.0, "repeats": [2.0, 4.0, 100.0]}
    assert (d["baseline"]["median"], d["target"], d["meets_target"]) == (2.0, ">= 1", True)


@pytest.mark.parametrize(
    "baseline, target", [([0.0], None), ([], None), ([1.0], ("<=", 1.0))]
)
def test_row_rejects_what_has_no_ratio_or_unknown_target(baseline, target):
    with pytest.raises(ValueError):
        Row("c", "o", [1.0], "b", baseline, "ms", target)


def test_report_markdown_shows_both_sides_ratio_target_and_machine():
    rows = [Row("max_side=640", "ours", [3.0], "theirs", [2.0], "frames/s", (">=", 1.0)),
            Row("full size", "ours", [1.0, 2.0], "theirs", [4.0], "frames/s", (">=", 1.0))]
    text = Report("demo", "ours vs theirs", {"video": "v.mp4"}, rows, ["a note"],
                  machine={"cpu": "Test CPU"}).to_markdown()
    assert "| max_side=640 | ours: 3 frames/s | theirs: 2 frames/s | 1.5 | >= 1: met |" in text
    assert "ours: 1.5 frames/s (1 to 2)" in text and "| 0.375 | >= 1: NOT met |" in text
    assert "- a note" in text and "cpu Test CPU" in text and "video v.mp4" in text


def test_opencv_baseline_decodes_the_same_picture_at_the_same_size():
    data = TINY.read_bytes()
    for max_side in (None, 640):
        # Same orientation and channel order: a few grey levels (resize filters), not tens.
        assert decode.first_frame_difference(data, TINY, max_side) < 5.0
    shapes = {frame.shape for frame in decode.opencv_frames(TINY, 640)}
    assert shapes == {(360, 640, 3)}


def _run_json(main, argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _check_structure(report: dict, benchmark: str, n_rows: int) -> None:
    assert report["benchmark"] == benchmark and len(report["rows"]) == n_rows
    assert {"cpu", "usable_cores", "torch_threads", "torch", "opencv", "av"} <= set(
        report["machine"]
    )
    for row in report["rows"]:
        assert row["ours"]["name"] and row["baseline"]["name"] and row["unit"]
        assert math.isfinite(row["ratio"])
        assert row["baseline"]["median"] > 0


def test_decode_bench_measures_both_decoders(capsys):
    report = _run_json(decode.main, FAST, capsys)
    _check_structure(report, "decode", 2)
    assert [r["case"] for r in report["rows"]] == ["full size", "max_side=640"]
    assert report["settings"]["frames"] == 5 and report["settings"]["size"] == "960x540"
    for row in report["rows"]:
        assert row["ours"]["median"] > 0
    assert report["rows"][1]["target"] == ">= 1"
    assert isinstance(report["rows"][1]["meets_target"], bool)


def test_decode_bench_prints_a_markdown_table(capsys):
    assert decode.main(FAST[:-1]) == 0
    out = capsys.readouterr().out
    assert "| case | ours | baseline | ours/baseline | target |" in out
    assert out.count("decode_video_bytes (memory):") == 2


@pytest.mark.parametrize(
    "argv",
    [["--video", "no/such/video.mp4"], ["--video", str(TINY), "--repeats", "0"],
     ["--video", str(TINY), "--max-side", "1"], ["--video", str(TINY), "--warmup", "-1"]],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        decode.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_producer_overhead_bench_measures_producer_and_teacher(capsys):
    pytest.importorskip("mediapipe")
    from bench import producer_overhead

    argv = FAST + ["--max-frames", "3", "--storage", "jpeg"]
    report = _run_json(producer_overhead.main, argv, capsys)
    _check_structure(report, "producer_overhead", 11)
    rows = {r["case"].strip(): r for r in report["rows"]}
    for suffix in ("", " [CPU]"):
        for case in ("producer vs teacher", "decoding vs teacher"):
            assert rows[case + suffix]["ours"]["median"] > 0
        overhead = rows["overhead vs teacher" + suffix]
        assert overhead["target"] == "< 0.1" and math.isfinite(overhead["ours"]["median"])
        # The two parts add up to the overhead, round by round.
        parts = (rows["of which interleaving" + suffix]["ours"]["repeats"][0]
                 + rows["of which producer code" + suffix]["ours"]["repeats"][0])
        assert parts == pytest.approx(overhead["ours"]["repeats"][0])
    assert rows["crop + push (timed inside)"]["ours"]["median"] > 0
    settings = report["settings"]
    assert settings["frames"] == 3 and settings["samples_per_pass"] >= 1
    assert settings["storage"] == "jpeg"


@pytest.fixture
def keep_torch_threads():
    """The student benchmark sets torch's global thread count; give it back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_student_vs_teacher_bench_measures_both_at_each_batch_size(capsys, keep_torch_threads):
    pytest.importorskip("mediapipe")
    from bench import student_vs_teacher

    argv = FAST + ["--max-frames", "2", "--student-frames", "3", "--batch-sizes", "1", "2",
                   "--torch-threads", "1"]
    report = _run_json(student_vs_teacher.main, argv, capsys)
    _check_structure(report, "student_vs_teacher", 8)
    cases = ["batch 1", "batch 2", "batch 1 [CPU]", "batch 2 [CPU]"]
    assert [r["case"] for r in report["rows"]] == [c for c in cases for _ in range(2)]
    assert [r["ours"]["name"].split(", ")[1] for r in report["rows"][:2]] == [
        "torch)", "onnxruntime)"]  # the network in training's runtime and as deployed
    assert all(r["ours"]["median"] > 0 for r in report["rows"])
    assert [r["target"] for r in report["rows"]] == [">= 10"] * 2 + [None] * 2 + [
        ">= 10"] * 2 + [None] * 2
    # 3 frames: 3 passes at batch 1, rounded up to 2 whole batches (4 frames) at batch 2.
    assert report["settings"]["student_frames"] == {"1": 3, "2": 4}
    assert report["machine"]["torch_threads"] == 1 == report["settings"]["torch_threads"]
