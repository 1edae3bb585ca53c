"""Train the student on a streamed, teacher-labelled video source: `train(cfg)` and its Hydra CLI.

    python -m train.train                                  # the demo (synthetic + oracle, CPU)
    python -m train.train experiment=mediapipe_local       # ../shared/videos + MediaPipe
    stream-pose-train trainer.max_steps=500 logger=wandb   # any override
    python -m train.train trainer=ddp                      # DDP, one stream shard per rank
    python -m train.train ckpt_path=runs/<run>/checkpoints/last.ckpt trainer.max_steps=3000

Everything a run writes goes to its folder (`paths.output_dir`, by default `runs/<time>/` in the
repository): Hydra's config, `checkpoints/`, the logger's files, `summary.json` (rank 0) and
`train_videos_rank<r>.json` (the training video ids each rank used). Never video, frames or
crops. Every checkpoint carries the provenance manifest of its videos (`stream_pose.provenance`,
`train.callbacks.ProvenanceRecorder`; `stream-pose provenance <ckpt>` prints it). Ctrl-C saves
`checkpoints/interrupted.ckpt` and exits with status 130.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from data.datamodule import EmptyValidationSetError
from data.shared import SharedMemoryTooSmallError, remove_stale_segments
from labeler.base import TeacherUnavailableError
from stream_pose.runtime import CONF_DIR, REPO_ROOT, set_torch_threads, usable_cores  # noqa: F401
from stream_pose.secrets import (
    SecretInConfigError,
    redacted_config,
    refuse_argv,
    refuse_config,
    refuse_overrides,
)
from train.callbacks import (
    CheckpointOnException,
    ProvenanceRecorder,
    ReclaimProducerCores,
    stream_telemetry,
)
from train.loggers import WandbKeyError
from train.panels import SkeletonPanels
from train.throughput import StudentThroughput
from video_sources.pexels import PexelsKeyError

logger = logging.getLogger(__name__)

MONITOR = "val/mpjpe_mm"
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # relative to the run folder (SaveLastCheckpoint)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a command stopped by Ctrl-C
EXIT_USAGE = 2  # a command line refused before it ran (the status argparse uses)


class ConfigError(ValueError):
    """A setting that cannot work, found before labelling; the message names it and the fix."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `fit`; the message names the checkpoint saved (if any) and how to resume."""


class CheckpointNotFoundError(FileNotFoundError):
    """`ckpt_path` names no file."""


