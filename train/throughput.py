"""The student's training throughput, logged beside the teacher's frames/s."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from stream_pose.batch import Batch

KEY = "student/samples_per_s"


class StudentThroughput(L.Callback):
    """Logs `student/samples_per_s` every `log_every_n_steps` optimizer steps.

    Training samples (person crops) per second of wall time since the previous log, validation
    excluded, multiplied by the number of ranks (DDP ranks step together). It includes waiting
    for the ring buffer, i.e. what training really consumed; `buffer/wait_frac` says how much of
    that was waiting. Compare with `producer/teacher_fps` (frames/s inside one teacher; a frame
    can give several samples).

    Lightning's `ThroughputMonitor` is not used: it logs validation throughput with the
    validation batch index as the step (W&B's x-axis then runs backwards), its only
    single-device rate key is `train/device/samples_per_sec`, and it warns on every run that
    the module has no `flops_per_batch`.

    Args:
        log_every_n_steps: period in optimizer steps; None uses the trainer's.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._t0: float | None = None  # start of the current window
        self._samples = 0
        self._val_t0: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._samples = time.perf_counter(), 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None and self._val_t0 is not None:
            self._t0 += time.perf_counter() - self._val_t0  # validation time is not training
        self._val_t0 = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch,
        batch_idx: int,
    ) -> None:
        self._samples += len(batch)
        every = max(self.log_every_n_steps or trainer.log_every_n_steps, 1)
        step = trainer.global_step
        if self._t0 is None or step % every or not trainer.loggers or not trainer.is_global_zero:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # count finished steps, not queued kernels
        now = time.perf_counter()
        if now <= self._t0:
            return
        rate = self._samples * trainer.world_size / (now - self._t0)
        for lg in trainer.loggers:
            lg.log_metrics({KEY: rate}, step=step)
        self._t0, self._samples = now, 0
