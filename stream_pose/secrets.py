"""The one secrets policy: what counts as a secret, where it is refused and how it is masked.

Secrets (API keys, tokens) come from the environment or a `.env` file only, never from a config
or the command line: Hydra saves both verbatim in `.hydra/`, W&B records the command line, and
argparse echoes arguments in its errors (docs/pitfalls.md, Secrets). One rule serves everything a
run writes:

- a *secret name* is a key named `api_key`, `apikey`, `token`, `secret`, `password`, `passwd`
  or ending in `_key`, `_token`, `_secret`, `_password` (case-insensitive; `is_secret_name`);
- a *secret value* is the value (8 characters or more) of an environment variable, or of a
  `.env` entry, whose name ends in `_KEY`, `_TOKEN`, `_SECRET` or `_PASSWORD`
  (`secret_values`): PEXELS_API_KEY, WANDB_API_KEY, HF_TOKEN, ...

`refuse_overrides` / `refuse_config` / `refuse_argv` refuse them before anything is written (the
messages name the setting, never the value); `redacted_config` masks them in what a logger may
record; `redact_text` masks the values in free text (an argparse error).

Lowest layer: `train`, `pipeline.py` and `video_sources` import this module, never the reverse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
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
# `.env` files read for secret values (variables already in the environment win): the working
# directory's (what `video_sources.pexels.load_api_key` reads) and the repository's.
ENV_FILES = (Path(".env"), Path(__file__).resolve().parents[1] / ".env")
REFUSED = ("secrets come from environment variables or .env (PEXELS_API_KEY, WANDB_API_KEY, "
           "...), never on the command line or in a config")


class SecretInConfigError(ValueError):
    """A secret in the config, a Hydra override or a command-line argument, where it would be
    saved or echoed; the message names where, never the value."""


def is_secret_name(name: object) -> bool:
    """True for config key names that hold secrets: `api_key`, `token`, `wandb_api_key`, ...

    Case-insensitive; exact names `SECRET_NAMES` or suffixes `SECRET_SUFFIXES`. Dashes count
    as underscores (`--api-key` names `api_key`).
    """
    n = str(name).lower().replace("-", "_")
    return n in SECRET_NAMES or n.endswith(SECRET_SUFFIXES)


def secret_values(environ: Mapping[str, str] | None = None,
                  env_files: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """Values of secret variables (names ending in `SECRET_ENV_SUFFIXES`), longest first so that
    a secret containing another is masked whole; values shorter than `MIN_SECRET_LEN`
    characters are ignored. A comma-separated value (several tokens, `serve.access`) counts
    whole and by each of its parts.

    Args:
        environ: the environment; None reads `os.environ`.
        env_files: `.env` files whose secret entries count too; None: `ENV_FILES` when
            `environ` is None, none otherwise (a given environment is taken as complete).
    """
    env = dict(os.environ if environ is None else environ)
    files = (ENV_FILES if environ is None else ()) if env_files is None else env_files
    for path in files:
        if Path(path).is_file():
            env.update({k: v or "" for k, v in dotenv_values(path).items() if k not in env})
    values = {v.strip() for k, v in env.items() if k.upper().endswith(SECRET_ENV_SUFFIXES)}
    values |= {part.strip() for v in values if "," in v for part in v.split(",")}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def env_secret(name: str, env_files: Iterable[str | os.PathLike] = ENV_FILES) -> str | None:
    """The secret `name` from the environment, else from the first `.env` file that has it;
    None when unset or empty. `os.environ` is not changed."""
    value = os.environ.get(name, "").strip()
    for path in env_files:
        if value:
            break
        if Path(path).is_file():
            value = (dotenv_values(path).get(name) or "").strip()
    return value or None


def refuse_overrides(overrides: Iterable[str], secrets: list[str] | None = None) -> None:
    """Refuse Hydra overrides (`[+~]key.path=value` strings) that carry a secret.

    Refused: a key path any part of which is a secret name (`+source.apikey=...`,
    `~source.api_key`), and an override whose text contains a secret value (`+tags=[<key>]`).

    Args:
        overrides: the overrides, as typed.
        secrets: the secret values; None: `secret_values()`.

    Raises:
        SecretInConfigError: naming the override's key path (or "an override" when the value
            sits in the path itself), never the value.
    """
    secrets = secret_values() if secrets is None else secrets
    for override in overrides:
        path = override.split("=", 1)[0].lstrip("+~")
        leaked = [s for s in secrets if s in override]
        if leaked or any(is_secret_name(part) for part in path.split(".")):
            where = "an override" if any(s in path for s in leaked) else f"override of {path!r}"
            raise SecretInConfigError(f"{where}: {REFUSED}")


def refuse_config(cfg: DictConfig | Mapping, secrets: list[str] | None = None) -> None:
    """Refuse a config holding a secret: a secret-named field with a value (None is empty), or
    a string containing a secret value.

    The config is read unresolved, as Hydra saves it: a field set to `${oc.env:VAR}` points at
    a secret without holding one, and passes.

    Raises:
        SecretInConfigError: naming the field's dotted path.
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    secrets = secret_values() if secrets is None else secrets
    paths = _secret_paths(OmegaConf.to_container(node, resolve=False), "", secrets)
    if paths:
        raise SecretInConfigError(f"config field {paths[0]}: {REFUSED}")


