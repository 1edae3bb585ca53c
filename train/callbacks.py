"""Training callbacks: ring-buffer telemetry, and a checkpoint when training dies or is stopped."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

logger = logging.getLogger(__name__)


# Cumulative counter -> the per-second rate `BufferTelemetry` logs for it.
RATES = {
    "buffer/pushed": "buffer/pushed_per_s",  # samples labelled into the buffer
    "buffer/overwritten": "buffer/overwritten_per_s",  # samples that replaced an older one
    "buffer/samples_read": "buffer/consumed_per_s",  # samples the trainer read
    "producer/frames": "producer/fps",  # frames through the teachers, all producers together
    "buffer/wait_s": "buffer/wait_frac",  # seconds waited per second: the trainer's share
}


def stream_telemetry(datamodule: Any) -> dict[str, float]:
    """Buffer and producer counters of a `StreamDataModule`-like object, as metric keys.

    From `datamodule.buffer.stats()` (`data.ring_buffer.BufferStats`): `buffer/fill` in [0, 1],
    `buffer/reads_per_sample` (reuse), and the cumulative `buffer/pushed`,
    `buffer/overwritten`, `buffer/samples_read` (samples), `buffer/wait_s` (seconds spent
    blocked reading the buffer: the trainer's, or its DataLoader workers' with
    `loader_workers`) and `buffer/bytes_per_sample` (memory per slot). From
    `datamodule.producer_stats.total`: `producer/teacher_fps` (frames/s inside one teacher)
    and `producer/frames`; `producer/restarts` from `datamodule.producer_restarts`. Anything
    missing (another datamodule, not set up yet) is left out.
    """
    out: dict[str, float] = {}
    buffer = getattr(datamodule, "buffer", None)
    if buffer is not None:
        s = buffer.stats()
        out.update({
            "buffer/fill": s.fill, "buffer/reads_per_sample": s.reads_per_sample,
            "buffer/pushed": float(s.pushed), "buffer/overwritten": float(s.overwritten),
            "buffer/samples_read": float(s.samples_read), "buffer/wait_s": float(s.wait_s),
            "buffer/bytes_per_sample": float(s.bytes_per_sample),
        })
    producer = getattr(datamodule, "producer_stats", None)
    if producer is not None:
        out["producer/teacher_fps"] = float(producer.total.teacher_fps)
        out["producer/frames"] = float(producer.total.frames)
    restarts = getattr(datamodule, "producer_restarts", None)
    if restarts is not None:
        out["producer/restarts"] = float(restarts)
    return out


def stream_rates(before: dict[str, float], after: dict[str, float],
                 elapsed_s: float) -> dict[str, float]:
    """Per-second rates (`RATES`) of the counters between two `stream_telemetry` readings.

    Returns:
        e.g. `{"buffer/pushed_per_s": ..., "producer/fps": ..., "buffer/wait_frac": ...}` for
        the counters present in both readings; empty if `elapsed_s` <= 0.
    """
    if elapsed_s <= 0:
        return {}
    return {rate: (after[key] - before[key]) / elapsed_s
            for key, rate in RATES.items() if key in before and key in after}


class BufferTelemetry(L.Callback):
    """Logs `stream_telemetry` and its `stream_rates` every `log_every_n_steps` steps.

    Rates are over the wall time since the previous log (or since training started). The values
    go straight to the loggers (not through `self.log`), since they describe the data stream,
    not the batch.

    Args:
        log_every_n_steps: period in optimizer steps; None uses the trainer's.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._last: tuple[float, dict[str, float]] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = (time.monotonic(), stream_telemetry(trainer.datamodule))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step
        if step % max(every, 1) or not trainer.loggers or not trainer.is_global_zero:
            return
        now, metrics = time.monotonic(), stream_telemetry(trainer.datamodule)
        if not metrics:
            return
        if self._last is not None:
            metrics.update(stream_rates(self._last[1], metrics, now - self._last[0]))
        self._last = (now, metrics)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)


class CheckpointOnException(L.Callback):
    """Saves `<dirpath>/<filename>` when `fit` raises, Ctrl-C included.

    Lightning calls `on_exception` before it shuts down, whereas code after `trainer.fit()` may
    never run on an interrupt (PITFALLS.md, Lightning).

    Args:
        dirpath: folder for the checkpoint (created if needed).
        filename: checkpoint file name.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved: Path | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.global_step == 0:
            return  # nothing learnt yet
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.path, weights_only=False)  # optimizer too: resumable
            self.saved = self.path
            logger.warning("%s at step %d: saved %s", type(exception).__name__,
                           trainer.global_step, self.path)
        except Exception:  # never hide the original exception
            logger.exception("could not save a checkpoint after %r", exception)
