"""Benchmark 6: peak resident memory and shared memory vs ring buffer capacity, raw vs JPEG.

    python -m bench.memory [--video ../shared/videos/running_athlete.mp4]
        [--capacities 1000 2000 4000 8000] [--batches 20] [--json]

For each storage (raw, jpeg) and capacity N, a fresh spawned process (so that its peak is its
own) builds a shared-memory `RingBuffer` as training does (crop size and JPEG settings from
conf/buffer/default.yaml), fills every slot with real crops (MediaPipe on `--video`, labelled
once in this process and copied round-robin), then samples `--batches` training batches. It
reads its own /proc/self/status before the buffer exists (the baseline: interpreter, imports
and the labelled crops) and at the end: VmHWM (peak resident set) and RssShmem (shared-memory
pages it has touched), and the segment's size in /dev/shm: its length (what the buffer
reserves) and its allocated blocks (what tmpfs actually holds, in whole pages).

Shared memory is counted once by the kernel but appears in the RSS of every process that
touches it: the trainer (which samples every slot over time) and each producer process (which
writes every slot over time). Bytes per sample = segment size / N: crop slot, labels, ids.
Linux only (/proc, /dev/shm).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bench import procfs
from bench.common import (
    Report,
    Row,
    emit,
    load_conf,
    make_parser,
    parse_args,
    positive_int,
    training_crop_size,
    training_max_side,
)
from bench.samples import fill, labelled_rows
from data.ring_buffer import RingBuffer
from data.shared import SHM_DIR

STORAGES = ("raw", "jpeg")
MIB = 2**20


def measure_in_child(storage: str, capacity: int, rows: dict[str, np.ndarray],
                     batches: int) -> dict[str, Any]:
    """Run `measure` in a fresh spawned process and return its result.

    Raises:
        RuntimeError: if the child fails (its error text is in the message).
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # a pool re-raises the child's exception here
        return pool.apply(measure, (storage, capacity, rows, batches))


def measure(storage: str, capacity: int, rows: dict[str, np.ndarray],
            batches: int) -> dict[str, Any]:
    """In this process: baseline, fill a shared buffer, sample it, read the peaks (KiB/bytes).

    Returns:
        baseline_kib (VmRSS before the buffer), peak_kib (VmHWM), shmem_kib (RssShmem),
        segment_bytes (/dev/shm file length), allocated_bytes (its blocks), bytes_per_sample,
        crop_bytes_mean (mean stored crop bytes).
    """
    cfg = load_conf("buffer", "default")
    baseline = procfs.status_kib()["VmRSS"]
    rng = np.random.default_rng(0)
    with RingBuffer(capacity, int(rows["image"].shape[-1]), shared=True, storage=storage,
                    jpeg_quality=int(cfg.jpeg_quality),
                    jpeg_slot_bytes=cfg.jpeg_slot_bytes) as buffer:
        fill(buffer, rows, capacity)
        for _ in range(batches):
            buffer.sample(int(cfg.batch_size), rng)
        status = procfs.status_kib()
        segment = os.stat(Path(SHM_DIR) / buffer.handle.segment.name)
        stats = buffer.stats()
    return {
        "baseline_kib": baseline, "peak_kib": status["VmHWM"], "shmem_kib": status["RssShmem"],
        "segment_bytes": segment.st_size, "allocated_bytes": segment.st_blocks * 512,
        "bytes_per_sample": stats.bytes_per_sample, "crop_bytes_mean": stats.crop_bytes_mean,
    }


def run(video: Path, *, capacities: list[int], batches: int, max_side: int | None
        ) -> Report:
    """Label `video`, then measure every (storage, capacity) in its own process.

    Raises:
        TeacherUnavailableError: if MediaPipe is not installed.
    """
    rows = labelled_rows(video, training_crop_size(), max_side)
    results = {(s, n): measure_in_child(s, n, rows, batches)
               for n in capacities for s in STORAGES}
    table = []
    for n in capacities:
        table += _rows(n, results[("jpeg", n)], results[("raw", n)])
    per_sample = {s: results[(s, capacities[0])]["bytes_per_sample"] for s in STORAGES}
    unbacked = max(max(0, r["segment_bytes"] - r["allocated_bytes"]) for r in results.values())
    settings = {
        "video": video.name, "labelled_samples": len(rows["image"]),
        "crop_size": training_crop_size(), "capacities": capacities, "batches": batches,
        "bytes_per_sample": per_sample,
        "samples_per_GiB": {s: int(2**30 // b) for s, b in per_sample.items()},
        "crop_bytes_mean": {s: round(results[(s, capacities[0])]["crop_bytes_mean"])
                            for s in STORAGES},
        "baseline_MiB": round(statistics.median(r["baseline_kib"] for r in results.values())
                              / 1024, 1),
    }
    notes = _NOTES + [f"tmpfs pages not yet allocated once full, at most: {unbacked} bytes "
                      "(a filled buffer is backed by memory in full)"]
    return Report("memory", "peak RSS and shared memory vs capacity, JPEG vs raw crops",
                  settings, table, notes)


def _rows(capacity: int, jpeg: dict[str, Any], raw: dict[str, Any]) -> list[Row]:
    """JPEG against raw at one capacity, in MiB."""
    def row(case: str, value) -> Row:
        return Row(f"N={capacity}: {case}", "jpeg", [value(jpeg)], "raw", [value(raw)], "MiB")

    return [
        row("shared memory (segment)", lambda r: r["segment_bytes"] / MIB),
        row("peak RSS", lambda r: r["peak_kib"] / 1024),
        row("peak RSS - baseline", lambda r: (r["peak_kib"] - r["baseline_kib"]) / 1024),
        row("  of which shared (RssShmem)", lambda r: r["shmem_kib"] / 1024),
    ]


_NOTES = [
    "each (storage, capacity) in a fresh spawned process: baseline = its VmRSS before the "
    "buffer (interpreter, torch and other imports, the labelled crops); peak = VmHWM after "
    "filling every slot and sampling the batches",
    "shared memory is counted once by the kernel, but in the RSS of every process that "
    "touches it (trainer, producers); RssShmem is that part",
    "bytes per sample: segment size / capacity (crop slot, labels, ids, 64-byte alignment)",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__, timed=False)
    parser.add_argument("--capacities", type=positive_int, nargs="+",
                        default=[1000, 2000, 4000, 8000],
                        help="buffer capacities N (default: %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=20,
                        help="training batches sampled after filling (default: %(default)s)")
    args = parse_args(parser, argv)
    report = run(args.video, capacities=list(dict.fromkeys(args.capacities)),
                 batches=args.batches, max_side=training_max_side())
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
