"""Training callbacks: ring-buffer telemetry, and a checkpoint when training dies or is stopped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

logger = logging.getLogger(__name__)


def stream_telemetry(datamodule: Any) -> dict[str, float]:
    """Buffer and producer counters of a `StreamDataModule`-like object, as metric keys.

    Reads `datamodule.buffer.stats()` (fill in [0, 1], reads per sample, samples pushed) and
    `datamodule.producer_stats.total.teacher_fps` (frames/s inside the teacher) when present;
    anything missing (another datamodule, not set up yet) is left out.

    Returns:
        `{"buffer/fill", "buffer/reads_per_sample", "buffer/pushed", "producer/teacher_fps"}`,
        or the subset available.
    """
    out: dict[str, float] = {}
    buffer = getattr(datamodule, "buffer", None)
    if buffer is not None:
        s = buffer.stats()
        out.update({"buffer/fill": s.fill, "buffer/reads_per_sample": s.reads_per_sample,
                    "buffer/pushed": float(s.pushed)})
    producer = getattr(datamodule, "producer_stats", None)
    if producer is not None:
        out["producer/teacher_fps"] = float(producer.total.teacher_fps)
    return out


class BufferTelemetry(L.Callback):
    """Logs `stream_telemetry` of the trainer's datamodule every `log_every_n_steps` steps.

    The values go straight to the loggers (not through `self.log`), since they describe the
    data stream, not the batch.

    Args:
        log_every_n_steps: period in optimizer steps; None uses the trainer's.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step
        if step % max(every, 1) or not trainer.loggers or not trainer.is_global_zero:
            return
        metrics = stream_telemetry(trainer.datamodule)
        if metrics:
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
