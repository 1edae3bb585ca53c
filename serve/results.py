"""How job and task records are answered: seed 002's `/job_status` and seed 003's `/status`
bodies, with the server's file paths shown as the deployment allows, and the result files
served at `GET /files/{task_id}/{name}`.

The seeds answer with absolute paths (`output_path`, `predictions_file`, ...): their clients ran
on the server's machine and opened those files. That stays the default for a server bound to a
loopback address. A server others can reach (`--host 0.0.0.0`) answers paths relative to its
`--data-dir` (and `video_path` relative to `--video-root`) instead, so answers do not map the
server's file system (the probe of issue 21); every answer also names the files' download URLs
(`result.urls`), which work in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from serve.store import now_iso

# result fields naming a file of the job folder -> the download name under /files/{id}/
FILE_FIELDS = {"frames_file": "frames.jsonl", "predictions_file": "predictions.json",
               "overlay": "overlay.mp4"}
DIR_FIELDS = ("predictions_dir", "visualization_dir")
PATH_STYLES = ("absolute", "relative")


@dataclass(frozen=True)
class AnswerPaths:
    """How answers name server files.

    Attributes:
        style: "absolute" (the seeds' paths, for clients on the server's machine) or
            "relative" (to `data_dir`, and `video_path` to `video_root`).
        data_dir: the server's `--data-dir` (job folders are `<data_dir>/jobs/<id>`).
        video_root: the server's `--video-root`; None when it has none.

    Raises:
        ValueError: an unknown `style`.
    """

    style: str = "absolute"
    data_dir: Path = Path("runs/serve")
    video_root: Path | None = None

    def __post_init__(self) -> None:
        if self.style not in PATH_STYLES:
            raise ValueError(f"--answer-paths must be one of {PATH_STYLES}, got {self.style!r}")

    def file(self, path: str | None) -> str | None:
        """A job file's path as answered: unchanged, or relative to `data_dir` (POSIX)."""
        return path if self.style == "absolute" else _relative(path, self.data_dir)

    def video(self, path: str | None) -> str | None:
        """A `/process` video's path as answered: unchanged, or relative to `video_root`."""
        return path if self.style == "absolute" else _relative(path, self.video_root)


def _relative(path: str | None, root: Path | None) -> str | None:
    """`path` relative to `root` in POSIX form; its name alone where it is not under `root`."""
    if path is None:
        return None
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def public_result(record: dict[str, Any], paths: AnswerPaths) -> dict[str, Any] | None:
    """The record's `result` with its paths as `paths` allows and `urls` of its files."""
    result = record["result"]
    if result is None:
        return None
    shown = dict(result)
    for name in (*FILE_FIELDS, *DIR_FIELDS):
        if name in shown:
            shown[name] = paths.file(shown[name])
    shown["urls"] = {field: f"/files/{record['id']}/{name}"
                     for field, name in FILE_FIELDS.items() if result.get(field)}
    return shown


def result_file(record: dict[str, Any], name: str) -> Path | None:
    """The file `name` (one of `FILE_FIELDS`' download names) of a finished record, else None
    (unknown name, no such output, or the file is gone)."""
    field = {v: k for k, v in FILE_FIELDS.items()}.get(name)
    path = (record["result"] or {}).get(field) if field else None
    return Path(path) if path and Path(path).is_file() else None


def job_status(record: dict[str, Any], paths: AnswerPaths) -> dict[str, Any]:
    """Seed 002's `/job_status` body ("complete" where the store says "completed")."""
    status = {"completed": "complete"}.get(record["status"], record["status"])
    result = public_result(record, paths) or {}
    started = record["started_at"]
    elapsed = None
    if started:
        end = datetime.fromisoformat(record["completed_at"]) if record["completed_at"] else None
        elapsed = ((end or datetime.fromisoformat(now_iso())) -
                   datetime.fromisoformat(started)).total_seconds()
    return {
        "job_id": record["id"], "status": status, "progress": round(record["progress"], 3),
        "elapsed_time": elapsed, "result": result or None,
        "output_path": result.get("overlay") or result.get("predictions_file"),
        "processing_time": result.get("processing_time"), "error": record["error"],
    }


def task_status(record: dict[str, Any], paths: AnswerPaths) -> dict[str, Any]:
    """Seed 003's `/status/{task_id}` body (its three result paths first, as the seed lists)."""
    result = public_result(record, paths)
    if result is not None:
        result = {"visualization_dir": result["visualization_dir"],
                  "predictions_dir": result["predictions_dir"],
                  "predictions_file": result["predictions_file"], **result}
    return {
        "task_id": record["id"], "status": record["status"],
        "video_path": paths.video(record["video_path"]),
        "model": record["model"], "created_at": record["created_at"],
        "started_at": record["started_at"], "completed_at": record["completed_at"],
        "progress": round(record["progress"], 3), "result": result, "error": record["error"],
    }
