"""Logger factories that make choices a config file should not hold."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from lightning.pytorch.loggers import WandbLogger

logger = logging.getLogger(__name__)


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode for a run: online only with an API key, and never against the user's wish.

    `WANDB_MODE=disabled` wins (wandb becomes a no-op); without `WANDB_API_KEY` the run is
    `offline` (logged locally for a later `wandb sync`); with a key, `WANDB_MODE` if set (e.g.
    `offline`), else `online`.

    Args:
        environ: the environment; None reads `os.environ`.
    """
    env = os.environ if environ is None else environ
    requested = env.get("WANDB_MODE", "").strip().lower()
    if requested == "disabled":
        return "disabled"
    if not env.get("WANDB_API_KEY", "").strip():
        return "offline"
    return requested or "online"


def wandb_logger(save_dir: str | Path, project: str = "stream-pose", **kwargs: Any) -> WandbLogger:
    """A `WandbLogger` in the mode `wandb_mode` picks: offline unless `WANDB_API_KEY` is set.

    The key comes from the environment or from a `.env` file (found upwards from this package,
    i.e. the repository's; variables already set win). It never enters the config, so it stays
    out of Hydra's run folder, the checkpoint and the W&B config (PITFALLS.md, secrets); the
    config W&B receives is `stream_pose.secrets.redacted_config` (sent by `train.train`).
    An offline run can be uploaded later with `wandb sync <save_dir>/wandb/offline-run-*`.

    The mode goes to `wandb.init(mode=...)` rather than through Lightning's `offline=True`,
    which would overwrite `WANDB_MODE` in the environment, a user's `disabled` included.

    Args:
        save_dir: folder for the wandb files (the run folder); created if needed.
        project: W&B project name.
        **kwargs: passed to `WandbLogger` (e.g. `name`, `log_model`, `tags`).
    """
    load_dotenv(override=False)
    mode = wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        logger.info("wandb: offline; upload later with `wandb sync %s/offline-run-*`",
                    Path(save_dir) / "wandb")
    else:
        logger.info("wandb: %s", mode)
    return WandbLogger(save_dir=str(save_dir), project=project, mode=mode, **kwargs)
