"""The Pexels API key: read from the environment or a `.env` file, never from a config or
the command line (what else counts as a secret, and where it is refused or masked, is the
one policy in `stream_pose.secrets`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

KEY_ENV = "PEXELS_API_KEY"


class PexelsKeyError(RuntimeError):
    """No Pexels API key in the environment or `.env`."""


def load_api_key(env_file: str | os.PathLike | None = ".env") -> str:
    """The Pexels API key from `PEXELS_API_KEY` in the environment, else from `env_file`.

    `env_file` is read without changing `os.environ`; None reads the environment only.

    Raises:
        PexelsKeyError: no non-empty key; the message says how to get one and which sources
            work offline.
    """
    key = os.environ.get(KEY_ENV, "").strip()
    if not key and env_file is not None and Path(env_file).is_file():
        key = (dotenv_values(env_file).get(KEY_ENV) or "").strip()
    if not key:
        raise PexelsKeyError(
            f"{KEY_ENV} is not set. Get a free key at https://www.pexels.com/api/ and put it in "
            f"the environment or in a .env file ({KEY_ENV}=...), never on the command line. "
            "To run without Pexels, use source=local (your own video files) or source=synthetic."
        )
    return key
