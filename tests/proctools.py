"""Process helpers the multi-process tests share (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid`: a run, its ranks, producers and resource trackers."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids
