"""The run config as loggers may record it: resolved, with every secret masked.

Hydra keeps `${oc.env:VAR}` unresolved in its own files, but a logger needs the resolved config,
and resolving puts the value back (PITFALLS.md, Secrets). `train.train` gives every logger
(W&B, CSV) `redacted_config(cfg)` and nothing else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

logger = logging.getLogger(__name__)

MASK = "***"
# Config keys (lower-cased) whose value is a secret, by exact name or by suffix.
SECRET_NAMES = frozenset({"api_key", "apikey", "token", "secret", "password", "passwd"})
SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password")
# Environment variables holding secrets: PEXELS_API_KEY, WANDB_API_KEY, HF_TOKEN, ...
SECRET_ENV_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
# Shorter values ("1", "true") are flags, not secrets; masking them would garble the config.
MIN_SECRET_LEN = 8


def redacted_config(cfg: DictConfig | Mapping, environ: Mapping[str, str] | None = None) -> dict:
    """`cfg` as a plain, resolved dict with secrets masked as `MASK`.

    Masked: the value of every key whose name looks secret (`is_secret_name`: api_key, token,
    secret, password, *_key, ...; a None value stays None, it holds nothing); and, inside every
    string, each occurrence of a secret environment value (`secret_values`). Everything else is
    returned unchanged. A config that cannot be resolved (e.g. `${hydra:...}` outside a Hydra
    run) is used unresolved, with a warning: an unresolved `${oc.env:...}` holds no value.

    Args:
        cfg: the composed config (or any nested mapping).
        environ: environment to take secret values from; None reads `os.environ`.

    Returns:
        A new dict of plain Python values (dict, list, str, numbers, bool, None).
    """
    return _redact(_resolved(cfg), secret_values(environ))


def is_secret_name(name: object) -> bool:
    """True for config key names that hold secrets: `api_key`, `token`, `wandb_api_key`, ...

    Case-insensitive; exact names `SECRET_NAMES` or suffixes `SECRET_SUFFIXES`.
    """
    n = str(name).lower()
    return n in SECRET_NAMES or n.endswith(SECRET_SUFFIXES)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret environment variables (names ending in `SECRET_ENV_SUFFIXES`), longest
    first so that a secret containing another is masked whole; values shorter than
    `MIN_SECRET_LEN` characters are ignored.

    Args:
        environ: the environment; None reads `os.environ` (into which `train.loggers`
            loads `.env` for `logger=wandb`).
    """
    env = os.environ if environ is None else environ
    values = {v.strip() for k, v in env.items() if k.upper().endswith(SECRET_ENV_SUFFIXES)}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def _resolved(cfg: DictConfig | Mapping) -> Any:
    """Plain container of `cfg`, resolved if it can be."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        logger.warning("config not resolvable (%s): the loggers get it unresolved",
                       type(exc).__name__)
        return OmegaConf.to_container(node, resolve=False)


def _redact(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: MASK if is_secret_name(k) and v is not None else _redact(v, secrets)
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_redact(v, secrets) for v in node]
    if isinstance(node, str):
        for secret in secrets:
            node = node.replace(secret, MASK)
    return node
