"""Paths the tests share: the repo root, its Hydra config dir and the real footage beside it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED = REPO.parent / "shared"
VIDEOS = SHARED / "videos"  # ../shared/videos, never copied into the repo
