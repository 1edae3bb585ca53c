"""Logger factories that make choices a config file should not hold."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from lightning.pytorch.loggers import WandbLogger

logger = logging.getLogger(__name__)


def wandb_logger(save_dir: str | Path, project: str = "stream-pose", **kwargs: Any) -> WandbLogger:
    """A `WandbLogger` that syncs online only when `WANDB_API_KEY` is set, else logs offline.

    The key comes from the environment or from a `.env` file (found upwards from this package,
    i.e. the repository's; variables already set win). It never enters the config, so it stays
    out of Hydra's run folder, the checkpoint and the W&B config (PITFALLS.md, secrets).
    An offline run can be uploaded later with `wandb sync <save_dir>/wandb/offline-run-*`.
    `WANDB_MODE=disabled` in the environment still turns wandb off entirely.

    Args:
        save_dir: folder for the wandb files (the run folder); created if needed.
        project: W&B project name.
        **kwargs: passed to `WandbLogger` (e.g. `name`, `log_model`, `tags`).
    """
    load_dotenv(override=False)
    offline = not os.environ.get("WANDB_API_KEY")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger.info("wandb: %s", "offline (no WANDB_API_KEY)" if offline else "online")
    return WandbLogger(save_dir=str(save_dir), project=project, offline=offline, **kwargs)
