"""Train the student on a streamed, teacher-labelled video source: `train(cfg)` and its Hydra CLI.

    python -m train.train                                  # the demo (synthetic + oracle, CPU)
    python -m train.train experiment=mediapipe_local       # ../shared/videos + MediaPipe
    stream-pose-train trainer.max_steps=500 logger=wandb   # any override

Everything a run writes goes to its folder (`paths.output_dir`, by default `runs/<time>/` in the
repository): Hydra's config, `checkpoints/`, the logger's files and `summary.json`. Never video,
frames or crops.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from labeler.base import TeacherUnavailableError
from train.callbacks import BufferTelemetry, CheckpointOnException, stream_telemetry
from train.panels import SkeletonPanels
from train.redact import redacted_config
from train.throughput import StudentThroughput
from video_sources.pexels import configured_api_key

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
MONITOR = "val/mpjpe_mm"
KEY_REFUSED = "pass the key through PEXELS_API_KEY or .env, never on the command line"


class SecretInConfigError(ValueError):
    """An API key in the config or a command-line override, where Hydra would save it."""

# `${repo_root:}` in the configs: paths there mean the same from any working directory.
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
# `${warmup_pct:${trainer.max_steps},0.05}`: OneCycleLR divides by (pct_start * total_steps - 1),
# which is 0 for short runs (torch.optim.lr_scheduler.OneCycleLR); keep at least 2 warm-up steps.
OmegaConf.register_new_resolver(
    "warmup_pct", lambda steps, pct: min(0.5, max(float(pct), 2.0 / max(int(steps), 4))),
    replace=True,
)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the student as `cfg` says and write `<cfg.paths.output_dir>/summary.json`.

    The producer is stopped and the logger finished whatever happens; on an exception or Ctrl-C,
    `CheckpointOnException` saves `checkpoints/interrupted.ckpt` and the summary is still written
    (with `status` "failed" or "interrupted") before the exception propagates.

    Args:
        cfg: the composed config (conf/config.yaml): groups source, labeler, buffer, model,
            trainer, logger, and `seed`, `paths.output_dir`.

    Returns:
        The summary dict (see `run_summary`).

    Raises:
        SecretInConfigError: an `api_key` in `cfg` or the key in a Hydra override, before
            anything is written.
    """
    refuse_keys(cfg, _hydra_overrides())
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    set_torch_threads(cfg.get("torch_threads"))
    _check_schedule(cfg.trainer)

    datamodule = instantiate(cfg.buffer, source=instantiate(cfg.source),
                             teacher=instantiate(cfg.labeler),
                             producer=instantiate(cfg.get("producer")))
    module = instantiate(cfg.model)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", monitor=MONITOR, mode="min",
        filename="step{step:06d}-mpjpe{val/mpjpe_mm:.1f}", auto_insert_metric_name=False,
        save_last=True,
    )
    loggers = make_loggers(cfg.get("logger"))
    hparams = redacted_config(cfg)  # the only config a logger sees: resolved, secrets masked
    for lg in loggers:
        lg.log_hyperparams(hparams)
    callbacks: list[Callback] = [
        checkpoint, BufferTelemetry(), CheckpointOnException(checkpoint.dirpath),
        *logger_callbacks(cfg.get("logger"), loggers),
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False
    )

    finished, start = False, time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule)
        finished = not trainer.interrupted
    finally:
        datamodule.close()
        # Lightning turns Ctrl-C into SystemExit after its callbacks ran; the summary still counts.
        status = "completed" if finished else "interrupted" if trainer.interrupted else "failed"
        summary = run_summary(trainer, datamodule, checkpoint, run_dir,
                              teacher=_teacher_name(cfg.labeler), status=status,
                              wall_time_s=time.monotonic() - start)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _finish(loggers)
    logger.info("summary: %s", run_dir / "summary.json")
    return summary


def run_summary(
    trainer: L.Trainer,
    datamodule: Any,
    checkpoint: ModelCheckpoint,
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
    predicting the mean training pose), wall_time_s, best_checkpoint (relative to the run folder).
    Errors are in millimetres; a value that was never measured is None.
    """
    metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
    stream = stream_telemetry(datamodule)
    producer = getattr(datamodule, "producer_stats", None)
    mpjpe, mean_pose = metrics.get(MONITOR), metrics.get("val/mean_pose_mpjpe_mm")
    best = checkpoint.best_model_path
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
        "best_val_mpjpe_mm": _number(checkpoint.best_model_score),
        "val/pa_mpjpe_mm": metrics.get("val/pa_mpjpe_mm"),
        "val/mean_pose_mpjpe_mm": mean_pose,
        "mpjpe_vs_mean_pose": None if mpjpe is None or not mean_pose else mpjpe / mean_pose,
        "wall_time_s": round(wall_time_s, 1),
        "best_checkpoint": str(Path(best).relative_to(run_dir)) if best else None,
    }


def refuse_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse an API key in the config or in command-line overrides (PITFALLS.md, Secrets).

    Hydra saves the config and `overrides.yaml` in the run folder, and loggers record both, so
    a key must come from the environment only. Refused: any config field named `api_key`; an
    override whose key path ends with `api_key`; an override that contains the value of
    PEXELS_API_KEY (environment or .env). Messages name the path, never the value.

    Raises:
        SecretInConfigError: one of the above.
    """
    paths = _api_key_paths(OmegaConf.to_container(cfg, resolve=False), "")
    if paths:
        raise SecretInConfigError(f"config field {paths[0]}: {KEY_REFUSED}")
    refuse_key_overrides(overrides)


