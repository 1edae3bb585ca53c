"""Task records of the video jobs and the task API, in SQLite (Python's `sqlite3`).

One row per task, in `<data_dir>/tasks.sqlite3`, so that a restart loses no record. The server
and its job workers (separate processes) share the file: WAL journal mode lets readers and one
writer work at once, and every connection waits up to `BUSY_TIMEOUT_S` for a lock.

Status values (seed 003): `queued`, `processing`, `completed`, `failed`; `cancelled` for a
queued task deleted before it ran. Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 30.0
STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'job' (a video upload) or 'task' (a video file on disk)
    status TEXT NOT NULL,
    video_path TEXT,               -- the file of a task; NULL for an upload kept in memory
    model TEXT,                    -- as the client asked (seed 003's "model")
    params TEXT NOT NULL,          -- JSON: options of the request
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    result TEXT,                   -- JSON, once completed
    error TEXT,                    -- why it failed
    progress REAL NOT NULL DEFAULT 0,
    worker_pid INTEGER
)
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TaskStore:
    """The task table; safe to share between the threads of one process.

    Args:
        path: the SQLite file (created with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, kind: str, *, video_path: str | None, model: str | None,
               params: dict[str, Any]) -> dict[str, Any]:
        """A new queued task; returns its record."""
        task_id = str(uuid.uuid4())
        self._run("INSERT INTO tasks (id, kind, status, video_path, model, params, created_at) "
                  "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                  (task_id, kind, video_path, model, json.dumps(params), now_iso()))
        return self.get(task_id)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The record of `task_id`, or None."""
        rows = self._run("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _record(rows[0]) if rows else None

    def list(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        return [_record(r) for r in self._run("SELECT * FROM tasks ORDER BY created_at, rowid")]

    def counts(self) -> dict[str, int]:
        """Number of tasks per status (every status present, 0 if none)."""
        rows = self._run("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        return {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in rows}

    def delete(self, task_id: str) -> bool:
        """Remove the record; False if there was none."""
        with self._lock:
            return self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount > 0

    def start(self, task_id: str, pid: int) -> bool:
        """Mark a queued task processing by worker `pid`; False if it is no longer queued."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tasks SET status = 'processing', started_at = ?, worker_pid = ? "
                "WHERE id = ? AND status = 'queued'", (now_iso(), pid, task_id))
            return cur.rowcount > 0

    def progress(self, task_id: str, fraction: float) -> None:
        """Record progress in [0, 1]."""
        self._run("UPDATE tasks SET progress = ? WHERE id = ?", (float(fraction), task_id))

    def complete(self, task_id: str, result: dict[str, Any]) -> None:
        """Mark a processing task completed with its result."""
        self._run("UPDATE tasks SET status = 'completed', completed_at = ?, result = ?, "
                  "progress = 1 WHERE id = ? AND status = 'processing'",
                  (now_iso(), json.dumps(result), task_id))

    def fail(self, task_id: str, error: str, *, only_if: tuple[str, ...] = ("queued",
                                                                          "processing")) -> bool:
        """Mark a task failed with `error` if its status is in `only_if`; True if it was."""
        marks = ",".join("?" * len(only_if))
        with self._lock:
            cur = self._db.execute(
                f"UPDATE tasks SET status = 'failed', completed_at = ?, error = ? "
                f"WHERE id = ? AND status IN ({marks})", (now_iso(), error, task_id, *only_if))
            return cur.rowcount > 0

    def cancel(self, task_id: str) -> bool:
        """Mark a queued task cancelled (it will not run); False if it was not queued."""
        with self._lock:
            cur = self._db.execute("UPDATE tasks SET status = 'cancelled', completed_at = ? "
                                   "WHERE id = ? AND status = 'queued'", (now_iso(), task_id))
            return cur.rowcount > 0

    def running_on(self, pid: int) -> list[str]:
        """Ids of the tasks processing on worker `pid`."""
        rows = self._run("SELECT id FROM tasks WHERE status = 'processing' AND worker_pid = ?",
                         (pid,))
        return [r["id"] for r in rows]

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: fail what was processing and what was queued from an upload
        (kept in memory only, so gone); returns (failed ids, queued task ids to run again)."""
        failed = [r["id"] for r in self._run(
            "SELECT id FROM tasks WHERE status = 'processing' "
            "OR (status = 'queued' AND video_path IS NULL)")]
        for task_id in failed:
            record = self.get(task_id)
            reason = ("the server restarted while the task was processing"
                      if record and record["status"] == "processing" else
                      "the server restarted before the job ran; uploads are kept in memory only, "
                      "submit the video again")
            self.fail(task_id, reason)
        again = [r["id"] for r in self._run(
            "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, rowid")]
        return failed, again


def _record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["params"] = json.loads(record["params"] or "{}")
    record["result"] = json.loads(record["result"]) if record["result"] else None
    return record
