"""Task records of the video jobs and the task API, in SQLite (Python's `sqlite3`).

One row per task, in `<data_dir>/tasks.sqlite3`, so that a restart loses no record. The server
and its job workers (separate processes) share the file: WAL journal mode lets readers and one
writer work at once, and every connection waits up to `BUSY_TIMEOUT_S` for a lock.

Status values (seed 003): `queued`, `processing`, `completed`, `failed`; `cancelled` for a
queued task deleted before it ran. Times are ISO 8601 UTC strings.

Several servers on one host may share a `--data-dir`. Each record names the server that queued
it (`owner`), and each server holds a `ServerLease` (an flock on `servers/<owner>.lock`) for as
long as it runs: at start a server recovers only the records of owners whose lease is free
(their server is gone), never those of a server still running. flock is released by the kernel
when its holder dies however it dies, and works across pid namespaces (containers sharing the
folder), unlike judging a recorded pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

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
    worker_pid INTEGER,
    owner TEXT                     -- the ServerLease id of the server that queued it
)
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ServerLease:
    """A running server's claim on its records in a shared data folder: an exclusive flock on
    `<data_dir>/servers/<id>.lock`, held until `release` or the process's death.

    Args:
        data_dir: the server's `--data-dir`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.folder = Path(data_dir) / "servers"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{self.id}.lock"
        self._fd: int | None = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._fd, f"pid {os.getpid()}\n".encode())

    def holds(self, owner: str | None) -> bool:
        """Whether `owner`'s server is running (its lease is held: by us, or by another)."""
        if owner is None:
            return False  # a record from before leases: its server is long gone
        if owner == self.id:
            return True
        path = self.folder / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # free: a dead server's lease, cleaned up
        return False

    def release(self) -> None:
        """Give the lease up (at a clean stop)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class TaskStore:
    """The task table; safe to share between the threads of one process.

    Args:
        path: the SQLite file (created with its folder).
        owner: the `ServerLease` id written into the records this store creates (None in the
            job workers, which create none).
    """

    def __init__(self, path: str | Path, owner: str | None = None) -> None:
        self.owner = owner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(tasks)")}
            if "owner" not in columns:  # a database from before leases
                self._db.execute("ALTER TABLE tasks ADD COLUMN owner TEXT")

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
        self._run("INSERT INTO tasks (id, kind, status, video_path, model, params, created_at, "
                  "owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                  (task_id, kind, video_path, model, json.dumps(params), now_iso(), self.owner))
        return self.get(task_id)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The record of `task_id`, or None."""
        rows = self._run("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _record(rows[0]) if rows else None

    def list(self, limit: int = -1, offset: int = 0) -> list[dict[str, Any]]:
        """Records oldest first, `limit` of them (-1: all) from `offset`."""
        rows = self._run("SELECT * FROM tasks ORDER BY created_at, rowid LIMIT ? OFFSET ?",
                         (limit, offset))
        return [_record(r) for r in rows]

    def counts(self, *, mine: bool = False) -> dict[str, int]:
        """Number of tasks per status (every status present, 0 if none); with `mine`, only the
        records this store's owner created."""
        where, args = ("WHERE owner = ? ", (self.owner,)) if mine else ("", ())
        rows = self._run(f"SELECT status, COUNT(*) AS n FROM tasks {where}GROUP BY status", args)
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

    def progress(self, task_id: str, fraction: float) -> bool:
        """Record progress in [0, 1]; False if the task is no longer processing (deleted)."""
        with self._lock:
            cur = self._db.execute("UPDATE tasks SET progress = ? WHERE id = ? AND "
                                   "status = 'processing'", (float(fraction), task_id))
            return cur.rowcount > 0

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

    def recover(self, running: Callable[[str | None], bool]) -> tuple[list[str], list[str]]:
        """At a server's start: the records of servers that are gone (`running(owner)` False).
        Fails what was processing and what was queued from an upload (kept in memory only, so
        gone); adopts their queued tasks on files. Returns (failed ids, adopted task ids to run
        again, in queue order). Records of a running server are left alone."""
        rows = self._run("SELECT id, status, video_path, owner FROM tasks WHERE status IN "
                         "('processing', 'queued') ORDER BY created_at, rowid")
        alive = {owner: running(owner) for owner in {r["owner"] for r in rows}}
        failed, again = [], []
        for r in rows:
            if alive[r["owner"]]:
                continue
            if r["status"] == "queued" and r["video_path"] is not None:
                self._run("UPDATE tasks SET owner = ? WHERE id = ?", (self.owner, r["id"]))
                again.append(r["id"])
                continue
            reason = ("the server running the task stopped before it finished"
                      if r["status"] == "processing" else
                      "the server stopped before the job ran; uploads are kept in memory only, "
                      "submit the video again")
            if self.fail(r["id"], reason):
                failed.append(r["id"])
        return failed, again


def _record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["params"] = json.loads(record["params"] or "{}")
    record["result"] = json.loads(record["result"]) if record["result"] else None
    return record
