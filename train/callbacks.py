"""Training callbacks: ring-buffer telemetry, a checkpoint when training dies or is stopped, the
LR schedule of a resumed run, and the provenance manifest in every checkpoint."""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LRScheduler

from data.producer import StreamProducer
from stream_pose.provenance import MANIFEST_KEY, build_manifest, teacher_info
from stream_pose.runtime import usable_cores

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
    `datamodule.producer` (a `data.producer.StreamProducer`, thread or process pool):
    `producer/teacher_fps` (frames/s inside one teacher) and `producer/frames` from its
    `stats.total`, `producer/restarts` and `producer/stalls` (restarts for making no progress).
    Anything missing (another datamodule, not set up yet) is left out.
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
    producer: StreamProducer | None = getattr(datamodule, "producer", None)
    if producer is not None:
        total = producer.stats.total
        out["producer/teacher_fps"] = float(total.teacher_fps)
        out["producer/frames"] = float(total.frames)
        out["producer/restarts"] = float(producer.restarts)
        out["producer/stalls"] = float(producer.stalls)
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
    """Saves `<dirpath>/<filename>` when training is stopped by Ctrl-C or dies; resumable with
    `ckpt_path`.

    Ctrl-C during training does not raise: the SIGINT handler installed from `on_train_start`
    to `on_train_end` only asks for a stop. At the end of the current step the ranks agree on
    it (`reduce_boolean_decision`: under DDP one scalar all-reduce per step, so that one rank's
    Ctrl-C stops them all at the same step), save the checkpoint together and set
    `trainer.should_stop`, so `fit` returns normally (after the validation Lightning runs on an
    early stop) with `interrupted` set. A second Ctrl-C raises KeyboardInterrupt at once.

    An exception (or Ctrl-C outside the training loop, e.g. while the buffer fills) is saved
    from `on_exception`, which Lightning calls before it shuts down, whereas code after
    `trainer.fit()` may never run (docs/pitfalls.md, Lightning). Not under DDP: a checkpoint is a
    collective (the datamodule gathers every rank's videos, `save_checkpoint` ends in a
    barrier), and ranks that fail at different points would wait on each other forever (seen
    with gloo); `last.ckpt` of the last validation is the one to resume from there.

    Args:
        dirpath: folder for the checkpoint (created if needed).
        filename: checkpoint file name.

    Attributes:
        saved: the checkpoint written, or None.
        interrupted: True once a Ctrl-C stopped training.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved: Path | None = None
        self.interrupted = False
        self._requested = False
        self._handler: Any = None  # the SIGINT handler to restore; None while ours is not set

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requested = False
        if threading.current_thread() is threading.main_thread():  # where signals are handled
            self._handler = signal.signal(signal.SIGINT, self._request_stop) or signal.SIG_DFL

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        self._restore_handler()
        self.interrupted, trainer.should_stop = True, True
        self._save(trainer, "Ctrl-C")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        if trainer.global_step == 0 or self.saved is not None:
            return  # nothing learnt yet, or saved on Ctrl-C already
        if trainer.world_size > 1:
            logger.warning("%s on rank %d at step %d: no checkpoint under DDP; resume from "
                           "last.ckpt", type(exception).__name__, trainer.global_rank,
                           trainer.global_step)
            return
        try:
            self._save(trainer, type(exception).__name__)
        except Exception:  # never hide the original exception
            logger.exception("could not save a checkpoint after %r", exception)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._requested = True
        logger.warning("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again "
                       "to abort at once)")
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
            self._handler = None

    def _save(self, trainer: L.Trainer, why: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)  # optimizer too: resumable
        # rank 0 writes it, in its own run folder (another node's may differ): name that one
        self.saved = Path(trainer.strategy.broadcast(str(self.path), src=0))
        logger.warning("%s at step %d: saved %s", why, trainer.global_step, self.saved)


class ReclaimProducerCores(L.Callback):
    """Gives the producers' cores to training once a finite stream is fully labelled.

    Training starts with one core per producer left free (`stream_pose.runtime.set_torch_threads`).
    With `source.loop=false` the producers stop after one pass (a fixed corpus: MediaPipe labels
    the 4,400 training frames of the real corpus in about a minute) and the trainer keeps
    sampling the buffer; from then on the whole machine can train. Checked every
    `every_n_steps` steps through `StreamDataModule.labelling_finished`.

    Args:
        threads: torch intra-op threads to use once the producers are done; None: this rank's
            share of the usable cores.
        every_n_steps: how often to look.
    """

    def __init__(self, threads: int | None = None, every_n_steps: int = 50) -> None:
        self.threads, self.every_n_steps = threads, every_n_steps
        self.reclaimed_at_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           *args: Any) -> None:
        if self.reclaimed_at_step is not None or trainer.global_step % self.every_n_steps:
            return
        if getattr(trainer.datamodule, "labelling_finished", False):
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads or max(1, usable_cores() // trainer.world_size))
            self.reclaimed_at_step = trainer.global_step
            logger.info("labelling finished at step %d: torch threads %d -> %d",
                        trainer.global_step, before, torch.get_num_threads())


class SaveLastCheckpoint(L.Callback):
    """Keeps `<dirpath>/last.ckpt` the latest state of the run, resumable with `ckpt_path`.

    Written after every validation and at the end of `fit`. Lightning's own `save_last` writes
    it only when `ModelCheckpoint` saves a top-k file, i.e. at an *improving* validation: a run
    whose last validations did not improve would leave a stale `last.ckpt` (seen: step 1000 of
    2000), and evaluating or resuming it would silently drop the end of the run.

    Args:
        dirpath: the checkpoint folder.
        filename: the file name.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self._saved_step = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)  # optimizer too: resumable
        self._saved_step = trainer.global_step