# Set-up problems the CLI reports in one or two lines, without a traceback (HYDRA_FULL_ERROR=1
# shows it): each message names the setting and the fix.
USER_ERRORS = (ConfigError, SecretInConfigError, CheckpointNotFoundError, TeacherUnavailableError,
               EmptyValidationSetError, SharedMemoryTooSmallError, PexelsKeyError,
               WandbKeyError, InstantiationException)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the student as `cfg` says and write `<cfg.paths.output_dir>/summary.json`.

    The producer is stopped and the logger finished whatever happens. Ctrl-C stops training at
    the end of the current step and `CheckpointOnException` saves `checkpoints/interrupted.ckpt`
    (as on a crash, except under DDP); the summary is still written (with `status` "failed" or
    "interrupted") before the exception propagates.

    With `cfg.ckpt_path`, Lightning restores the step count, optimizer, callbacks and the
    datamodule's stream cursor (its videos are skipped); `ScheduleOnResume` keeps the LR
    schedule of `cfg`. Under DDP (`trainer=ddp`) every rank runs this function: rank 0 writes
    the summary, each rank its `train_videos_rank<r>.json`.

    Args:
        cfg: the composed config (conf/config.yaml): groups source, labeler, buffer, producer,
            model, trainer, logger, callbacks (see `make_callbacks`), paths
            (`paths.output_dir`), and `seed`, `ckpt_path`, `torch_threads`.

    Returns:
        The summary dict (see `run_summary`).

    Raises:
        SecretInConfigError: a secret in `cfg` or in a Hydra override (see `refuse_keys`),
            before anything is written.
        ConfigError: a setting that cannot work (see `preflight`), before any labelling.
        CheckpointNotFoundError: `cfg.ckpt_path` is not a file, before anything is written.
        TrainingInterrupted: on Ctrl-C, after the checkpoint and the summary were written.
        ValueError: a DDP strategy that re-runs the command line, outside the Hydra CLI.
    """
    refuse_keys(cfg, _hydra_overrides())
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"))
    remove_stale_segments()  # /dev/shm left by killed runs (also done on creating a buffer)
    run_dir = Path(cfg.paths.output_dir).resolve()  # ModelCheckpoint keeps a realpath too
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    _check_schedule(cfg.trainer, cfg.get("model", {}).get("scheduler"))

    # _convert_="object": Hydra would turn the producer settings (a dataclass passed as a
    # keyword) into a DictConfig, without their methods; this hands over the dataclass itself.
    datamodule = instantiate(cfg.buffer, source=instantiate(cfg.source),
                             teacher=instantiate(cfg.labeler),
                             producer=instantiate(cfg.get("producer")), _convert_="object")
    module = instantiate(cfg.model)
    loggers = make_loggers(cfg.get("logger"))
    hparams = redacted_config(cfg)  # the only config a logger sees: resolved, secrets masked
    for lg in loggers:
        lg.log_hyperparams(hparams)
    # The callbacks' folders are under the run folder as resolved above, as ModelCheckpoint's is.
    resolved = OmegaConf.merge(cfg, {"paths": {"output_dir": str(run_dir)}})
    callbacks = make_callbacks(resolved.get("callbacks"), loggers=loggers,
                               log_images=bool((cfg.get("logger") or {}).get("log_images")),
                               fixed_threads=cfg.get("torch_threads") is not None)
    if not any(isinstance(c, ProvenanceRecorder) for c in callbacks):
        # Not a switch of the callbacks group: every checkpoint must say what it learnt from.
        callbacks.append(ProvenanceRecorder())
    saver = next((c for c in callbacks if isinstance(c, CheckpointOnException)), None)
    trainer: L.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False
    )
    checkpoint = trainer.checkpoint_callback  # ours, Lightning's default without it, or None
    _check_launch(trainer)
    preflight(cfg, datamodule, rank=trainer.global_rank, world_size=trainer.world_size)
    # ranks share the cores of their node only: devices per node, not the world size
    set_torch_threads(cfg.get("torch_threads"), ranks=trainer.num_devices,
                      producers=max(1, datamodule.producer_settings.workers))

    status, start = "failed", time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        # A Ctrl-C seen by CheckpointOnException stops fit without an exception.
        status = "interrupted" if saver is not None and saver.interrupted else "completed"
    except SystemExit as exc:
        if not trainer.interrupted:
            raise
        # Ctrl-C outside the training loop, or a second one: Lightning raised KeyboardInterrupt
        # and answered it with sys.exit(1) once the callbacks' on_exception ran.
        status = "interrupted"
        raise TrainingInterrupted(_interrupted_message(trainer, saver)) from exc
    finally:
        datamodule.close()
        record_train_videos(run_dir, trainer, datamodule)
        summary = run_summary(trainer, datamodule, checkpoint, run_dir,
                              teacher=_teacher_name(cfg.labeler), status=status,
                              wall_time_s=time.monotonic() - start)
        if trainer.is_global_zero:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _finish(loggers)
    if status == "interrupted":
        raise TrainingInterrupted(_interrupted_message(trainer, saver))
    if trainer.is_global_zero:
        logger.info("summary: %s", run_dir / "summary.json")
    return summary


def resume_checkpoint(path: str | os.PathLike | None) -> Path | None:
    """The checkpoint named by `ckpt_path`, made absolute (relative paths: the working directory).

    Raises:
        CheckpointNotFoundError: no file at that path.
    """
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise CheckpointNotFoundError(
            f"ckpt_path={path}: no checkpoint at {resolved}; give a run's "
            "checkpoints/last.ckpt (or interrupted.ckpt)")
    return resolved


def record_train_videos(run_dir: Path, trainer: L.Trainer, datamodule: Any) -> Path:
    """Write and log the training video ids this rank streamed (metadata only).

    Writes `<run_dir>/train_videos_rank<r>.json`: `{"rank": r, "world_size": W, "node_rank": n,
    "videos": [ids in order of arrival], "samples_pushed": crops this rank's producers labelled,
    "samples_read": crops this rank's trainer drew}`. Ranks stream disjoint shards, so the files
    never share an id.

    Returns:
        The file's path.
    """
    rank, ids = trainer.global_rank, list(getattr(datamodule, "train_video_ids_seen", []))
    path = run_dir / f"train_videos_rank{rank}.json"
    stats, buffer = getattr(datamodule, "producer_stats", None), getattr(datamodule, "buffer", None)
    record = {"rank": rank, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
              "videos": ids,
              "samples_pushed": None if stats is None else stats.total.samples_pushed,
              "samples_read": None if buffer is None else buffer.stats().samples_read}
    path.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("rank %d of %d streamed %d training videos%s (%s)", rank, trainer.world_size,
                len(ids), f": {ids[0]} ... {ids[-1]}" if ids else "", path.name)
    return path


def run_summary(
    trainer: L.Trainer,
    datamodule: Any,
    checkpoint: ModelCheckpoint | None,
    run_dir: Path,
    *,
    teacher: str,
    status: str,
    wall_time_s: float,
) -> dict[str, Any]:
    """What a run did and how well the student does, as JSON-ready values.

    Keys: status, steps, batch_size, samples_pushed (by the producer), samples_consumed
    (steps x batch size), reads_per_sample (buffer reuse), teacher, teacher_fps, train_videos
    (seen by the producer), val_videos, `val/mpjpe_mm` (last validation), best_val_mpjpe_mm,
    `val/pa_mpjpe_mm`, `val/mean_pose_mpjpe_mm`, mpjpe_vs_mean_pose (< 1: better than always
    predicting the mean training pose), wall_time_s, best_checkpoint (relative to the run folder),
    producer_restarts and producer_stalls (producer processes restarted; of them, for making no
    progress), skipped_videos (`[video, reason]` for each video skipped, validation included).
    Errors are in millimetres; a value that was never measured is None.
    """
    metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
    stream = stream_telemetry(datamodule)
    producer = getattr(datamodule, "producer_stats", None)
    mpjpe, mean_pose = metrics.get(MONITOR), metrics.get("val/mean_pose_mpjpe_mm")
    best = checkpoint.best_model_path if checkpoint is not None else ""
    return {
        "status": status,
        "steps": trainer.global_step,
        "batch_size": datamodule.batch_size,
        "samples_pushed": None if producer is None else producer.total.samples_pushed,
        "samples_consumed": trainer.global_step * datamodule.batch_size,
        "reads_per_sample": stream.get("buffer/reads_per_sample"),
        "teacher": teacher,
        "teacher_fps": stream.get("producer/teacher_fps"),
        "train_videos": len(getattr(datamodule, "train_video_ids_seen", [])),
        "val_videos": len(getattr(datamodule, "val_video_ids", [])),
        MONITOR: mpjpe,
        "best_val_mpjpe_mm": _number(checkpoint.best_model_score) if checkpoint else None,
        "val/pa_mpjpe_mm": metrics.get("val/pa_mpjpe_mm"),
        "val/mean_pose_mpjpe_mm": mean_pose,
        "mpjpe_vs_mean_pose": None if mpjpe is None or not mean_pose else mpjpe / mean_pose,
        "wall_time_s": round(wall_time_s, 1),
        "producer_restarts": int(getattr(datamodule, "producer_restarts", 0)),
        "producer_stalls": int(getattr(datamodule, "producer_stalls", 0)),
        "skipped_videos": [list(x) for x in getattr(datamodule, "skipped_videos", [])],
        "best_checkpoint": _relative(best, run_dir) if best else None,
        "last_checkpoint": LAST_CHECKPOINT if (run_dir / LAST_CHECKPOINT).is_file() else None,
    }


def _relative(path: str | Path, run_dir: Path) -> str:
    """`path` inside `run_dir` as a relative path, else whole: on another node, the checkpoint
    folder is rank 0's (Lightning broadcasts it), not this process's run folder."""
    path = Path(path)
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def refuse_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse a secret in the config or in Hydra overrides (`stream_pose.secrets`, the one
    policy): a secret-named field with a value, an override naming a secret field or carrying
    the value of a secret environment variable. Messages name the setting, never the value.

    Raises:
        SecretInConfigError: one of the above.
    """
    refuse_config(cfg)
    refuse_overrides(overrides)


