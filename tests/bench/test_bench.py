"""Benchmarks (bench/): the timing, report and /proc helpers, and each script's `main` on tiny
settings.

The machine is shared, so nothing here asserts a time or a ratio: the smoke tests check the
report's structure and that both sides of every comparison were measured.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch
from shared_paths import VIDEOS

from bench import decode, procfs
from bench.common import Report, Row, time_interleaved
from data.producer import PREFETCH_FRAMES
from data.ring_buffer import RingBuffer

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
    for case in ("producer vs teacher", "serial producer vs teacher (before)",
                 "decoding vs teacher", "teacher inside the producer",
                 "crop + push (timed inside)", "producer vs teacher [CPU]",
                 "serial producer vs teacher [CPU]", "decoding vs teacher [CPU]"):
        assert rows[case]["ours"]["median"] > 0, case
    assert rows["waiting for frames (timed inside)"]["ours"]["median"] >= 0
    # overhead = producer - teacher, round by round, for both producers
    for overhead, producer in (("overhead vs teacher", "producer vs teacher"),
                               ("overhead vs teacher, serial (before)",
                                "serial producer vs teacher (before)")):
        row, prod = rows[overhead], rows[producer]
        assert row["target"] == "< 0.1" and isinstance(row["meets_target"], bool)
        expected = prod["ours"]["repeats"][0] - prod["baseline"]["repeats"][0]
        assert row["ours"]["repeats"][0] == pytest.approx(expected)
    settings = report["settings"]
    assert settings["frames"] == 3 and settings["samples_per_pass"] >= 1
    assert settings["storage"] == "jpeg" and settings["prefetch_frames"] == PREFETCH_FRAMES


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
    # Two students (the demo's and the pretrained one) x 2 batch sizes x 2 runtimes x wall/CPU.
    _check_structure(report, "student_vs_teacher", 16)
    rows = report["rows"]
    per_student = [c for c in ("batch 1", "batch 2") for _ in range(2)]
    assert [r["case"] for r in rows[:8]] == per_student * 2
    assert [r["case"] for r in rows[8:]] == [f"{c} [CPU]" for c in per_student * 2]
    assert [r["ours"]["name"] for r in rows[:8:4]] == [
        "student_s (S=128, torch)", "student_effl0 (S=128, torch)"]
    assert [r["ours"]["name"].split(", ")[1] for r in rows[:2]] == [
        "torch)", "onnxruntime)"]  # the network in training's runtime and as deployed
    assert all(r["ours"]["median"] > 0 for r in rows)
    # 10x for the small student at batch 1, 5x for the pretrained one (issue 18).
    assert [r["target"] for r in rows[:8]] == [">= 10"] * 2 + [None] * 2 + [">= 5"] * 2 + [
        None] * 2
    assert report["settings"]["student_params_M"]["student_effl0"] > 3
    # 3 frames: 3 passes at batch 1, rounded up to 2 whole batches (4 frames) at batch 2.
    assert report["settings"]["student_frames"] == {"1": 3, "2": 4}
    assert report["machine"]["torch_threads"] == 1 == report["settings"]["torch_threads"]


def test_buffer_training_bench_trains_from_the_buffer_and_from_tensors(capsys,
                                                                       keep_torch_threads):
    pytest.importorskip("mediapipe")
    from bench import buffer_training

    argv = FAST + ["--max-frames", "3", "--capacity", "16", "--batch-size", "4", "--steps", "2",
                   "--warmup-steps", "1", "--storages", "raw", "jpeg", "--torch-threads", "1"]
    report = _run_json(buffer_training.main, argv, capsys)
    _check_structure(report, "buffer_training", 4)
    assert [r["case"] for r in report["rows"]] == ["raw", "raw [CPU]", "jpeg", "jpeg [CPU]"]
    assert all(r["ours"]["median"] > 0 for r in report["rows"])
    assert [r["target"] for r in report["rows"]] == [">= 0.9", None, ">= 0.9", None]
    settings = report["settings"]
    assert settings["labelled_samples"] == 3 and settings["producer"] == "none"
    assert set(settings["reads"]) == {"raw", "jpeg"}
    for reads in settings["reads"].values():
        assert reads["ms_per_batch"] > 0 and reads["retries"] == reads["pushed_meanwhile"] == 0


def test_static_batches_are_drawn_from_the_buffer():
    from bench.buffer_training import StaticBatches, static_batches
    from bench.samples import fill

    rows = _fake_rows(5, 16)
    with RingBuffer(8, 16) as buffer:
        fill(buffer, rows, 8)
        batches = static_batches(buffer, 3, 4, seed=0)
    assert len(batches) == 4 and all(b.image.shape == (3, 3, 16, 16) for b in batches)
    # every row is one of the pushed samples: frame indices 0..7, crops from the 5 rows
    frames = torch.cat([b.frame_index for b in batches])
    assert frames.min() >= 0 and frames.max() < 8
    for b in batches:
        for image, frame in zip(b.image, b.frame_index):
            assert torch.equal(image, torch.from_numpy(rows["image"][int(frame) % 5]))
    cycled = iter(StaticBatches(batches))
    assert [next(cycled) is b for b in batches * 2] == [True] * 8


def _fake_rows(n: int, size: int) -> dict:
    """Snapshot-like rows of `n` random samples with `size` px crops."""
    rng = np.random.default_rng(0)
    k = np.array([[100.0, 0, size / 2], [0, 100.0, size / 2], [0, 0, 1]], np.float32)
    return {
        "image": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        "kpts2d": rng.uniform(0, size - 1, (n, 27, 2)).astype(np.float32),
        "kpts3d": rng.normal(0, 0.3, (n, 27, 3)).astype(np.float32),
        "visibility": np.ones((n, 27), np.float32),
        "K_crop": np.repeat(k[None], n, axis=0),
        "track_id": np.zeros(n, np.int64),
    }


def test_memory_measure_sees_the_whole_segment():
    from bench import memory
    from data.ring_buffer import buffer_layout
    from data.shared import layout_nbytes
    from data.storage import make_storage

    rows = _fake_rows(4, 32)
    raw = memory.measure("raw", 64, rows, batches=2)
    expected = layout_nbytes(buffer_layout(64, 32, make_storage("raw", 32)))
    assert raw["segment_bytes"] == expected
    assert 0 <= raw["allocated_bytes"] - expected < 4096  # filled: every page backed
    assert raw["bytes_per_sample"] == round(expected / 64)
    if sys.platform.startswith("linux"):
        assert raw["shmem_kib"] * 1024 >= expected  # this process touched every page
        assert raw["peak_kib"] >= raw["baseline_kib"] > 0


@pytest.mark.slow
def test_memory_bench_compares_jpeg_with_raw(capsys):
    pytest.importorskip("mediapipe")
    from bench import memory

    argv = ["--video", str(TINY), "--capacities", "16", "--batches", "1", "--json"]
    report = _run_json(memory.main, argv, capsys)
    _check_structure(report, "memory", 4)
    rows = {r["case"]: r for r in report["rows"]}
    segment = rows["N=16: shared memory (segment)"]
    assert 0 < segment["ours"]["median"] < segment["baseline"]["median"]  # JPEG slots smaller
    per_sample = report["settings"]["bytes_per_sample"]
    assert per_sample["raw"] > 3 * 128 * 128 > per_sample["jpeg"]
    assert segment["baseline"]["median"] * 2**20 == pytest.approx(16 * per_sample["raw"], 0.01)


def test_same_video_source_ignores_its_shard():
    from bench.producers import same_video_source

    source = same_video_source(str(TINY), 64, split="train", shard=1, num_shards=2)
    assert source.video_ids() == ["street_short"] and source.loop
    frame = next(iter(source))
    assert max(frame.hw) == 64


@pytest.mark.slow
def test_producers_bench_counts_frames_of_one_and_two_processes(capsys):
    from bench import producers

    argv = ["--video", str(TINY), "--teachers", "oracle", "--window", "0.5", "--settle", "0",
            "--repeats", "1", "--capacity", "64", "--json"]
    report = _run_json(producers.main, argv, capsys)
    _check_structure(report, "producers", 4)
    rows = {r["case"]: r for r in report["rows"]}
    frames = rows["oracle: labelled frames/s"]
    assert frames["target"] == ">= 1.6" and isinstance(frames["meets_target"], bool)
    for row in report["rows"]:
        assert row["ours"]["median"] > 0 and row["baseline"]["median"] > 0
    assert any("oracle, 2 process(es): threads per worker" in n for n in report["notes"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux only")
def test_procfs_reads_cpu_threads_and_memory_of_a_process():
    pid = os.getpid()
    done = threading.Event()
    worker = threading.Thread(target=lambda: done.wait(5.0), name="idle")
    worker.start()
    try:
        before, threads = procfs.process_cpu_s(pid), procfs.thread_cpu_s(pid)
        end = time.process_time() + 0.2
        while time.process_time() < end:  # burn 0.2 s of CPU in this thread
            pass
        after = procfs.process_cpu_s(pid)
    finally:
        done.set()
        worker.join()
    assert after - before >= 0.1
    assert len(threads) >= 2 and all(v >= 0 for v in threads.values())
    status = procfs.status_kib(pid)
    assert status["VmHWM"] >= status["VmRSS"] > 0 and status["Threads"] >= 1
    assert procfs.process_cpu_s(2**22 + 12345) is None  # no such process
    assert procfs.thread_cpu_s(2**22 + 12345) == {}


def test_busy_threads_ranks_threads_by_cores_and_drops_idle_ones():
    before = {"python/1": 1.0, "mediapipe/2": 0.5, "python/3": 2.0}
    after = {"python/1": 2.5, "mediapipe/2": 1.5, "python/3": 2.01, "python/4": 0.3}
    assert procfs.busy_threads(before, after, seconds=2.0) == {
        "python/1": 0.75, "mediapipe/2": 0.5, "python/4": 0.15}


def test_student_sizes_bench_times_every_preset_against_the_small_one(capsys):
    from bench import student_sizes

    argv = ["--repeats", "1", "--warmup", "0", "--frames", "1", "--crop-size", "64", "--json"]
    report = _run_json(student_sizes.main, argv, capsys)
    _check_structure(report, "student_sizes", 4)
    assert [r["ours"]["name"] for r in report["rows"]] == [
        "student_s", "student_m", "student_l", "student_effl0"]
    assert report["rows"][0]["ratio"] == 1.0  # the small one against itself
    params = [float(n.split(": ")[1].split(" M")[0]) for n in report["notes"]]
    assert params[0] < params[1] < params[2] and params[3] > params[0]
    assert all("MFLOPs" in n for n in report["notes"])


@pytest.mark.slow
def test_ablation_trains_each_variant_on_the_same_labelled_corpus():
    pytest.importorskip("mediapipe")
    from bench import ablation

    source = {**ablation.real_source(), "max_frames": 12, "val_videos": ["basketball_single"],
              "paths": [str(VIDEOS / f"{v}.mp4") for v in
                        ("basketball_single", "basketball_multi", "running_athlete")]}
    corpus = ablation.label_corpus(64, source)
    assert [c.video_id for c in corpus.held_out] == ["basketball_single"]
    assert corpus.train["image"].shape[1:] == (3, 64, 64)
    assert set(corpus.train["video"].tolist()) == {0, 1}  # two training clips
    averaged = ablation.flip_averaged(corpus.train)
    assert not torch.equal(averaged["kpts3d"], corpus.train["kpts3d"])  # the mirror pass differs
    variants = ("base", "lift_bg", "effl0")  # effl0: the pretrained trunk through the harness
    results = [ablation.train_variant(v, corpus, steps=2, batch_size=4, seed=0)
               for v in variants]
    for r in results:
        assert r["steps"] == 2 and r["minutes"] > 0 and len(r["clips"]) == 1
        assert 0 < r["all"]["mpjpe_mm"] and 0 < r["all"]["mean_pose_mpjpe_mm"]
        assert 0 <= r["all"]["left_right_swapped_pct"] <= 100
    table = ablation.format_rows(results)
    assert "| lift_bg |" in table and "| effl0 |" in table and "teacher flip floor" in table
    assert "L/R swapped" in table
    assert ablation.variant_crop_size("effl0_160", 64) == 160  # labelled again at its own size
    assert ablation.variant_crop_size("effl0", 64) == 64
    lift = ablation.teacher_lift(corpus, steps=2, batch_size=8, seed=0, noise=0.03)
    assert lift["noise"] == 0.03 and lift["mpjpe_mm"] > 0 and lift["mpjpe_vs_mean_pose"] > 0


@pytest.mark.slow
def test_learning_bench_measures_whole_clips_through_the_serve_core(trained_run):
    """bench.learning on a checkpoint (conftest's tiny run) whose held-out clip is a real video
    labelled by MediaPipe: the serve core's rows, plus the speed, the targets and the table."""
    pytest.importorskip("mediapipe")
    from omegaconf import OmegaConf

    from bench import learning
    from serve.checkpoint import load_student

    loaded = load_student(trained_run / "checkpoints" / "last.ckpt")
    run = loaded.run_config
    OmegaConf.set_struct(run, False)
    run.source = {"_target_": "video_sources.local.LocalSource", "_partial_": True,
                  "paths": [str(TINY)]}
    run.labeler = {"_target_": "labeler.mediapipe_teacher.MediaPipeTeacher", "_partial_": True}
    report = learning.evaluate_run(loaded, learning.held_out_ids(run, ["street_short"]))
    assert report["teacher"] == "mediapipe+flip" and report["step"] == loaded.step
    (clip,) = report["clips"]
    assert clip["video_id"] == "street_short" and clip["frames"] == 5
    assert clip["people"] == report["all"]["people"] == 5  # one person in each frame
    for row in (clip, report["all"]):
        assert 0 < row["flip_floor_mpjpe_mm"] < row["mean_pose_mpjpe_mm"]
        assert 0 <= row["left_right_swapped_pct"] <= 100 and "_joint_sum_mm" not in row
    joints = report["per_joint_mpjpe_mm"]
    assert joints["pelvis"] == 0 and "left_wrist" in joints and "spine1" not in joints
    assert report["student_ms_per_frame"] > 0
    assert report["teacher_ms_per_frame"] == report["all"]["teacher_ms_per_frame"] > 0
    assert set(report["targets"]) == {"mpjpe_vs_mean_pose<=0.6", "pa_mpjpe_vs_mean_pose<=0.7",
                                      "every_clip_beats_mean_pose"}
    table = learning.format_report(report)
    assert "| street_short | 5 |" in table and "| all | 5 |" in table and "targets:" in table
