"""Benchmark 3: training samples/s reading the ring buffer vs pre-gathered in-memory tensors.

    python -m bench.buffer_training [--video ../shared/videos/running_athlete.mp4]
        [--storages raw jpeg] [--capacity 8000] [--batch-size 32] [--steps 40]
        [--warmup-steps 5] [--producer none|mediapipe] [--torch-threads N]
        [--repeats 3] [--warmup 1] [--json]

Both sides run the real training step: a Lightning `Trainer.fit` of `PoseDistillModule` built
from conf/model/student.yaml (the student, AdamW, the loss weights) with `BatchAugment` on
(conf/model/student.yaml's settings, enabled), on the CPU, with torch threads as training sets
them (`stream_pose.runtime.set_torch_threads`). Per step: uint8 -> float in `on_after_batch_transfer`,
augmentation, forward, loss, backward, optimizer step, Lightning's own bookkeeping. They differ
only in where batches come from:

- buffer: a shared-memory `RingBuffer` (`--capacity` slots, as training's producer processes
  use) filled with real crops (MediaPipe on `--video`, copied round-robin into every slot), read
  the way training reads it: `DataLoader(BufferDataset(buffer, B), batch_size=None)`, as
  `StreamDataModule.train_dataloader` builds it with `loader_workers=0`. Each batch is a uniform
  draw with replacement, gathered under the seqlock and, for JPEG storage, decoded;
- static: the same number of batches drawn from the same buffer beforehand and held as tensors
  (JPEG already decoded), cycled by a trivial `IterableDataset`: no read cost at all.

Each round runs one fit per side (round-robin, sides alternating); a fit runs `--warmup-steps`
untimed steps, then `--steps` timed ones, timed by a callback from the end of the last warm-up
step to the end of the last step, so Trainer start-up is excluded. With `--producer mediapipe`
one producer process (`ProducerPool`, MediaPipe on `--video`, looping) keeps overwriting the
buffer during both sides, never pausing (`reads_per_overwrite=None`), so the buffer side reads
under concurrent writes and both sides share the CPU with it; with `none` (default) nothing
writes during the timed steps. Target (docs/architecture.md, Targets): buffer / static >= 0.9.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, IterableDataset

from bench.common import (
    Report,
    Row,
    Timing,
    cores_note,
    emit,
    int_or_none,
    load_conf,
    make_parser,
    parse_args,
    positive_int,
    training_crop_size,
    training_max_side,
)
from bench.samples import fill, labelled_rows
from data.dataset import BufferDataset
from data.ring_buffer import RingBuffer
from data.workers import ProducerPool, ProducerSettings
from stream_pose.batch import Batch
from stream_pose.runtime import set_torch_threads
from train.module import PoseDistillModule
from video_sources.local import LocalSource

BUFFER, STATIC = "buffer", "static"
TARGET = (">=", 0.9)  # buffer / static training samples/s (docs/architecture.md)
POOL_START_TIMEOUT_S = 120.0


def training_module() -> PoseDistillModule:
    """`PoseDistillModule` as conf/model/student.yaml builds it, augmentation enabled.

    The LR scheduler is left out (it needs the run's length; it costs microseconds a step).
    """
    cfg = load_conf("model", "student")
    cfg.net.crop_size = training_crop_size()  # `${buffer.crop_size}` in the training config
    return PoseDistillModule(
        instantiate(cfg.net), instantiate(cfg.optimizer), None,
        loss_3d_weight=float(cfg.loss_3d_weight), loss_2d_weight=float(cfg.loss_2d_weight),
        augment=instantiate(cfg.augment, enabled=True),
    )


class StaticBatches(IterableDataset):
    """Endless cycle over batches gathered beforehand (`Batch`es, `[B, ...]`)."""

    def __init__(self, batches: list[Batch]):
        super().__init__()
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.batches


class StepTimer(L.Callback):
    """Wall and CPU seconds from the end of step `warmup_steps - 1` to the end of the last step.

    Attributes:
        wall_s, cpu_s: the timed span (None until the fit ends).
    """

    def __init__(self, warmup_steps: int, steps: int):
        self.warmup_steps, self.last = warmup_steps, warmup_steps + steps - 1
        self.wall_s: float | None = None
        self.cpu_s: float | None = None
        self._t0 = self._c0 = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup_steps - 1:
            self._t0, self._c0 = time.perf_counter(), time.process_time()
        elif batch_idx == self.last:
            self.wall_s = time.perf_counter() - self._t0
            self.cpu_s = time.process_time() - self._c0


def fit_steps(module: PoseDistillModule, loader: DataLoader, warmup_steps: int,
              steps: int) -> tuple[float, float]:
    """Train `warmup_steps + steps` steps with Lightning on the CPU; the timed span's wall and
    CPU seconds (`StepTimer`). Nothing is written: no logger, checkpoint or progress bar."""
    timer = StepTimer(warmup_steps, steps)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=warmup_steps + steps, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
            default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=loader)
    if timer.wall_s is None:
        raise RuntimeError(f"the fit ended before step {warmup_steps + steps}")
    return timer.wall_s, timer.cpu_s


def static_batches(buffer: RingBuffer, batch_size: int, count: int, seed: int) -> list[Batch]:
    """`count` batches drawn from `buffer` now, as training would draw them, held as tensors."""
    rng = np.random.default_rng(seed)
    return [Batch.from_arrays(buffer.sample(batch_size, rng)) for _ in range(count)]


def start_producer(video: Path, buffer: RingBuffer, max_side: int | None) -> ProducerPool:
    """One MediaPipe producer process looping over `video` into `buffer`, never pausing; returns
    once it has labelled a frame (its start-up is not timed).

    Raises:
        RuntimeError: if it fails or labels nothing within `POOL_START_TIMEOUT_S`.
    """
    source = functools.partial(LocalSource, [str(video)], loop=True, max_side=max_side)
    pool = ProducerPool(source, instantiate(load_conf("labeler", "mediapipe")), buffer,
                        settings=ProducerSettings(workers=1),
                        reads_per_overwrite=None)
    pool.start()
    deadline = time.monotonic() + POOL_START_TIMEOUT_S
    while pool.stats.total.frames == 0:
        if pool.error is not None or time.monotonic() > deadline:
            pool.stop()
            raise RuntimeError(f"the producer did not start: {pool.failure_reason()}")
        time.sleep(0.1)
    return pool


def run_storage(rows: dict[str, np.ndarray], storage: str, *, video: Path, capacity: int,
                batch_size: int, steps: int, warmup_steps: int, producer: str,
                max_side: int | None, repeats: int, warmup: int
                ) -> tuple[dict[str, Timing], dict[str, float]]:
    """Both sides for one crop storage, round-robin; their timings and the buffer side's read
    figures: mean ms per batch in `RingBuffer.sample` (`BufferDataset.sample_s`), rows read
    again because a write raced them (seqlock retries), samples pushed meanwhile."""
    module = training_module()
    with RingBuffer(capacity, buffer_crop(rows), shared=True, storage=storage) as buffer:
        fill(buffer, rows, capacity)
        static = static_batches(buffer, batch_size, warmup_steps + steps, seed=1)
        dataset = BufferDataset(buffer, batch_size, seed=0)
        loaders = {BUFFER: DataLoader(dataset, batch_size=None),
                   STATIC: DataLoader(StaticBatches(static), batch_size=None)}
        pool = start_producer(video, buffer, max_side) if producer == "mediapipe" else None
        try:
            timings = _rounds(module, loaders, steps, warmup_steps, batch_size, repeats, warmup)
        finally:
            if pool is not None:
                pool.stop()
        stats = buffer.stats()
    reads = {"ms_per_batch": round(dataset.mean_sample_ms, 3), "retries": stats.retries,
             "pushed_meanwhile": stats.pushed - capacity}
    return timings, reads


def buffer_crop(rows: dict[str, np.ndarray]) -> int:
    """Crop side S of snapshot rows (`image` `[N, 3, S, S]`)."""
    return int(rows["image"].shape[-1])


def _rounds(module: PoseDistillModule, loaders: dict[str, DataLoader], steps: int,
            warmup_steps: int, batch_size: int, repeats: int, warmup: int) -> dict[str, Timing]:
    """`warmup + repeats` rounds of one fit per side; timings of the last `repeats`."""
    timings = {name: Timing(name, steps * batch_size, []) for name in loaders}
    for round_ in range(warmup + repeats):
        for name, loader in loaders.items():
            wall, cpu = fit_steps(module, loader, warmup_steps, steps)
            if round_ >= warmup:
                timings[name].seconds.append(wall)
                timings[name].cpu_seconds.append(cpu)
    return timings


def run(video: Path, *, storages: list[str], capacity: int, batch_size: int, steps: int,
        warmup_steps: int, producer: str, max_side: int | None, max_frames: int | None,
        repeats: int = 3, warmup: int = 1) -> Report:
    """Label `video`, then time both sides for each storage (module docstring).

    Torch threads must already be set (`main` does it); they are recorded in the machine info.

    Raises:
        TeacherUnavailableError: if MediaPipe is not installed.
        ValueError: if capacity < 1 or a storage is unknown.
    """
    rows = labelled_rows(video, training_crop_size(), max_side, max_frames)
    rows_out, notes, reads = [], list(_NOTES), {}
    for storage in storages:
        timings, reads[storage] = run_storage(
            rows, storage, video=video, capacity=capacity, batch_size=batch_size, steps=steps,
            warmup_steps=warmup_steps, producer=producer, max_side=max_side, repeats=repeats,
            warmup=warmup)
        rows_out += _rows(storage, timings)
        notes.append(f"{storage}: {cores_note(timings)}")
    settings = {
        "video": video.name, "labelled_samples": len(rows["image"]), "capacity": capacity,
        "crop_size": buffer_crop(rows), "batch_size": batch_size, "steps": steps,
        "warmup_steps": warmup_steps, "augment": "on", "producer": producer,
        "reads": reads,
        "torch_threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup,
    }
    return Report("buffer_training", "training samples/s: ring buffer vs static tensors",
                  settings, rows_out, notes)


def _rows(storage: str, timings: dict[str, Timing]) -> list[Row]:
    """Buffer vs static in samples/s, wall and CPU."""
    buf, static = timings[BUFFER], timings[STATIC]
    ours, base = f"BufferDataset ({storage}, shared)", "pre-gathered tensors"
    return [
        Row(storage, ours, buf.items_per_s, base, static.items_per_s, "samples/s", TARGET),
        Row(f"{storage} [CPU]", ours, buf.items_per_cpu_s, base, static.items_per_cpu_s,
            "samples/CPU s"),
    ]


_NOTES = [
    "both sides: Lightning fit of PoseDistillModule (student, AdamW, augmentation on), CPU; "
    "timed from the end of the last warm-up step to the end of the last step",
    "reads: ms_per_batch = mean time inside RingBuffer.sample per batch (lock, gather, JPEG "
    "decode) over all steps of the buffer side; retries = rows re-read because a producer "
    "wrote their slot meanwhile; pushed_meanwhile = samples the producer wrote during the run",
    "[CPU] rows: samples per CPU second of the whole process, which other jobs on a shared "
    "machine barely change (a producer process, if any, is not counted)",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__)
    parser.add_argument("--storages", nargs="+", choices=("raw", "jpeg"), default=["raw", "jpeg"],
                        help="crop storages to compare (default: %(default)s)")
    parser.add_argument("--capacity", type=positive_int,
                        default=int(load_conf("buffer", "default").capacity),
                        help="ring buffer slots (default: %(default)s, as training)")
    parser.add_argument("--batch-size", type=positive_int,
                        default=int(load_conf("buffer", "default").batch_size),
                        help="B (default: %(default)s, as training)")
    parser.add_argument("--steps", type=positive_int, default=40,
                        help="timed training steps per fit (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=positive_int, default=5,
                        help="untimed steps at the start of each fit (default: %(default)s)")
    parser.add_argument("--producer", choices=("none", "mediapipe"), default="none",
                        help="a producer process writing into the buffer meanwhile "
                             "(default: %(default)s)")
    parser.add_argument("--max-frames", type=int_or_none, default=None,
                        help="frames of the video to label for the samples; 0: all")
    parser.add_argument("--max-side", type=int_or_none, default=training_max_side(),
                        help="decode at this longer side, pixels (default: %(default)s)")
    parser.add_argument("--torch-threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: as training, cores - 1)")
    args = parse_args(parser, argv)
    set_torch_threads(args.torch_threads)
    _quiet_lightning()
    report = run(args.video, storages=list(dict.fromkeys(args.storages)),
                 capacity=args.capacity, batch_size=args.batch_size, steps=args.steps,
                 warmup_steps=args.warmup_steps, producer=args.producer,
                 max_side=args.max_side, max_frames=args.max_frames, repeats=args.repeats,
                 warmup=args.warmup)
    emit(report, args.json)
    return 0


def _quiet_lightning() -> None:
    """Lightning's start-up lines and its advice on DataLoader workers would drown the table."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")


if __name__ == "__main__":
    raise SystemExit(main())