class ScheduleOnResume(L.Callback):
    """A resumed run follows its own config's LR schedule, from the restored step.

    Lightning restores each scheduler's state from the checkpoint, its length included:
    OneCycleLR's `total_steps` is the first run's `max_steps` and stepping past it raises, so a
    run resumed with a larger `max_steps` would fail. Instead this callback keeps the state that
    `configure_optimizers` built from the current config and steps it to the restored global
    step: with an unchanged `max_steps` that is exactly the checkpoint's state; with a larger
    one the schedule stretches to the new length. Optimizer states (AdamW moments and step
    counts, base learning rates) stay as restored. Handles step-interval `LRScheduler`s; others
    keep the checkpoint's state.
    """

    def __init__(self) -> None:
        self._fresh: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Between configure_optimizers and the restore of the checkpoint's scheduler states.
        configs = trainer.lr_scheduler_configs
        self._fresh = [copy.deepcopy(c.scheduler.state_dict()) for c in configs]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None or trainer.global_step == 0:
            return
        for config, fresh in zip(trainer.lr_scheduler_configs, self._fresh):
            scheduler = config.scheduler
            if config.interval != "step" or not isinstance(scheduler, LRScheduler):
                continue
            scheduler.load_state_dict(fresh)
            with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(trainer.global_step // config.frequency):
                    scheduler.step()
            logger.info("resumed LR schedule %s at step %d: lr %s", type(scheduler).__name__,
                        trainer.global_step, scheduler.get_last_lr())


class ProvenanceRecorder(L.Callback):
    """Writes the provenance manifest (`stream_pose.provenance`) into every checkpoint, under
    `checkpoint["provenance"]`: the videos the student learnt from and those that chose it
    (validation), with their source kind, id, address, licence and credit, frames labelled and
    samples, the teacher and its version, and stream-pose's version.

    The videos come from the datamodule (`StreamDataModule.provenance_videos`, all ranks: every
    rank must save, as Lightning's checkpointing does); a resumed run adds its own to those of the
    checkpoint it resumed from. The manifest passes through the secrets policy before it is
    stored. A datamodule without `provenance_videos` gets no manifest (logged once).
    Called only for full checkpoints (Lightning skips callbacks for `weights_only` ones; every
    checkpoint of `train.train` is full). `train.train` adds it to every run, whatever the
    `callbacks` group says.
    """

    def __init__(self) -> None:
        self._restored: list[dict[str, Any]] = []
        self._warned = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        restored = checkpoint.get(MANIFEST_KEY)
        self._restored = list(restored.get("videos", [])) if isinstance(restored, dict) else []

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        manifest = self.manifest(trainer)
        if manifest is not None:
            checkpoint[MANIFEST_KEY] = manifest

    def manifest(self, trainer: L.Trainer) -> dict[str, Any] | None:
        """The manifest of the run so far (a collective under DDP), or None without a
        `StreamDataModule`-like datamodule."""
        datamodule = getattr(trainer, "datamodule", None)
        videos = getattr(datamodule, "provenance_videos", None)
        if videos is None:
            if not self._warned:
                logger.warning("datamodule %s lists no videos: checkpoints carry no provenance",
                               type(datamodule).__name__)
                self._warned = True
            return None
        teacher = teacher_info(getattr(datamodule, "teacher_names", []),
                               getattr(datamodule, "teacher_factory", None))
        return build_manifest([*self._restored, *videos()], teacher,
                              train_step=trainer.global_step)