def refuse_key_overrides(overrides: list[str]) -> None:
    """Refuse Hydra overrides (`key=value` strings) that carry the Pexels key; see `refuse_keys`.

    Raises:
        SecretInConfigError: an override whose path ends with `api_key` or that contains the
            PEXELS_API_KEY value.
    """
    secret = configured_api_key()
    for override in overrides:
        path = override.split("=", 1)[0].lstrip("+~")
        if path.endswith("api_key") or (secret and secret in override):
            shown = "an override" if secret and secret in path else f"override of {path!r}"
            raise SecretInConfigError(f"{shown}: {KEY_REFUSED}")


def _api_key_paths(node: Any, prefix: str) -> list[str]:
    """Dotted paths of every `api_key` field in a plain (unresolved) config container."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    paths = []
    for key, value in items:
        path = f"{prefix}{key}"
        if key == "api_key":
            paths.append(path)
        paths += _api_key_paths(value, path + ".")
    return paths


def _hydra_overrides() -> list[str]:
    """The task overrides of the running Hydra app; empty under the compose API."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def set_torch_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads; None leaves one core free for the producer thread.

    Measured on 2 cores with the demo: 2 torch threads beside the busy producer thread ran 200
    steps in 121 s, 1 thread in 30 s (the OpenMP workers and the producer fight over the cores).

    Returns:
        The thread count now in use.
    """
    if n is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n = max(1, (cores or 1) - 1)
    torch.set_num_threads(int(n))
    logger.info("torch intra-op threads: %d", torch.get_num_threads())
    return torch.get_num_threads()


def make_loggers(cfg: DictConfig | None) -> list[Logger]:
    """The experiment logger of the `logger` group, or none (`logger=none`, `_target_: null`)."""
    if not cfg or cfg.get("_target_") is None:
        return []
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("log_images", None)  # a callback option (see `logger_callbacks`)
    return [instantiate(kwargs)]


def logger_callbacks(cfg: DictConfig | None, loggers: list[Logger]) -> list[Callback]:
    """Callbacks that only matter with a logger: the learning rate, the student's samples/s
    (`train.throughput`) and, if `cfg.log_images`, the W&B skeleton panels (`train.panels`,
    which write val crops into the wandb run folder)."""
    if not loggers:
        return []
    callbacks: list[Callback] = [LearningRateMonitor(logging_interval="step"), StudentThroughput()]
    if cfg.get("log_images"):
        callbacks.append(SkeletonPanels())
    return callbacks


def _check_schedule(trainer_cfg: DictConfig) -> None:
    """Warn when the last step is not a validation step: the summary would report stale metrics."""
    steps, every = trainer_cfg.get("max_steps"), trainer_cfg.get("val_check_interval")
    if isinstance(every, int) and steps and steps > 0 and steps % every:
        logger.warning("max_steps %d is not a multiple of val_check_interval %d: the final "
                       "val metrics are from step %d", steps, every, steps - steps % every)


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

    Overrides carrying the Pexels key are refused here, before Hydra writes the run folder's
    `.hydra/overrides.yaml` (see `refuse_key_overrides`).
    """
    try:
        refuse_key_overrides([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
    except SecretInConfigError as exc:
        sys.exit(f"error: {exc}")
    _hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    # Intended: the module, not the datamodule, turns uint8 crops into floats on the device.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    try:
        s = train(cfg)
    except TeacherUnavailableError as exc:  # a set-up problem, not a bug: no traceback
        sys.exit(f"error: the teacher cannot run here: {exc}")
    print(
        f"done: {s['steps']} steps, val MPJPE {_mm(s[MONITOR])} "
        f"(best {_mm(s['best_val_mpjpe_mm'])}, PA {_mm(s['val/pa_mpjpe_mm'])}, "
        f"mean pose {_mm(s['val/mean_pose_mpjpe_mm'])}), ratio {s['mpjpe_vs_mean_pose'] or 0:.2f}, "
        f"{s['wall_time_s']:.0f} s; run: {cfg.paths.output_dir}"
    )


def _mm(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} mm"


if __name__ == "__main__":
    main()
