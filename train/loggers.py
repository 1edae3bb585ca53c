"""Logger factories that make choices a config file should not hold."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
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


class WandbKeyError(RuntimeError):
    """W&B refused `WANDB_API_KEY` and the config says to stop (`logger.on_auth_failure`)."""


def wandb_logger(save_dir: str | Path, project: str = "stream-pose", *,
                 reach_timeout_s: float = 5.0, on_auth_failure: str = "offline",
                 **kwargs: Any) -> WandbLogger:
    """A `WandbLogger` in the mode `wandb_mode` picks, online only when W&B answers in time.

    The key comes from the environment or from a `.env` file (found upwards from this package,
    i.e. the repository's; variables already set win). It never enters the config, so it stays
    out of Hydra's run folder, the checkpoint and the W&B config (docs/pitfalls.md, Secrets); the
    config W&B receives is `stream_pose.secrets.redacted_config` (sent by `train.train`).
    An offline run can be uploaded later with `wandb sync <save_dir>/wandb/offline-run-*`.

    Before going online, `check_wandb_online` asks the server (WANDB_BASE_URL or
    api.wandb.ai) whether it knows the key, within `reach_timeout_s`: wandb's own login
    retries for minutes on a node without network (a hang), and fails with a traceback on a
    malformed key. No answer in time: offline, one log line. A refused key: one log line and
    offline, or `WandbKeyError` with `on_auth_failure="stop"`. wandb's error reports (Sentry)
    are off unless WANDB_ERROR_REPORTING says otherwise.

    The mode goes to `wandb.init(mode=...)` rather than through Lightning's `offline=True`,
    which would overwrite `WANDB_MODE` in the environment, a user's `disabled` included.

    Args:
        save_dir: folder for the wandb files (the run folder); created if needed.
        project: W&B project name.
        reach_timeout_s: seconds to wait for the W&B server before logging offline.
        on_auth_failure: "offline" (log offline) or "stop" (raise) when the server refuses
            the key.
        **kwargs: passed to `WandbLogger` (e.g. `name`, `log_model`, `tags`).

    Raises:
        WandbKeyError: the server refused the key and `on_auth_failure` is "stop".
        ValueError: `on_auth_failure` is neither, or `reach_timeout_s` <= 0.
    """
    if on_auth_failure not in ("offline", "stop") or reach_timeout_s <= 0:
        raise ValueError(f"logger.on_auth_failure must be offline or stop and "
                         f"logger.reach_timeout_s > 0, got {on_auth_failure!r}, "
                         f"{reach_timeout_s!r}")
    load_dotenv(override=False)
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no calls to wandb's Sentry
    mode = wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    sync = f"upload later with `wandb sync {Path(save_dir) / 'wandb'}/offline-run-*`"
    if mode == "online":
        problem = check_wandb_online(os.environ["WANDB_API_KEY"].strip(), reach_timeout_s)
        refused = problem is not None and problem.startswith("refused")
        if refused and on_auth_failure == "stop":
            raise WandbKeyError(f"logger: W&B {problem}: fix WANDB_API_KEY (environment or "
                                ".env; https://wandb.ai/authorize), or set "
                                "logger.on_auth_failure=offline to log offline")
        if problem is not None:
            logger.warning("wandb: %s: logging offline; %s", problem, sync)
            return WandbLogger(save_dir=str(save_dir), project=project, mode="offline",
                               **kwargs)
    if mode == "offline":
        logger.info("wandb: offline; %s", sync)
    else:
        logger.info("wandb: %s", mode)
    return WandbLogger(save_dir=str(save_dir), project=project, mode=mode, **kwargs)


def check_wandb_online(key: str, timeout_s: float, base_url: str | None = None) -> str | None:
    """Whether W&B can log online now: None if its server accepts `key` within `timeout_s`,
    else why not, in words ("<url> not reachable within 5 s", "refused the WANDB_API_KEY
    (HTTP 401)").

    One GraphQL `viewer` query, as wandb's login makes, in a daemon thread: the wait is
    bounded even where DNS hangs (requests' timeout does not cover name resolution).

    Args:
        key: the API key (sent as HTTP basic auth to the W&B server only).
        timeout_s: the longest wait, seconds.
        base_url: the server; None: WANDB_BASE_URL or https://api.wandb.ai.
    """
    base = (base_url or os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")
    answer: list[str | None] = []

    def ask() -> None:
        try:
            reply = requests.post(f"{base}/graphql", json={"query": "query { viewer { id } }"},
                                  auth=("api", key), timeout=timeout_s)
        except requests.RequestException as exc:
            answer.append(f"{base} not reachable ({type(exc).__name__})")
            return
        if reply.status_code in (401, 403):
            answer.append(f"refused the WANDB_API_KEY (HTTP {reply.status_code})")
        elif reply.status_code >= 400:
            answer.append(f"{base} answered HTTP {reply.status_code}")
        else:
            answer.append(None)

    thread = threading.Thread(target=ask, name="stream-pose-wandb-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answer[0] if answer else f"{base} not reachable within {timeout_s:g} s"
