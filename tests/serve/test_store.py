"""serve.store: task records shared by servers on one --data-dir, each recovering only the
records of servers that are gone (issue 21: a second server marked the first's running job
failed at its start)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from serve.store import ServerLease, TaskStore


def _tasks(store: TaskStore) -> dict[str, str]:
    """A queued file task, a queued upload and a processing task of `store`'s owner."""
    ids = {}
    for name, path in (("file", "/videos/a.mp4"), ("upload", None), ("running", "/videos/b.mp4")):
        ids[name] = store.create("task", video_path=path, model="m", params={})["id"]
    assert store.start(ids["running"], pid=4242)
    return ids


def test_a_running_servers_records_are_left_alone_and_a_dead_ones_recovered(tmp_path):
    first, second = ServerLease(tmp_path), ServerLease(tmp_path)
    db = tmp_path / "tasks.sqlite3"
    a, b = TaskStore(db, owner=first.id), TaskStore(db, owner=second.id)
    ids = _tasks(a)
    assert b.recover(second.holds) == ([], [])  # the first server runs: nothing of it touched
    assert [a.get(i)["status"] for i in ids.values()] == ["queued", "queued", "processing"]
    assert a.counts(mine=True)["queued"] == 2 and b.counts(mine=True)["queued"] == 0

    os.close(first._fd)  # what the kernel does when the first server dies, however it dies
    failed, adopted = b.recover(second.holds)
    assert sorted(failed) == sorted([ids["upload"], ids["running"]]) and adopted == [ids["file"]]
    assert "stopped before it finished" in b.get(ids["running"])["error"]
    assert "submit the video again" in b.get(ids["upload"])["error"]
    assert b.get(ids["file"])["owner"] == second.id and b.counts(mine=True)["queued"] == 1
    assert not first.path.exists()  # the dead server's lease file was cleaned up
    second.release()
    assert not second.path.exists()


def test_a_lease_is_held_by_another_process(tmp_path):
    """flock, not a pid: a server in another process (or container) is seen running."""
    code = ("import sys, time; from serve.store import ServerLease; "
            f"lease = ServerLease({str(tmp_path)!r}); print(lease.id, flush=True); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        other = proc.stdout.readline().strip()
        mine = ServerLease(tmp_path)
        assert mine.holds(other) and mine.holds(mine.id) and not mine.holds(None)
    finally:
        proc.kill()
        proc.wait()
    assert not mine.holds(other)  # killed: its lease is free


def test_a_database_from_before_leases_is_migrated(tmp_path):
    db = tmp_path / "tasks.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT "
                     "NOT NULL, video_path TEXT, model TEXT, params TEXT NOT NULL, created_at "
                     "TEXT NOT NULL, started_at TEXT, completed_at TEXT, result TEXT, error "
                     "TEXT, progress REAL NOT NULL DEFAULT 0, worker_pid INTEGER)")
        conn.execute("INSERT INTO tasks (id, kind, status, params, created_at) VALUES "
                     "('old', 'job', 'processing', '{}', '2026-01-01T00:00:00+00:00')")
    lease = ServerLease(tmp_path)
    store = TaskStore(db, owner=lease.id)
    assert store.recover(lease.holds) == (["old"], [])  # no owner: its server is gone


def test_old_and_orphan_job_folders_are_pruned(tmp_path):
    """Job folders were never removed, partial ones from crashes included (issue 21)."""
    from serve.jobs import prune_job_folders

    store = TaskStore(tmp_path / "tasks.sqlite3", owner="me")
    ids = {name: store.create("task", video_path="/v.mp4", model="m", params={})["id"]
           for name in ("old", "recent", "running")}
    for name in ("old", "recent"):
        store.start(ids[name], pid=1)
        store.complete(ids[name], {"frames": 1})
    store.start(ids["running"], pid=1)
    store._run("UPDATE tasks SET completed_at = '2026-01-01T00:00:00+00:00' WHERE id = ?",
               (ids["old"],))
    for task_id in [*ids.values(), "deleted-task"]:
        (tmp_path / "jobs" / task_id).mkdir(parents=True)
        (tmp_path / "jobs" / task_id / "frames.jsonl").write_text("{}\n")
    removed = prune_job_folders(store, tmp_path, keep_days=7)
    assert sorted(removed) == sorted([ids["old"], "deleted-task"])
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted(
        [ids["recent"], ids["running"]])
    assert prune_job_folders(store, tmp_path, keep_days=0) == []  # 0: kept forever