def refuse_argv(argv: Iterable[str], secrets: list[str] | None = None) -> None:
    """Refuse command-line arguments that carry a secret, before a parser can echo them.

    Refused: an argument containing a secret value, an option with a secret name (`--token`,
    `--api-key`, `--wandb_key=...`), and `key=value` arguments refused by `refuse_overrides`.

    Raises:
        SecretInConfigError: naming the option (or "an argument"), never the value.
    """
    secrets = secret_values() if secrets is None else secrets
    for arg in argv:
        if any(s in arg for s in secrets):
            raise SecretInConfigError(f"an argument: {REFUSED}")
        if arg.startswith("-") and is_secret_name(arg.lstrip("-").split("=", 1)[0]):
            raise SecretInConfigError(f"option {arg.split('=', 1)[0]}: {REFUSED}")
        if "=" in arg and not arg.startswith("-"):
            refuse_overrides([arg], secrets)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret value replaced by `MASK` (for messages that quote input)."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


def redacted_config(cfg: DictConfig | Mapping, environ: Mapping[str, str] | None = None) -> dict:
    """`cfg` as a plain, resolved dict with secrets masked as `MASK`: the only config a logger
    (W&B, CSV) may record.

    Masked: the value of every key whose name looks secret (`is_secret_name`; a None value
    stays None, it holds nothing); and, inside every string, each occurrence of a secret value
    (`secret_values`). Everything else is returned unchanged. A config that cannot be resolved
    (e.g. `${hydra:...}` outside a Hydra run) is used unresolved, with a warning: an unresolved
    `${oc.env:...}` holds no value.

    Args:
        cfg: the composed config (or any nested mapping).
        environ: environment to take secret values from; None reads `os.environ` and `.env`.

    Returns:
        A new dict of plain Python values (dict, list, str, numbers, bool, None).
    """
    return _redact(_resolved(cfg), secret_values(environ))


def _secret_paths(node: Any, prefix: str, secrets: list[str]) -> list[str]:
    """Dotted paths of the fields holding a secret (see `refuse_config`) in a plain container."""
    if isinstance(node, str):
        return [prefix.rstrip(".")] if any(s in node for s in secrets) else []
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    paths = []
    for key, value in items:
        path = f"{prefix}{key}"
        if is_secret_name(key) and _holds_value(value):
            paths.append(path)
        paths += _secret_paths(value, path + ".", secrets)
    return paths


def _holds_value(value: Any) -> bool:
    """A secret-named field's value is a secret unless empty, a group or an interpolation
    (`${oc.env:VAR}` is saved unresolved: it points at the secret without holding it)."""
    if value is None or isinstance(value, (dict, list)):
        return False
    return not (isinstance(value, str) and value.startswith("${") and value.endswith("}"))


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
