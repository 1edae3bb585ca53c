"""Paths the tests share: the repo root, its Hydra config dir and the real footage beside it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
VIDEOS = REPO.parent / "shared" / "videos"  # ../shared/videos, never copied into the repo