def _hydra_overrides() -> list[str]:
    """The task overrides of the running Hydra app; empty under the compose API."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def make_loggers(cfg: DictConfig | None) -> list[Logger]:
    """The experiment logger of the `logger` group, or none (`logger=none`, `_target_: null`)."""
    if not cfg or cfg.get("_target_") is None:
        return []
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("log_images", None)  # a callback option (see `logger_callbacks`)
    return [instantiate(kwargs)]


# Callbacks that only report to a logger (LearningRateMonitor refuses to start without one).
LOGGER_CALLBACKS = (LearningRateMonitor, StudentThroughput, SkeletonPanels)


def make_callbacks(cfg: DictConfig | None, *, loggers: list[Logger], log_images: bool = False,
                   fixed_threads: bool = False) -> list[Callback]:
    """The callbacks of the `callbacks` group (conf/callbacks/), in its order.

    A key set to null (or deleted, `~callbacks.<key>`) is left out. So are the callbacks that
    could not act in this run, a decision that needs the run's other settings: `LOGGER_CALLBACKS`
    without a logger; `SkeletonPanels` unless `log_images` (`logger.log_images`: W&B saves each
    panel as a PNG, crops on disk, so it is opt-in); `ReclaimProducerCores` with
    `fixed_threads` (`torch_threads` set: the user's thread count is kept).

    Args:
        cfg: the `callbacks` node, `{key: {_target_: ..., settings}}`; None: no callbacks.
        loggers: the run's loggers (`make_loggers`).
        log_images: whether the skeleton panels are wanted.
        fixed_threads: whether `torch_threads` fixes the torch thread count.
    """
    callbacks: list[Callback] = []
    for key, node in (cfg or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or node.get("_target_") is None:
            raise ConfigError(f"callbacks.{key}: needs a _target_ (the callback's class)")
        callback = instantiate(node)
        if ((isinstance(callback, LOGGER_CALLBACKS) and not loggers)
                or (isinstance(callback, SkeletonPanels) and not log_images)
                or (isinstance(callback, ReclaimProducerCores) and fixed_threads)):
            continue
        callbacks.append(callback)
    return callbacks


def _check_launch(trainer: L.Trainer) -> None:
    """Refuse Lightning's `ddp` re-launch where there is no command line to re-run.

    Its ranks > 0 re-run `sys.argv` (with the Hydra run folder added under the Hydra CLI): from
    train(cfg) in Python (a test, a notebook) that would run the caller's program again.

    Raises:
        ValueError: a subprocess-launched DDP strategy outside the Hydra CLI and torchrun.
    """
    launcher = trainer.strategy.launcher
    if (isinstance(launcher, _SubprocessScriptLauncher) and not HydraConfig.initialized()
            and not launcher.cluster_environment.creates_processes_externally):
        raise ValueError("strategy=ddp starts ranks > 0 by re-running the command line: start "
                         "DDP runs with `python -m train.train trainer=ddp ...` (or torchrun)")


def _interrupted_message(trainer: L.Trainer, saver: CheckpointOnException | None) -> str:
    where = (f"saved {saver.saved}; resume with ckpt_path={saver.saved}" if saver and saver.saved
             else "no checkpoint saved (nothing learnt yet)")
    return f"interrupted at step {trainer.global_step}: {where}"


def _check_schedule(trainer_cfg: DictConfig, scheduler_cfg: DictConfig | None = None) -> None:
    """Refuse a run without steps; warn when the last step is not a validation step (the
    summary would report stale metrics).

    Raises:
        ConfigError: `max_steps` < 1 (the stream has no epochs: -1, "until the data ends",
            never ends), a one-cycle LR schedule with a phase 0 steps long (OneCycleLR would
            divide by zero), or a `val_check_interval` that is not a positive number.
    """
    steps, every = trainer_cfg.get("max_steps"), trainer_cfg.get("val_check_interval")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"trainer.max_steps={steps}: a run needs at least one step (the "
                          "stream has no epochs); e.g. trainer.max_steps=1000")
    target = "" if scheduler_cfg is None else str(scheduler_cfg.get("_target_", ""))
    if target.endswith("OneCycleLR"):
        pct = float(scheduler_cfg.get("pct_start", 0.3))
        if abs(pct * steps - 1) < 1e-9 or pct >= 1:  # a phase 0 steps long: OneCycleLR / 0
            raise ConfigError(f"trainer.max_steps={steps}: the one-cycle LR schedule's warm-up "
                              f"(model.scheduler.pct_start={pct:g}) would last 0 steps; use "
                              "another max_steps (e.g. 3 or more)")
    if isinstance(every, (int, float)) and every <= 0:
        raise ConfigError(f"trainer.val_check_interval={every}: must be > 0 (steps between "
                          "validations); e.g. trainer.val_check_interval=100")
    if isinstance(every, int) and steps % every:
        logger.warning("max_steps %d is not a multiple of val_check_interval %d: the final "
                       "val metrics are from step %d", steps, every, steps - steps % every)


def preflight(cfg: DictConfig, datamodule: Any, *, rank: int = 0, world_size: int = 1) -> None:
    """The checks that need no labelling, run before any (`StreamDataModule.check`): source
    paths and validation ids exist, every producer has a shard, /dev/shm holds the buffer.

    Raises:
        ConfigError: naming the setting and the fix (the cause chained).
    """
    check = getattr(datamodule, "check", None)
    if check is None:  # another datamodule: it checks when it starts
        return
    try:
        check(rank=rank, world_size=world_size)
    except SharedMemoryTooSmallError as exc:
        raise ConfigError(f"buffer.capacity={cfg.buffer.get('capacity')}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"source.paths: {exc}") from exc
    except (ValueError, PexelsKeyError) as exc:
        raise ConfigError(f"source ({_source_name(cfg)}): {exc}") from exc


def _source_name(cfg: DictConfig) -> str:
    """The source's class name, for messages."""
    return str(cfg.source.get("_target_", "?")).rsplit(".", 1)[-1]


def _teacher_name(labeler_cfg: DictConfig) -> str:
    """The teacher's `name` attribute, read from its class (or factory) without building a model."""
    target = labeler_cfg.get("_target_", "")
    try:
        return str(get_object(target).name)
    except Exception:  # not importable, or without `name`
        return target


def _number(value: Any) -> float | None:
    """A float from a tensor or number; None for None or a non-finite value."""
    if value is None:
        return None
    x = float(value.item() if isinstance(value, torch.Tensor) else value)
    return x if math.isfinite(x) else None


def _finish(loggers: list[Logger]) -> None:
    """Close loggers that hold a session open (wandb), so the process can exit cleanly."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            if wandb.run is not None:
                wandb.finish()


def main() -> None:
    """CLI: `python -m train.train` / `stream-pose-train` with Hydra overrides.

    Arguments carrying a secret, and a config that holds one (an experiment YAML with a key
    written in it), are refused here, before Hydra writes the run folder's `.hydra/` files
    (`stream_pose.secrets.refuse_argv`, `refuse_composed`): exit status 2, nothing written.
    """
    try:
        refuse_argv(sys.argv[1:])
        refuse_composed(sys.argv[1:])
    except SecretInConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    _hydra_main()


def refuse_composed(argv: list[str]) -> None:
    """Compose the config as Hydra is about to (the same overrides) and refuse a secret in it:
    Hydra saves the composed config into `.hydra/` before `train` could look at it.

    A command line Hydra cannot compose is left to Hydra to report.

    Raises:
        SecretInConfigError: a config field holding a secret (`refuse_config`).
    """
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception:  # noqa: BLE001 - Hydra's own run gives the error its usual form
        return
    refuse_config(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    # Intended: the module, not the datamodule, turns uint8 crops into floats on the device.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    # Under DDP: the val metrics are torchmetrics states, summed over ranks before they are logged.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
    try:
        s = train(cfg)
    except USER_ERRORS as exc:  # a set-up problem, not a bug: no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {_user_error_text(exc)}")
    except KeyboardInterrupt as exc:  # TrainingInterrupted, or Ctrl-C before fit
        if rank_zero_only.rank != 0:
            # Lightning's DDP launcher kills every rank once one exits non-zero: rank 0 reports.
            sys.exit(0)
        print(str(exc) or "interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if rank_zero_only.rank != 0:  # DDP: rank 0 reports the run
        return
    print(
        f"done: {s['steps']} steps, val MPJPE {_mm(s[MONITOR])} "
        f"(best {_mm(s['best_val_mpjpe_mm'])}, PA {_mm(s['val/pa_mpjpe_mm'])}, "
        f"mean pose {_mm(s['val/mean_pose_mpjpe_mm'])}), ratio {s['mpjpe_vs_mean_pose'] or 0:.2f}, "
        f"{s['wall_time_s']:.0f} s; run: {cfg.paths.output_dir}"
    )


def _user_error_text(exc: BaseException) -> str:
    """One or two lines for a user error (`USER_ERRORS`)."""
    if isinstance(exc, TeacherUnavailableError):
        return f"the teacher cannot run here: {exc}"
    if isinstance(exc, InstantiationException):  # a class refused its settings
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, USER_ERRORS) and cause is not exc:
            return _user_error_text(cause)
        where = re.search(r"full_key: (\S+)", str(exc))
        return f"{where.group(1) if where else 'config'}: {cause}"
    return str(exc)


def _mm(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} mm"


if __name__ == "__main__":
    main()
